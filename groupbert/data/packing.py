"""Shortest-pack-first histogram packing (SPFHP) of sequence lengths into fixed-length rows.

Krell, Kosec, Perez & Fitzgibbon 2021, "Efficient Sequence Packing without Cross-contamination:
Accelerating Large Language Models without Impacting Performance", arXiv:2107.02027, section 4.2:
work on the histogram of lengths, longest first; each group of sequences of one length goes into the
packs with the *least* remaining space that still fits it (best fit), a new pack is opened when none
fits, and a pack holds at most ``max_per_pack`` sequences. Only the histogram is touched, so packing
millions of sequences takes milliseconds.

Here: the plan (:func:`spfhp`), the assignment of actual sequences to rows (:func:`assign_rows`), and
the packed MLM + NSP columns (:func:`pack_pretraining_columns`, :func:`pack_pretraining_dataset`). A packed
row carries, besides the concatenated tokens, ``segment_ids`` numbering its sequences 1..S (0 = padding),
``position_ids`` restarting at 0 for each sequence, ``cls_positions`` [S] and one NSP label per sequence
(-100 in empty slots) (``groupbert.data.columns.PACKED_MASKED_LM``); the models then keep attention, the
GroupBERT convolution and the losses inside each sequence, so packed and unpacked training compute the
same losses and gradients on the same sequences.
"""
from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from groupbert.data.columns import IGNORE_INDEX, PACKED_MASKED_LM

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class PackingPlan:
    strategies: dict[tuple[int, ...], int]   # sorted lengths in one row -> number of such rows
    seq_len: int

    @property
    def num_rows(self) -> int:
        return sum(self.strategies.values())

    @property
    def num_sequences(self) -> int:
        return sum(len(s) * n for s, n in self.strategies.items())

    @property
    def real_tokens(self) -> int:
        return sum(sum(s) * n for s, n in self.strategies.items())

    @property
    def efficiency(self) -> float:
        """Real tokens / tokens in the packed rows."""
        return self.real_tokens / max(self.num_rows * self.seq_len, 1)

    @property
    def packing_factor(self) -> float:
        """Sequences per row (the speed-up in sequences per step over one sequence per row)."""
        return self.num_sequences / max(self.num_rows, 1)


def padded_efficiency(lengths, seq_len: int) -> float:
    """Real tokens / tokens when every sequence is padded to ``seq_len`` (no packing)."""
    lengths = list(lengths)
    return sum(lengths) / max(len(lengths) * seq_len, 1)


def spfhp(lengths, seq_len: int, max_per_pack: int = 3) -> PackingPlan:
    """Pack sequences of the given lengths (each in ``1..seq_len``) into rows of ``seq_len`` tokens."""
    if max_per_pack < 1:
        raise ValueError(f"max_per_pack must be >= 1, got {max_per_pack}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > seq_len):
        bad = lengths[(lengths < 1) | (lengths > seq_len)][0]
        raise ValueError(f"a sequence of length {bad} does not fit a row of {seq_len}")
    histogram = {n: int(c) for n, c in enumerate(np.bincount(lengths, minlength=seq_len + 1)) if c}
    # open packs by remaining space: space -> {lengths tuple: count}; only packs that can still take one
    open_packs: dict[int, dict[tuple[int, ...], int]] = defaultdict(lambda: defaultdict(int))
    spaces: list[int] = []  # sorted keys of open_packs
    closed: dict[tuple[int, ...], int] = defaultdict(int)

    def add(pack: tuple[int, ...], count: int) -> None:
        space = seq_len - sum(pack)
        if len(pack) >= max_per_pack or space == 0:
            closed[pack] += count
            return
        if space not in open_packs or not open_packs[space]:
            bisect.insort(spaces, space)
        open_packs[space][pack] += count

    for length in sorted(histogram, reverse=True):
        left = histogram[length]
        while left:
            i = bisect.bisect_left(spaces, length)  # the tightest open pack that fits
            if i == len(spaces):
                add((length,), left)  # no open pack fits: open new ones
                break
            space = spaces[i]
            pack, count = next(iter(open_packs[space].items()))
            take = min(count, left)
            if take == count:
                del open_packs[space][pack]
                if not open_packs[space]:
                    del open_packs[space]
                    spaces.pop(i)
            else:
                open_packs[space][pack] -= take
            add(tuple(sorted(pack + (length,), reverse=True)), take)
            left -= take
    for packs in open_packs.values():
        for pack, count in packs.items():
            closed[pack] += count
    return PackingPlan(dict(closed), seq_len)


# ----------------------------------------------------------------------------------------------
# From a plan to rows of actual sequences


def assign_rows(lengths, plan: PackingPlan, seed: int = 0) -> np.ndarray:
    """Sequence indices per row, [rows, max sequences per row] with -1 in empty slots.

    Sequences of each length are drawn in a seeded random order for the plan's strategies, and the rows
    are shuffled, so neighbouring sequences of the input (one document) rarely share a row or a batch.
    Vectorised per strategy: no Python loop over rows.
    """
    lengths = np.asarray(lengths)
    rng = np.random.default_rng(seed)
    by_length = np.argsort(lengths, kind="stable")
    values, starts, counts = np.unique(lengths[by_length], return_index=True, return_counts=True)
    pools = {int(n): by_length[a:a + c][rng.permutation(c)] for n, a, c in zip(values, starts, counts)}
    taken = dict.fromkeys(pools, 0)
    width = max((len(s) for s in plan.strategies), default=1)
    rows = np.full((plan.num_rows, width), -1, dtype=np.int64)
    r = 0
    for strategy in sorted(plan.strategies):  # a fixed order: the result depends on the seed only
        count = plan.strategies[strategy]
        for j, n in enumerate(strategy):
            if n not in pools or taken[n] + count > len(pools[n]):
                raise ValueError("the plan does not cover the given lengths")
            rows[r:r + count, j] = pools[n][taken[n]:taken[n] + count]
            taken[n] += count
        r += count
    if any(taken[n] != len(pools[n]) for n in pools) or r != len(rows):
        raise ValueError("the plan does not cover the given lengths")
    return rows[rng.permutation(len(rows))]


def max_predictions_per_row(seq_len: int, mask_prob: float, max_predictions: int, max_per_pack: int) -> int:
    """Masked-LM slots a packed row needs: each sequence of n maskable tokens has at most
    ``max(1, round(mask_prob * n)) <= mask_prob * n + 1`` (``groupbert.data.masked_lm``), and a row
    holds at most ``seq_len`` tokens in ``max_per_pack`` sequences."""
    return min(max_per_pack * max_predictions, int(mask_prob * seq_len) + max_per_pack)


@dataclass(frozen=True)
class PackedLayout:
    """Where every sequence went: entry i is input sequence i (``src`` is ``arange(N)``, kept for indexing)."""
    row: np.ndarray      # packed row
    slot: np.ndarray     # 0-based place within the row (sequence number - 1)
    src: np.ndarray      # index of the sequence in the unpacked input
    offset: np.ndarray   # first position within the row
    length: np.ndarray   # tokens
    num_rows: int
    seq_len: int
    max_per_pack: int

    def token_index(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(entry, position within its sequence, position within its row) of every packed token."""
        k, t = _ranges(self.length)
        return k, t, self.offset[k] + t

    def pack_tokens(self, columns: dict, pad_values: dict | None = None) -> dict:
        """[N, T] per-token columns -> [rows, T], plus ``segment_ids`` (sequence numbers 1..S, 0 =
        padding), ``attention_mask`` (1 at real tokens) and ``position_ids`` (0 at each sequence's start)."""
        k, t, pos = self.token_index()
        rows = self.row[k]
        out = {}
        for name, col in columns.items():
            col = np.asarray(col)
            out[name] = np.full((self.num_rows, self.seq_len), (pad_values or {}).get(name, 0), col.dtype)
            out[name][rows, pos] = col[self.src[k], t]
        out["segment_ids"] = np.zeros((self.num_rows, self.seq_len), np.int64)
        out["segment_ids"][rows, pos] = self.slot[k] + 1
        out["attention_mask"] = (out["segment_ids"] > 0).astype(np.int64)
        out["position_ids"] = np.zeros((self.num_rows, self.seq_len), np.int64)
        out["position_ids"][rows, pos] = t
        return out

    def per_sequence(self, values, fill) -> np.ndarray:
        """[N] per-sequence values -> [rows, max_per_pack], ``fill`` in empty slots."""
        values = np.asarray(values)
        out = np.full((self.num_rows, self.max_per_pack), fill, values.dtype)
        out[self.row, self.slot] = values[self.src]
        return out

    def unpack_tokens(self, packed: np.ndarray, fill) -> np.ndarray:
        """[rows, T, ...] per-token outputs (logits) -> [N, T, ...] as if each sequence had its own row."""
        n = int(self.src.max()) + 1 if len(self.src) else 0
        out = np.full((n, self.seq_len, *packed.shape[2:]), fill, packed.dtype)
        k, t, pos = self.token_index()
        out[self.src[k], t] = packed[self.row[k], pos]
        return out


def pack_layout(lengths, seq_len: int, max_per_pack: int = 3, seed: int = 0) -> tuple[PackedLayout, PackingPlan]:
    """SPFHP's plan for ``lengths`` and the concrete :class:`PackedLayout` (seeded, see :func:`assign_rows`)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    plan = spfhp(lengths, seq_len, max_per_pack)
    return layout_from_members(assign_rows(lengths, plan, seed), lengths, seq_len, max_per_pack), plan


def layout_from_members(members: np.ndarray, lengths: np.ndarray, seq_len: int, max_per_pack: int) -> PackedLayout:
    """The :class:`PackedLayout` of rows given as sequence indices ``members`` [rows, <= max_per_pack]
    (-1 in empty slots) into ``lengths``; sequences keep their order within a row."""
    members = np.asarray(members)
    lengths = np.asarray(lengths, dtype=np.int64)
    row, slot = np.nonzero(members >= 0)
    src = members[row, slot]
    grid = np.zeros(members.shape, dtype=np.int64)
    grid[row, slot] = lengths[src]
    offsets = np.cumsum(grid, axis=1) - grid  # start of each slot within its row
    order = np.argsort(src)
    row, slot, src = row[order], slot[order], src[order]
    return PackedLayout(row, slot, src, offsets[row, slot], lengths[src], len(members), seq_len, max_per_pack)


def sequence_lengths(attention_mask) -> np.ndarray:
    """Real tokens per row of a right-padded [N, T] 0/1 mask (a clear error for any other layout)."""
    mask = np.asarray(attention_mask).astype(bool)
    lengths = mask.sum(1)
    if (mask != (np.arange(mask.shape[1]) < lengths[:, None])).any():
        raise ValueError("packing needs each sequence's tokens at the start of its row (right padding)")
    return lengths


def _ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which range, index within it) for the concatenation of ``arange(c)`` over ``counts``."""
    counts = np.asarray(counts, dtype=np.int64)
    which = np.repeat(np.arange(len(counts)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return which, within


def pack_pretraining_columns(columns: dict, pad_id: int, max_per_pack: int = 3, max_predictions: int | None = None,
                             mask_prob: float = 0.15, seed: int = 0) -> tuple[dict, PackingPlan]:
    """Unpacked MLM + NSP columns (``groupbert.data.masked_lm.COLUMNS``, numpy) -> packed columns
    (``columns.PACKED_MASKED_LM``) and the plan. Vectorised: no Python loop over rows or sequences."""
    T = np.asarray(columns["input_ids"]).shape[1]
    layout, plan = pack_layout(sequence_lengths(columns["attention_mask"]), T, max_per_pack, seed)
    labels = np.asarray(columns["masked_lm_labels"])
    P = max_predictions_per_row(T, mask_prob, max_predictions or labels.shape[1], max_per_pack)
    return pack_columns(columns, layout, pad_id, P), plan


def pack_columns(columns: dict, layout: PackedLayout, pad_id: int, max_predictions_row: int) -> dict:
    """Place unpacked MLM + NSP columns into the rows of ``layout``; ``max_predictions_row`` masked-LM slots
    per row (more only for data masked more densely than ours)."""
    ids = np.asarray(columns["input_ids"])
    out = layout.pack_tokens({"input_ids": ids, "token_type_ids": columns["token_type_ids"]},
                             {"input_ids": pad_id})
    # masked LM: each sequence's scored slots (its first n_masked), shifted by its offset, one after another
    labels = np.asarray(columns["masked_lm_labels"])
    n_masked = (labels[layout.src] != IGNORE_INDEX).sum(1)
    per_row = np.zeros((layout.num_rows, layout.max_per_pack), dtype=np.int64)
    per_row[layout.row, layout.slot] = n_masked
    P = max(max_predictions_row, int(per_row.sum(1).max(initial=0)))
    first = (np.cumsum(per_row, axis=1) - per_row)[layout.row, layout.slot]
    k, j = _ranges(n_masked)
    rows, dest = layout.row[k], first[k] + j
    out["masked_lm_positions"] = np.zeros((layout.num_rows, P), ids.dtype)
    out["masked_lm_positions"][rows, dest] = np.asarray(columns["masked_lm_positions"])[layout.src[k], j] + layout.offset[k]
    out["masked_lm_labels"] = np.full((layout.num_rows, P), IGNORE_INDEX, ids.dtype)
    out["masked_lm_labels"][rows, dest] = labels[layout.src[k], j]
    out["cls_positions"] = layout.per_sequence(layout.offset, 0)
    out["next_sentence_label"] = layout.per_sequence(columns["next_sentence_label"], IGNORE_INDEX)
    return out


def pack_pretraining_dataset(dataset, pad_id: int, max_per_pack: int = 3, mask_prob: float = 0.15, seed: int = 0):
    """A ``datasets.Dataset`` of unpacked MLM + NSP instances -> one of packed rows (torch format)."""
    import datasets

    columns = dataset.with_format("numpy")[:]
    packed, plan = pack_pretraining_columns(columns, pad_id, max_per_pack, mask_prob=mask_prob, seed=seed)
    logger.info("packed %d sequences into %d rows of %d (%.2f per row; real tokens %.1f%% -> %.1f%%)",
                plan.num_sequences, plan.num_rows, plan.seq_len, plan.packing_factor,
                100 * padded_efficiency(np.asarray(columns["attention_mask"]).astype(bool).sum(1), plan.seq_len),
                100 * plan.efficiency)
    T, P, S = plan.seq_len, packed["masked_lm_positions"].shape[1], max_per_pack
    fixed = {"input_ids": T, "token_type_ids": T, "attention_mask": T, "segment_ids": T, "position_ids": T,
             "masked_lm_positions": P, "masked_lm_labels": P, "cls_positions": S, "next_sentence_label": S}
    assert set(fixed) == set(PACKED_MASKED_LM)
    features = datasets.Features({k: datasets.List(datasets.Value("int32"), length=n) for k, n in fixed.items()})
    return datasets.Dataset.from_dict({k: packed[k].astype(np.int32) for k in fixed},
                                      features=features).with_format("torch")
