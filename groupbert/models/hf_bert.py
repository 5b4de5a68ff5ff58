"""Hugging Face's ``transformers.BertForPreTraining``, trained the way its examples train it: the MLM head
runs on every position of every row and the loss ignores the unmasked ones (``labels`` = -100 there).

``model.type: hf_bert`` is the baseline a user would pick instead of this application: the claims study
(``groupbert.experiments.time_to_quality``) puts it on the wall-clock axis beside our BERT, which runs the
MLM head only at the ``data.max_predictions`` masked positions (Graphcore's and NVIDIA's recipes do the
same). It takes our MLM + NSP batches unchanged: the masked positions and labels are scattered into the
full ``[B, T]`` label tensor Hugging Face's loss expects (``BertForPreTraining.forward``: cross-entropy
over ``prediction_logits.view(-1, V)`` with ``ignore_index=-100``, plus NSP). Packed rows are refused at
configuration time (Hugging Face's BERT has no per-sequence attention or pooler).

The weights are Hugging Face's own modules and initialisation (``BertPreTrainedModel._init_weights``), so
checkpoints of such a run hold its state dict under ``hf.``; there is no export for it (it is already the
Hugging Face model).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import Tensor, nn

from groupbert.config import ModelConfig
from groupbert.data.columns import IGNORE_INDEX
from groupbert.models.bert import PreTrainingOutput, gather_positions, to_hf_config


def full_sequence_labels(input_ids: Tensor, masked_lm_positions: Tensor, masked_lm_labels: Tensor) -> Tensor:
    """``[B, T]`` labels: the original token at each masked position, ``IGNORE_INDEX`` elsewhere. Padding
    slots (position 0, label ``IGNORE_INDEX``) write ``IGNORE_INDEX`` onto ``[CLS]``, which is never masked."""
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    return labels.scatter(1, masked_lm_positions, masked_lm_labels)


class HFBertForPreTraining(nn.Module):
    """``transformers.BertForPreTraining`` behind our pretraining model's ``forward`` and output."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        import transformers  # lazy: only this baseline needs it at training time

        self.config = config
        hf_config = to_hf_config(replace(config, type="bert"))
        self.hf = transformers.BertForPreTraining(hf_config)

    def forward(self, input_ids: Tensor, token_type_ids: Optional[Tensor] = None,
                attention_mask: Optional[Tensor] = None, masked_lm_positions: Optional[Tensor] = None,
                masked_lm_labels: Optional[Tensor] = None, next_sentence_label: Optional[Tensor] = None,
                position_ids: Optional[Tensor] = None, cls_positions: Optional[Tensor] = None,
                segment_ids: Optional[Tensor] = None) -> PreTrainingOutput:
        if segment_ids is not None or cls_positions is not None:
            raise ValueError("model.type hf_bert does not take packed rows (set data.packing: false)")
        labels = None
        if masked_lm_labels is not None:
            if masked_lm_positions is None:
                raise ValueError("hf_bert needs masked_lm_positions with masked_lm_labels")
            labels = full_sequence_labels(input_ids, masked_lm_positions, masked_lm_labels)
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      position_ids=position_ids)
        logits, nsp_logits = out.prediction_logits, out.seq_relationship_logits
        # Hugging Face's own loss (BertForPreTraining.forward): cross-entropy over all B x T logits with the
        # unmasked positions ignored, plus NSP; computed here so that each part is also in the records.
        mlm_loss = nsp_loss = None
        if labels is not None:
            mlm_loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                   ignore_index=IGNORE_INDEX)
        if next_sentence_label is not None:
            nsp_loss = nn.functional.cross_entropy(nsp_logits.float(), next_sentence_label.reshape(-1))
        parts = [x for x in (mlm_loss, nsp_loss) if x is not None]
        loss = sum(parts) if parts else None
        mlm_logits = logits if masked_lm_positions is None else gather_positions(logits, masked_lm_positions)
        return PreTrainingOutput(loss, mlm_loss, nsp_loss, mlm_logits, nsp_logits)
