"""Pretraining metrics: masked-LM and next-sentence accuracy, as (correct, count) pairs to sum over batches."""
from __future__ import annotations

import torch

IGNORE_INDEX = -100


@torch.no_grad()
def masked_lm_correct(mlm_logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """Correct predictions and number of scored positions; labels of IGNORE_INDEX are skipped."""
    scored = labels != IGNORE_INDEX
    correct = (mlm_logits.argmax(-1) == labels) & scored
    return int(correct.sum()), int(scored.sum())


@torch.no_grad()
def next_sentence_correct(nsp_logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    return int((nsp_logits.argmax(-1) == labels).sum()), int(labels.numel())
