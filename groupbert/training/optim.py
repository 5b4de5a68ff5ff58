"""From ``OptimizerConfig`` to an optimizer over the model's parameter groups (host path; the IPU path's
PopTorch optimizer is ``groupbert.ipu.options.build_ipu_optimizer``)."""
from __future__ import annotations

import torch

from groupbert.config import OptimizerConfig, optimizer_kwargs
from optimizers import param_groups
from optimizers.registry import create_optimizer


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, decay_embeddings=cfg.decay_embeddings,
                          rotational_embeddings=cfg.rotational_embeddings,
                          trust_ratio_vectors=cfg.trust_ratio_vectors)
    return create_optimizer(cfg.name, groups, **optimizer_kwargs(cfg))
