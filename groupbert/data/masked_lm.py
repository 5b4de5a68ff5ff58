"""BERT pretraining instances (next-sentence pairs, masked-LM targets) from one shard of documents.

The algorithm is BERT's (Devlin et al. 2018, https://arxiv.org/abs/1810.04805, section 3.1 and
appendix A.1) as google-research/bert ``create_pretraining_data.py`` implements it
(``create_instances_from_document``, ``truncate_seq_pair``, ``create_masked_lm_predictions``):

1. Every sentence is tokenised once (WordPiece, no special tokens).
2. For each document, sentences are accumulated into a chunk until it reaches the target length
   ``seq_len - 3`` (with probability ``short_seq_prob`` a shorter target drawn from
   ``[2, seq_len - 3]``). The chunk is cut at a random sentence boundary into segment A and segment B.
3. With probability 0.5 (always when the chunk holds one sentence) B is replaced by text from a random
   *other* document, and the unused sentences go back to the queue: ``next_sentence_label``
   1 = "B is random", 0 = "B is the actual continuation" (Hugging Face's convention).
4. The pair is truncated to ``seq_len - 3`` tokens by removing, one token at a time, from the longer side
   (from B on a tie), at its front or back with equal probability.
5. ``[CLS] A [SEP] B [SEP]``; token types 0 for ``[CLS] A [SEP]`` and 1 for ``B [SEP]``.
6. Masked LM (``groupbert.data.masking``), stored here (``masking: static``, ``dupe_factor`` passes over the
   shard, each with new pairs and masks) or drawn again every epoch at load time (``masking: dynamic``).

A shard is held as one flat token array with sentence and document offsets, so the per-chunk loop handles
integers only and everything per token (truncation, assembly, masking) is vectorised numpy. Truncation
computes the final lengths of step 4 in closed form and draws the tokens cut at the front as
Binomial(cut, 1/2), the distribution of Google's one-token-at-a-time coin flips.

Deviations from create_pretraining_data.py (none changes the distribution's intent):

- The random next segment comes from another document *of the same shard* (NVIDIA's LDDL does the same
  per partition); Google draws from the whole corpus. With shards of thousands of documents in dump
  order the partner is still an unrelated article; only a shard of a single document has no random next
  (its chunks of one sentence are skipped and every label is 0; a warning is logged).
- The random document is drawn among the *other* documents directly (Google retries 10 times and may
  fall back to the same document).
- The shorter target length is drawn per instance (Google draws it once per document and pass).
- The masking budget counts the non-special tokens (Google counts ``[CLS]``/``[SEP]`` too), and random
  replacement tokens exclude the five special tokens.
- Instances are shuffled within their shard; training shuffles globally across shards every epoch.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import random
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from groupbert.data.corpus import Document
from groupbert.data.errors import DataError
from groupbert.data.columns import IGNORE_INDEX, MASKED_LM
from groupbert.data.masking import MaskingSpec, hash_key, mask_rows
from groupbert.data.tokenizer import _as_tokenizer, special_ids

logger = logging.getLogger(__name__)

__all__ = ["COLUMNS", "IGNORE_INDEX", "Instances", "TokenizedDocuments", "build_instances",
           "build_pretraining_dataset", "continuation_table", "pad_rows", "plain_tokenizer",
           "static_mask", "static_mask_keys", "tokenize_documents", "validate_settings"]

COLUMNS = MASKED_LM   # one unpacked training row (groupbert.data.columns)
_TOKENIZE_BATCH = 4096   # sentences per encode_batch call (bounds the Encoding objects alive)
_STATIC_MASK_TAG = 0x5A17C   # keeps static-mask keys apart from dynamic ones (masking.hash_key)


# --------------------------------------------------------------------------------------------------
# Tokenised documents: one flat array
# --------------------------------------------------------------------------------------------------

@dataclass
class TokenizedDocuments:
    """Documents as one flat token array: sentence ``s`` is ``tokens[sentence_offsets[s]:sentence_offsets[s+1]]``
    and document ``d`` holds sentences ``document_offsets[d]:document_offsets[d+1]`` (none is empty)."""
    tokens: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sentence_offsets[-1])


def plain_tokenizer(tokenizer):
    """The tokenizer without padding or truncation, which would corrupt sentence lengths."""
    tok = _as_tokenizer(tokenizer)
    if tok.truncation is not None or tok.padding is not None:
        tok = type(tok).from_str(tok.to_str())
        tok.no_truncation()
        tok.no_padding()
    return tok


def tokenize_documents(documents: Sequence[Sequence[str]], tokenizer, dtype=np.int32) -> TokenizedDocuments:
    """Sentences per document -> :class:`TokenizedDocuments`, batch-encoded by the Rust tokenizer, ids as
    ``dtype`` (uint16 halves a shard's memory when the vocabulary fits). Sentences that encode to nothing
    and documents left without a sentence are dropped."""
    tok = plain_tokenizer(tokenizer)
    sentences = [s for d in documents for s in d]
    lengths = np.zeros(len(sentences), dtype=np.int64)
    pieces = []
    for start in range(0, len(sentences), _TOKENIZE_BATCH):
        batch = sentences[start:start + _TOKENIZE_BATCH]   # _fast: no offsets (we need ids only), ~15% faster
        ids = [e.ids for e in tok.encode_batch_fast(batch, add_special_tokens=False)]
        lengths[start:start + len(ids)] = [len(x) for x in ids]
        total = int(lengths[start:start + len(ids)].sum())
        pieces.append(np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=total))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)
    per_doc = np.array([len(d) for d in documents], dtype=np.int64)
    doc_of_sentence = np.repeat(np.arange(len(documents)), per_doc)
    keep = lengths > 0
    kept_per_doc = np.bincount(doc_of_sentence[keep], minlength=len(documents))
    kept_per_doc = kept_per_doc[kept_per_doc > 0]
    return TokenizedDocuments(
        tokens=tokens,
        sentence_offsets=np.concatenate([[0], np.cumsum(lengths[keep])]).astype(np.int64),
        document_offsets=np.concatenate([[0], np.cumsum(kept_per_doc)]).astype(np.int64))


# --------------------------------------------------------------------------------------------------
# Pairs: the per-chunk loop over sentence indices
# --------------------------------------------------------------------------------------------------

def _pairs(docs: TokenizedDocuments, max_num_tokens: int, short_seq_prob: float, rng: random.Random):
    """(A start, A end, B start, B end) token offsets and is-random-next of every pair of one pass.
    A and B are runs of whole sentences, so each is a contiguous range of ``docs.tokens``."""
    C = docs.sentence_offsets.tolist()
    D = docs.document_offsets.tolist()
    n_docs = len(D) - 1
    a0, a1, b0, b1, rnd = [], [], [], [], []

    uniform = rng.random   # randint(a, b) as a + int(uniform() * (b - a + 1)): 5x cheaper, bias < 2**-50

    def draw_target() -> int:
        return 2 + int(uniform() * (max_num_tokens - 1)) if uniform() < short_seq_prob else max_num_tokens

    for d in range(n_docs):
        first, last = D[d], D[d + 1]          # sentences [first, last)
        target = draw_target()
        chunk_start = i = first
        while i < last:
            if i == last - 1 or C[i + 1] - C[chunk_start] >= target:
                n_chunk = i - chunk_start + 1
                a_end = chunk_start + (1 + int(uniform() * (n_chunk - 1)) if n_chunk >= 2 else 1)
                if n_docs > 1 and (n_chunk == 1 or uniform() < 0.5):
                    target_b = target - (C[a_end] - C[chunk_start])
                    other = int(uniform() * (n_docs - 1))
                    other += other >= d                      # any document but this one
                    start = D[other] + int(uniform() * (D[other + 1] - D[other]))
                    # first sentence end at which B holds >= target_b tokens (at least one sentence)
                    end = bisect.bisect_left(C, C[start] + target_b, start + 1, D[other + 1])
                    a0.append(C[chunk_start]), a1.append(C[a_end]), b0.append(C[start]), b1.append(C[end])
                    rnd.append(True)
                    i = a_end - 1                            # the chunk's sentences after A go back
                elif n_chunk >= 2:
                    a0.append(C[chunk_start]), a1.append(C[a_end]), b0.append(C[a_end]), b1.append(C[i + 1])
                    rnd.append(False)
                # else: a one-sentence chunk with no other document has no B: skipped
                target = draw_target()
                chunk_start = i + 1
            i += 1
    as_array = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return as_array(a0), as_array(a1), as_array(b0), as_array(b1), np.asarray(rnd, dtype=bool)


def truncated_lengths(len_a: np.ndarray, len_b: np.ndarray, max_num_tokens: int):
    """Final (len A, len B) of Google's truncate_seq_pair: cut the longer side (B on a tie) one token at a
    time until the pair fits. Closed form: the longer side alone is cut while it stays the longer one;
    once the two meet they alternate, ending at ceil(M/2) for A and floor(M/2) for B."""
    la, lb, M = np.asarray(len_a), np.asarray(len_b), max_num_tokens
    fits = la + lb <= M
    a_longer = la > lb
    only_a = a_longer & (M >= 2 * lb)            # A cut down to M - lb without dropping to lb
    only_b = ~a_longer & (M >= 2 * la - 1)       # B cut down to M - la (ties cut B)
    new_a = np.where(fits | only_b, la, np.where(only_a, M - lb, (M + 1) // 2))
    new_b = np.where(fits | only_a, lb, np.where(only_b, M - la, M // 2))
    return new_a, new_b


@dataclass
class Instances:
    """Unpadded instances: row r is ``ids[offsets[r]:offsets[r+1]]`` = ``[CLS] A [SEP] B [SEP]``;
    B starts at ``b_start[r]`` (token types are 1 from there on); ``masked_*`` is set by static masking."""
    ids: np.ndarray
    offsets: np.ndarray
    b_start: np.ndarray
    next_sentence_label: np.ndarray
    masked_positions: Optional[np.ndarray] = None   # flat, row r's at mask_offsets[r]:mask_offsets[r+1]
    masked_labels: Optional[np.ndarray] = None
    mask_offsets: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def _ranges(counts: np.ndarray):
    """(which range, index within it) for the concatenation of ``arange(c)`` over ``counts``."""
    counts = np.asarray(counts, dtype=np.int64)
    which = np.repeat(np.arange(len(counts)), counts)
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return which, within


def _truncate(a0, a1, b0, b1, max_num_tokens: int, rng: np.random.Generator):
    """(len A, len B, A start, B start) after truncation: the lengths in closed form, the tokens cut at
    each front drawn as Binomial(cut, 1/2) (the rest are cut at the back)."""
    la, lb = truncated_lengths(a1 - a0, b1 - b0, max_num_tokens)
    return la, lb, a0 + rng.binomial((a1 - a0) - la, 0.5), b0 + rng.binomial((b1 - b0) - lb, 0.5)


def _assemble(tokens, la, lb, a_start, b_start, cls: int, sep: int, out: np.ndarray) -> None:
    """``[CLS] A [SEP] B [SEP]`` rows written into ``out`` with one gather (int32 per token: a shard's
    token offsets stay below 2**31)."""
    n = (la + lb + 3).astype(np.int32)
    starts = np.cumsum(n, dtype=np.int64) - n
    t = np.arange(len(out), dtype=np.int32) - np.repeat(starts.astype(np.int32), n)
    la_r = np.repeat(la.astype(np.int32), n)
    src = np.where(t <= la_r, np.repeat((a_start - 1).astype(np.int32), n) + t,
                   np.repeat((b_start - 2 - la).astype(np.int32), n) + t)
    np.clip(src, 0, len(tokens) - 1, out=src)
    np.take(tokens, src, out=out)
    del src
    out[t == 0] = cls
    out[(t == la_r + 1) | (t == np.repeat(n - 1, n))] = sep


def build_instances(docs: TokenizedDocuments, *, seq_len: int, short_seq_prob: float, dupe_factor: int,
                    cls: int, sep: int, seed, shard: int = 0) -> Instances:
    """``dupe_factor`` passes of pairs over a shard, each in a shuffled order (training also shuffles
    across shards); every random draw is seeded by ``(seed, shard, pass)``, so a shard's instances do not
    depend on the process that builds them. The ids keep the tokens' dtype and are written in place: the
    only per-token arrays are the output and one pass's temporaries."""
    max_num_tokens = seq_len - 3
    passes = []
    for dupe in range(dupe_factor):
        rng = random.Random(f"{seed}:{shard}:{dupe}")
        a0, a1, b0, b1, rnd = _pairs(docs, max_num_tokens, short_seq_prob, rng)
        np_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, shard, dupe, 1])
        order = np_rng.permutation(len(a0))
        passes.append((*_truncate(a0[order], a1[order], b0[order], b1[order], max_num_tokens, np_rng), rnd[order]))
    lengths = np.concatenate([la + lb + 3 for la, lb, *_ in passes])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.empty(int(offsets[-1]), dtype=docs.tokens.dtype)
    row = 0
    for la, lb, a_start, b_start, _ in passes:
        _assemble(docs.tokens, la, lb, a_start, b_start, cls, sep, ids[offsets[row]:offsets[row + len(la)]])
        row += len(la)
    return Instances(ids=ids, offsets=offsets,
                     b_start=np.concatenate([la + 2 for la, *_ in passes]).astype(np.int64),
                     next_sentence_label=np.concatenate([p[-1] for p in passes]).astype(np.int8))


# --------------------------------------------------------------------------------------------------
# Padding and static masking
# --------------------------------------------------------------------------------------------------

def pad_rows(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray, width: int, pad) -> np.ndarray:
    """Rows ``rows`` of a ragged array as a [len(rows), width] matrix, right-padded with ``pad``."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = offsets[rows].astype(np.int64)
    lengths = offsets[rows + 1] - starts
    out = np.full((len(rows), width), pad, dtype=np.int64)
    r, t = _ranges(lengths)
    out[r, t] = values[starts[r] + t]
    return out


def static_mask_keys(seed, shard: int, rows: np.ndarray) -> np.ndarray:
    return hash_key(_STATIC_MASK_TAG, int(seed) & 0xFFFFFFFFFFFF, shard, np.asarray(rows))


def static_mask(instances: Instances, spec: MaskingSpec, seq_len: int, seed, shard: int = 0,
                chunk: int = 4096) -> Instances:
    """Masks drawn once at preparation time (key: data seed, shard, row), stored with the instances."""
    ids = instances.ids.copy()
    positions, labels, counts = [], [], []
    for start in range(0, len(instances), chunk):
        rows = np.arange(start, min(start + chunk, len(instances)))
        lengths = instances.lengths[rows]
        padded = pad_rows(instances.ids, instances.offsets, rows, seq_len, spec.special.pad)
        masked, pos, lab = mask_rows(padded, lengths, static_mask_keys(seed, shard, rows), spec)
        r, t = _ranges(lengths)
        ids[instances.offsets[rows][r] + t] = masked[r, t]
        valid = lab != IGNORE_INDEX
        counts.append(valid.sum(1))
        positions.append(pos[valid])
        labels.append(lab[valid])
    counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
    return Instances(ids, instances.offsets, instances.b_start, instances.next_sentence_label,
                     masked_positions=np.concatenate(positions) if positions else np.zeros(0, np.int64),
                     masked_labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
                     mask_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))


def continuation_table(tokenizer) -> np.ndarray:
    """Bool per id: a ``##`` continuation piece (whole-word masking joins it to the token before)."""
    tok = _as_tokenizer(tokenizer)
    table = np.zeros(tok.get_vocab_size(with_added_tokens=True), dtype=bool)
    for token, index in tok.get_vocab(with_added_tokens=True).items():
        if token.startswith("##") and index < len(table):
            table[index] = True
    return table


def validate_settings(seq_len, max_predictions, mask_prob, short_seq_prob, dupe_factor) -> None:
    if seq_len < 8:
        raise DataError(f"seq_len must be >= 8 for [CLS] A [SEP] B [SEP], got {seq_len}")
    if not 1 <= max_predictions <= seq_len:
        raise DataError(f"max_predictions must be in [1, seq_len={seq_len}], got {max_predictions}")
    if not 0.0 < mask_prob <= 1.0:
        raise DataError(f"mask_prob must be in (0, 1], got {mask_prob}")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise DataError(f"short_seq_prob must be in [0, 1], got {short_seq_prob}")
    if dupe_factor < 1:
        raise DataError(f"dupe_factor must be >= 1, got {dupe_factor}")


# --------------------------------------------------------------------------------------------------
# In memory: a list of documents -> a datasets.Dataset (tests, notebooks, small experiments)
# --------------------------------------------------------------------------------------------------

def build_pretraining_dataset(
    documents: Sequence[Document],
    tokenizer,
    *,
    seq_len: int,
    max_predictions: int,
    mask_prob: float = 0.15,
    short_seq_prob: float = 0.1,
    dupe_factor: int = 1,
    seed: int = 0,
    whole_word_masking: bool = False,
    show_progress: bool = False,
):
    """Statically masked MLM + NSP instances of ``documents`` (as one shard) in a torch-format
    ``datasets.Dataset`` with the padded :data:`COLUMNS`. The same code as the preparation step
    (``groupbert.data.prepare``), without files; training runs use prepared shards.

    Raises:
        DataError: invalid settings, or documents that yield no instance.
    """
    import datasets

    del show_progress  # one shard: nothing to report
    validate_settings(seq_len, max_predictions, mask_prob, short_seq_prob, dupe_factor)
    tok = plain_tokenizer(tokenizer)
    docs = tokenize_documents([d.sentences for d in documents], tok)
    if docs.num_documents == 0:
        raise DataError("the corpus has no text to make pretraining instances from")
    if docs.num_documents == 1:
        logger.warning("only one document: no random-next pairs, every next_sentence_label is 0")
    sp = special_ids(tok)
    instances = build_instances(docs, seq_len=seq_len, short_seq_prob=short_seq_prob, dupe_factor=dupe_factor,
                                cls=sp.cls, sep=sp.sep, seed=seed)
    if len(instances) == 0:
        raise DataError(f"the corpus ({docs.num_documents} document(s), {docs.num_tokens} tokens) yields no "
                        "pretraining instance: it needs two documents, or one document with two sentences")
    spec = MaskingSpec(mask_prob, max_predictions, tok.get_vocab_size(with_added_tokens=True), sp,
                       continuation_table(tok) if whole_word_masking else None)
    instances = static_mask(instances, spec, seq_len, seed)
    columns = to_columns(instances, np.arange(len(instances)), seq_len, max_predictions, sp.pad)
    fixed = lambda n: datasets.List(datasets.Value("int32"), length=n)  # noqa: E731
    features = datasets.Features({"input_ids": fixed(seq_len), "token_type_ids": fixed(seq_len),
                                  "attention_mask": fixed(seq_len), "masked_lm_positions": fixed(max_predictions),
                                  "masked_lm_labels": fixed(max_predictions),
                                  "next_sentence_label": datasets.Value("int32")})
    return datasets.Dataset.from_dict({k: v.astype(np.int32) for k, v in columns.items()},
                                      features=features).with_format("torch")


def to_columns(instances: Instances, rows: np.ndarray, seq_len: int, max_predictions: int, pad: int) -> dict:
    """Padded :data:`COLUMNS` (int64 numpy) of some rows of statically masked instances."""
    rows = np.asarray(rows, dtype=np.int64)
    lengths = instances.lengths[rows]
    t = np.arange(seq_len)
    positions = pad_rows(instances.masked_positions, instances.mask_offsets, rows, max_predictions, 0)
    labels = pad_rows(instances.masked_labels, instances.mask_offsets, rows, max_predictions, IGNORE_INDEX)
    return {
        "input_ids": pad_rows(instances.ids, instances.offsets, rows, seq_len, pad),
        "token_type_ids": ((t >= instances.b_start[rows][:, None]) & (t < lengths[:, None])).astype(np.int64),
        "attention_mask": (t < lengths[:, None]).astype(np.int64),
        "masked_lm_positions": positions,
        "masked_lm_labels": labels,
        "next_sentence_label": instances.next_sentence_label[rows].astype(np.int64),
    }
