"""Extractive question answering (SQuAD): a span head on BERT or GroupBERT.

HF ``BertForQuestionAnswering`` names: the encoder under ``bert.`` without a pooler
(``add_pooling_layer=False``) and ``qa_outputs = Linear(hidden_size, 2)`` giving start and end logits;
the loss is the mean of the start and end cross-entropies (HF, google-research/bert ``run_squad.py``),
each a softmax over the positions of the feature's own tokens: padding is left out (HF and Google include
the padded positions; the logits and predictions are the same either way), which is what lets a packed
row of several features (``groupbert.data.packing``) give every feature exactly its unpacked loss. Packed
rows carry ``segment_ids`` numbering the features 1..S, ``position_ids``, and start/end positions [B, S]
within the row (-100 in empty slots).

Starting weights (a pretraining run, a Hugging Face BERT, the bundled MiniLM) are loaded by
``groupbert.training.initialize``.
"""
from __future__ import annotations

import logging
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from groupbert.config import ModelConfig
from groupbert.data.columns import IGNORE_INDEX
from groupbert.models.bert import BertModel
from groupbert.models.groupbert import GroupBertModel

logger = logging.getLogger(__name__)

ENCODERS = {"bert": BertModel, "groupbert": GroupBertModel}


class QAOutput(NamedTuple):
    loss: Optional[Tensor]   # (CE(start) + CE(end)) / 2 when positions are given
    start_logits: Tensor     # [B, T]
    end_logits: Tensor       # [B, T]


class BertForQuestionAnswering(nn.Module):
    """``bert`` (BertModel or GroupBertModel by ``config.type``, pooler removed) + ``qa_outputs``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.type not in ENCODERS:
            raise ValueError(f"model.type {config.type!r} has no QA model; use one of {sorted(ENCODERS)}")
        self.config = config
        self.bert = ENCODERS[config.type](config)
        self.bert.pooler = None  # unused by the span head, absent from HF QA checkpoints
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        std = config.initializer_range
        nn.init.trunc_normal_(self.qa_outputs.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, start_positions: Optional[Tensor] = None,
                end_positions: Optional[Tensor] = None, position_ids: Optional[Tensor] = None,
                segment_ids: Optional[Tensor] = None) -> QAOutput:
        """``segment_ids`` given = packed rows of several features (module docstring)."""
        h = self.bert(input_ids, token_type_ids, attention_mask, position_ids, segment_ids=segment_ids)[0]
        logits = self.qa_outputs(h)                       # B, T, 2
        start_logits, end_logits = logits.float().unbind(-1)  # B, T each
        loss = None
        if start_positions is not None and end_positions is not None:
            features = segment_ids if segment_ids is not None else (
                attention_mask if attention_mask is not None else torch.ones_like(input_ids))
            loss = (span_loss(start_logits, start_positions, features) +
                    span_loss(end_logits, end_positions, features)) / 2
        return QAOutput(loss, start_logits, end_logits)


def span_loss(logits: Tensor, positions: Tensor, sequence_ids: Tensor) -> Tensor:
    """Mean over features of the cross-entropy of ``positions`` under a softmax over each feature's own tokens.

    ``logits`` [B, T]; ``sequence_ids`` [B, T] the features' numbers 1..S (0 = padding; a 0/1 mask is S = 1);
    ``positions`` [B] (S = 1) or [B, S] row positions, -100 in empty slots. A position outside its feature
    (HF's out-of-range labels) is ignored, as HF ignores labels clamped to T.
    """
    B, T = logits.shape
    positions = positions.reshape(B, -1)                                   # B, S
    S = positions.shape[1]
    numbers = torch.arange(1, S + 1, device=logits.device)
    member = sequence_ids[:, None, :] == numbers[None, :, None]            # B, S, T
    # -1e9, not -inf: an empty slot's row stays finite (its label is ignored anyway)
    per_feature = logits[:, None, :].masked_fill(~member, -1e9)             # B, S, T
    inside = member.gather(2, positions.clamp(0, T - 1)[..., None]).squeeze(-1) & (positions >= 0) & (positions < T)
    labels = torch.where(inside, positions, torch.full_like(positions, IGNORE_INDEX))
    total = F.cross_entropy(per_feature.reshape(B * S, T), labels.reshape(-1), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / inside.sum().clamp(min=1)


GroupBertForQuestionAnswering = BertForQuestionAnswering  # same wrapper; the encoder follows model.type
