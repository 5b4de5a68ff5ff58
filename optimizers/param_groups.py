"""Parameter groups by rule: weight decay for matrices, none for biases, norms and 1-D parameters.

The rule is nanoGPT's ``p.dim() >= 2`` plus the name rule of Google's and NVIDIA's BERT optimizers
(``bias``, ``LayerNorm``/``norm`` weights excluded from decay).
"""
from __future__ import annotations

import torch.nn as nn

NO_DECAY = ("bias", "LayerNorm.weight", "norm.weight")


def param_groups(model: nn.Module, weight_decay: float, no_decay: tuple[str, ...] = NO_DECAY,
                 exclude_1d: bool = True) -> list[dict]:
    decay, no = [], []
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear once
            continue
        seen.add(id(p))
        exempt = any(name.endswith(s) for s in no_decay) or (exclude_1d and p.dim() < 2)
        (no if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "group": "decay"},
              {"params": no, "weight_decay": 0.0, "group": "no_decay"}]
    return [g for g in groups if g["params"]]
