"""Masked-LM masks drawn from a counter-based generator: one instance, one key, one mask.

BERT's masking (Devlin et al. 2018, section 3.1; google-research/bert ``create_masked_lm_predictions``):
``k = min(max_predictions, max(1, round(mask_prob * n)))`` of the ``n`` candidate tokens of a sequence
(every token but ``[CLS]``, ``[SEP]`` and padding) are chosen uniformly at random; each chosen token
becomes ``[MASK]`` with probability 0.8, stays as it is with 0.1, and becomes a random vocabulary entry
with 0.1. The labels are the original ids at the chosen positions, which are listed in ascending order.
Whole-word masking (Google's ``do_whole_word_mask``) chooses words, a ``##`` piece joining the token
before it, and skips a word that would overshoot the budget.

The random numbers are a hash of (instance key, position, stream), splitmix64's finaliser (Steele, Lea &
Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014), so a mask depends only on its
instance's key, never on the batch, the process or the order it is drawn in. That is what lets the same
function serve static masking at preparation time (key = data seed, shard, instance) and dynamic masking
at load time (key = training seed, epoch, instance; RoBERTa, Liu et al. 2019, section 4.1), and lets a
resumed run redraw exactly the masks it would have drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from groupbert.data.columns import IGNORE_INDEX
from groupbert.data.tokenizer import SpecialIds

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
# streams of one position: which tokens are chosen, what each becomes, which random token
_CHOOSE, _ACTION, _RANDOM_TOKEN = 1, 2, 3


def mix64(x) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic): a bijection that scatters bits."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _S30)) * _M1
        x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def hash_key(*parts) -> np.ndarray:
    """One uint64 key per element from integer parts (scalars or arrays that broadcast)."""
    h = np.zeros((), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for p in parts:
            h = mix64(h ^ mix64(np.asarray(p).astype(np.uint64) + _GOLDEN))
    return h


def uniform(keys: np.ndarray, positions: np.ndarray, stream: int) -> np.ndarray:
    """Uniform floats in [0, 1) for (key, position, stream); broadcasts keys against positions."""
    with np.errstate(over="ignore"):
        salt = mix64(np.asarray(positions).astype(np.uint64) * np.uint64(4) + np.uint64(stream))
    return (mix64(np.asarray(keys, dtype=np.uint64) ^ salt) >> _S11).astype(np.float64) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class MaskingSpec:
    mask_prob: float
    max_predictions: int
    vocab_size: int
    special: SpecialIds
    continuation: Optional[np.ndarray] = None   # bool per id: a "##" piece (whole-word masking), or None

    def budget(self, n_candidates: np.ndarray) -> np.ndarray:
        """Tokens to predict per sequence; numpy's rint rounds half to even, like Python's round."""
        k = np.rint(np.asarray(n_candidates) * self.mask_prob).astype(np.int64)
        return np.minimum(self.max_predictions, np.maximum(1, k)) * (np.asarray(n_candidates) > 0)


def mask_rows(ids: np.ndarray, lengths: np.ndarray, keys: np.ndarray, spec: MaskingSpec):
    """Mask a batch of right-padded sequences ``ids`` [B, T] (each ``[CLS] A [SEP] B [SEP]`` in its first
    ``lengths`` tokens) with one uint64 key per row.

    Returns ``(masked_ids [B, T], positions [B, P], labels [B, P])`` with ``P = spec.max_predictions``:
    positions ascending, padded with 0; labels padded with :data:`IGNORE_INDEX`.
    """
    ids = np.asarray(ids)
    B, T = ids.shape
    P = spec.max_predictions
    lengths = np.asarray(lengths, dtype=np.int64)
    keys = np.asarray(keys, dtype=np.uint64)
    t = np.arange(T)
    sp = spec.special
    candidate = (t < lengths[:, None]) & (ids != sp.cls) & (ids != sp.sep) & (ids != sp.pad)
    k = spec.budget(candidate.sum(1))
    if spec.continuation is None:
        score = np.where(candidate, uniform(keys[:, None], t, _CHOOSE), 2.0)
        order = np.argsort(score, axis=1, kind="stable")[:, :P]
        chosen = np.arange(min(P, T)) < k[:, None]
        pos = np.sort(np.where(chosen, order, T), axis=1)
    else:
        pos = _whole_word_positions(ids, candidate, k, keys, spec)
    if pos.shape[1] < P:  # rows shorter than max_predictions
        pos = np.concatenate([pos, np.full((B, P - pos.shape[1]), T, pos.dtype)], axis=1)
    valid = pos < T
    rows = np.arange(B)[:, None]
    safe = np.where(valid, pos, 0)
    labels = np.where(valid, ids[rows, safe], IGNORE_INDEX)
    action = uniform(keys[:, None], safe, _ACTION)
    replacement = _random_tokens(uniform(keys[:, None], safe, _RANDOM_TOKEN), spec)
    new = np.where(action < 0.8, sp.mask, np.where(action < 0.9, labels, replacement))
    out = ids.copy()
    out[rows.repeat(P, 1)[valid], pos[valid]] = new[valid].astype(ids.dtype)
    return out, np.where(valid, pos, 0), labels


def _random_tokens(u: np.ndarray, spec: MaskingSpec) -> np.ndarray:
    """Uniform over the vocabulary without its special tokens (what create_masked_lm_predictions draws
    from, less [PAD]/[UNK]/[CLS]/[SEP]/[MASK])."""
    specials = np.array(sorted(spec.special.as_set()), dtype=np.int64)
    r = np.minimum((u * (spec.vocab_size - len(specials))).astype(np.int64), spec.vocab_size - len(specials) - 1)
    for s in specials:   # ascending: shift past every special id at or below the running value
        r = r + (r >= s)
    return r


def _whole_word_positions(ids, candidate, k, keys, spec: MaskingSpec) -> np.ndarray:
    """Google's whole-word rule, one row at a time (words in a random order; a word that would
    overshoot the budget is skipped, later shorter words may still fit)."""
    B, T = ids.shape
    out = np.full((B, max(spec.max_predictions, 1)), T, dtype=np.int64)
    cont = spec.continuation
    t = np.arange(T)
    for r in range(B):
        cand = np.flatnonzero(candidate[r])
        if not len(cand) or k[r] == 0:
            continue
        joins = np.zeros(len(cand), dtype=bool)
        joins[1:] = (np.diff(cand) == 1) & cont[np.minimum(ids[r, cand[1:]], len(cont) - 1)]
        starts = np.flatnonzero(~joins)
        ends = np.append(starts[1:], len(cand))
        score = uniform(keys[r], t[cand[starts]], _CHOOSE)
        chosen: list[int] = []
        for w in np.argsort(score, kind="stable"):
            if len(chosen) >= k[r]:
                break
            size = ends[w] - starts[w]
            if len(chosen) + size > k[r]:
                continue
            chosen.extend(cand[starts[w]:ends[w]].tolist())
        chosen.sort()
        out[r, :len(chosen)] = chosen
    return out
