"""Pretraining accuracy counts, as (correct, scored) 0-dim float tensors kept on the device, so they can
be summed over micro-batches (and over an IPU host call) without a host sync."""
from __future__ import annotations

import torch

from groupbert.data.columns import IGNORE_INDEX


@torch.no_grad()
def masked_lm_correct(mlm_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct predictions and number of scored positions; labels of IGNORE_INDEX are skipped."""
    scored = labels != IGNORE_INDEX
    return ((mlm_logits.argmax(-1) == labels) & scored).sum().float(), scored.sum().float()


@torch.no_grad()
def next_sentence_correct(nsp_logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct predictions and number of sequences: labels [B], or [B, S] per packed sequence with
    IGNORE_INDEX in empty slots (so the count is the number of sequences either way)."""
    scored = labels != IGNORE_INDEX
    return ((nsp_logits.argmax(-1) == labels) & scored).sum().float(), scored.sum().float()


@torch.no_grad()
def next_token_correct(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal LM: position t predicts labels[t + 1]."""
    return masked_lm_correct(logits[:, :-1], labels[:, 1:])
