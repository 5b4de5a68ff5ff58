"""The batch columns the data path hands the models: names, shapes and conventions, in one place.

Every batch is a dict of int64 tensors named as below (the models' ``forward`` arguments). Padding slots
of label columns hold :data:`IGNORE_INDEX`, torch's ``cross_entropy`` default and Hugging Face's
convention. A *packed* row holds several sequences (Krell et al. 2021, arXiv:2107.02027;
``groupbert.data.packing``): it is marked by ``segment_ids``, which the models read as such (block-diagonal
attention, GroupBERT's convolution cut at sequence edges, per-sequence pooler, NSP and span losses), while
``attention_mask`` keeps its usual 0/1 meaning in every row.
"""
from __future__ import annotations

IGNORE_INDEX = -100

#: One MLM + NSP sequence per row (T = data.seq_len, P = data.max_predictions).
MASKED_LM = {
    "input_ids": "[T] token ids, [PAD]-padded",
    "token_type_ids": "[T] 0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding",
    "attention_mask": "[T] 1 for real tokens, 0 for padding",
    "masked_lm_positions": "[P] positions of the masked tokens, ascending, padded with 0",
    "masked_lm_labels": f"[P] original token ids at those positions, padded with {IGNORE_INDEX}",
    "next_sentence_label": "scalar: 0 = B continues A, 1 = B is from a random document",
}

#: Packed MLM + NSP rows (P = masked-LM slots per row, S = data.max_sequences_per_pack).
PACKED_MASKED_LM = {
    "input_ids": "[T] the sequences' tokens one after another, [PAD]-padded",
    "token_type_ids": "[T] each sequence's own segment A/B ids, 0 for padding",
    "attention_mask": "[T] 1 for real tokens, 0 for padding",
    "segment_ids": "[T] sequence number 1..S of each token, 0 for padding: marks the row as packed",
    "position_ids": "[T] position within its own sequence (0 at each [CLS]), 0 for padding",
    "masked_lm_positions": "[P] row positions of all masked tokens, padded with 0",
    "masked_lm_labels": f"[P] their original ids, padded with {IGNORE_INDEX}",
    "cls_positions": "[S] row position of each sequence's [CLS], 0 in empty slots",
    "next_sentence_label": f"[S] each sequence's NSP label, {IGNORE_INDEX} in empty slots",
}

#: GPT-2: contiguous blocks of data.seq_len tokens; the model shifts the labels.
CAUSAL_LM = {
    "input_ids": "[T] a block of the token stream",
    "labels": "[T] the same ids (position t predicts token t + 1)",
}

#: SQuAD features (one window of question + context per row, or packed rows of several).
QUESTION_ANSWERING = {
    "input_ids": "[T] [CLS] question [SEP] context window [SEP], [PAD]-padded",
    "token_type_ids": "[T] 0 for the question part, 1 for the context and its [SEP]",
    "attention_mask": "[T] 1 for real tokens, 0 for padding",
    "start_positions": "scalar (packed: [S]) answer start in the row, 0 ([CLS]) when outside the window",
    "end_positions": "scalar (packed: [S]) answer end in the row",
    "segment_ids": "packed rows only: [T] feature number 1..S of each token, 0 for padding",
    "position_ids": "packed rows only: [T] position within its own feature",
}
