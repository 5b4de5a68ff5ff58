"""SQuAD examples -> fixed-length features: ``[CLS] question [SEP] context window [SEP] [PAD]...``.

The standard recipe (HF ``run_qa.py`` ``prepare_train_features`` / ``prepare_validation_features``,
google-research/bert ``run_squad.py``): the question is cut to ``max_query_length`` WordPiece tokens; a
context longer than the room left (``seq_len - question - 3``) is cut into windows that share
``doc_stride`` tokens with the previous one (HF's overlap semantics, not Google's step size). Training
labels are token indices of the answer's first and last piece; an answer not wholly inside a window
labels that window with the [CLS] index 0. Validation features keep their example index and the
character offsets of their context tokens ((-1, -1) everywhere else) for post-processing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from groupbert.data.tokenizer import _as_tokenizer, special_ids

NO_OFFSET = (-1, -1)


@dataclass
class Features:
    input_ids: np.ndarray           # [N, T] int64
    token_type_ids: np.ndarray      # [N, T]
    attention_mask: np.ndarray      # [N, T]
    example_index: np.ndarray       # [N] index into the examples list
    offsets: np.ndarray             # [N, T, 2] context char offsets, -1 outside the context
    start_positions: np.ndarray     # [N] token index of the answer start (0 = [CLS]: not in this window)
    end_positions: np.ndarray       # [N]

    def __len__(self) -> int:
        return len(self.input_ids)

    def model_inputs(self, with_labels: bool) -> dict:
        cols = {"input_ids": self.input_ids, "token_type_ids": self.token_type_ids,
                "attention_mask": self.attention_mask}
        if with_labels:
            cols.update(start_positions=self.start_positions, end_positions=self.end_positions)
        return cols


def window_starts(n_context: int, max_context: int, doc_stride: int) -> list[int]:
    """First context token of each window; consecutive windows overlap by ``doc_stride`` tokens."""
    if max_context <= doc_stride:
        raise ValueError(f"doc_stride {doc_stride} must be smaller than the context room {max_context}")
    starts, start = [0], 0
    while start + max_context < n_context:
        start += max_context - doc_stride
        starts.append(start)
    return starts


def _answer_tokens(offsets: list, lo: int, hi: int, start_char: int, end_char: int) -> tuple[int, int] | None:
    """Indices (into ``offsets``, context tokens ``lo..hi-1``) bracketing [start_char, end_char), or None
    when the window does not contain the whole answer (HF: first offset > start minus 1, etc.)."""
    if not (offsets[lo][0] <= start_char and offsets[hi - 1][1] >= end_char):
        return None
    s = lo
    while s + 1 < hi and offsets[s + 1][0] <= start_char:
        s += 1
    e = hi - 1
    while e - 1 >= lo and offsets[e - 1][1] >= end_char:
        e -= 1
    return s, e


def build_features(examples: list[dict], tokenizer, seq_len: int = 384, doc_stride: int = 128,
                   max_query_length: int = 64, training: bool = True) -> Features:
    """Tokenise ``examples`` into windows; ``training`` adds start/end labels (first reference answer)."""
    tok = _as_tokenizer(tokenizer)
    ids = special_ids(tok)
    questions = tok.encode_batch([ex["question"].lstrip() for ex in examples], add_special_tokens=False)
    contexts = tok.encode_batch([ex["context"] for ex in examples], add_special_tokens=False)
    rows = {k: [] for k in ("input_ids", "token_type_ids", "attention_mask", "example_index", "offsets",
                            "start_positions", "end_positions")}
    for i, (ex, q, c) in enumerate(zip(examples, questions, contexts)):
        q_ids = q.ids[:max_query_length]
        max_context = seq_len - len(q_ids) - 3
        c_ids, c_offsets = c.ids, c.offsets
        if training:
            start_char = ex["answers"]["answer_start"][0]
            end_char = start_char + len(ex["answers"]["text"][0])
        for w in window_starts(len(c_ids), max_context, doc_stride):
            span_ids = c_ids[w:w + max_context]
            input_ids = [ids.cls, *q_ids, ids.sep, *span_ids, ids.sep]
            first = len(q_ids) + 2                  # index of the window's first context token
            n = len(input_ids)
            offsets = [NO_OFFSET] * first + list(c_offsets[w:w + max_context]) + [NO_OFFSET]
            pad = seq_len - n
            rows["input_ids"].append(input_ids + [ids.pad] * pad)
            rows["token_type_ids"].append([0] * first + [1] * (n - first) + [0] * pad)
            rows["attention_mask"].append([1] * n + [0] * pad)
            rows["example_index"].append(i)
            rows["offsets"].append(offsets + [NO_OFFSET] * pad)
            span = None
            if training and span_ids:
                span = _answer_tokens(offsets, first, first + len(span_ids), start_char, end_char)
            rows["start_positions"].append(span[0] if span else 0)
            rows["end_positions"].append(span[1] if span else 0)
    return Features(
        input_ids=np.asarray(rows["input_ids"], dtype=np.int64).reshape(-1, seq_len),
        token_type_ids=np.asarray(rows["token_type_ids"], dtype=np.int64).reshape(-1, seq_len),
        attention_mask=np.asarray(rows["attention_mask"], dtype=np.int64).reshape(-1, seq_len),
        example_index=np.asarray(rows["example_index"], dtype=np.int64),
        offsets=np.asarray(rows["offsets"], dtype=np.int64).reshape(-1, seq_len, 2),
        start_positions=np.asarray(rows["start_positions"], dtype=np.int64),
        end_positions=np.asarray(rows["end_positions"], dtype=np.int64),
    )


def pack_features(features: Features, pad_id: int, max_per_pack: int = 3, seed: int = 0, with_labels: bool = True):
    """Several features per row (SPFHP, ``groupbert.data.packing``): returns (columns, layout, plan).

    The columns are the model inputs of packed rows (``segment_ids`` numbering the features 1..S,
    ``position_ids`` restarting at each feature's [CLS]; ``groupbert.data.columns``) and, with labels, ``start_positions`` /
    ``end_positions`` [rows, S] as row positions (-100 in empty slots). ``layout.unpack_tokens`` turns the
    packed rows' logits back into one row per feature for post-processing.
    """
    from groupbert.data.columns import IGNORE_INDEX
    from groupbert.data.packing import pack_layout, sequence_lengths

    layout, plan = pack_layout(sequence_lengths(features.attention_mask), features.input_ids.shape[1],
                               max_per_pack, seed)
    cols = layout.pack_tokens({"input_ids": features.input_ids, "token_type_ids": features.token_type_ids},
                              {"input_ids": pad_id})
    if with_labels:  # layout entry i is feature i
        cols["start_positions"] = layout.per_sequence(features.start_positions + layout.offset, IGNORE_INDEX)
        cols["end_positions"] = layout.per_sequence(features.end_positions + layout.offset, IGNORE_INDEX)
    return cols, layout, plan
