"""From ``OptimizerConfig`` to an optimizer over the model's parameter groups."""
from __future__ import annotations

import inspect

import torch

from groupbert.config import OptimizerConfig
from optimizers import param_groups
from optimizers.registry import create_optimizer, resolve

# config field -> constructor argument, passed only when set (null means "the optimizer's default")
OPTIONAL_KWARGS = {
    "beta1": "betas", "beta2": "betas", "eps": "eps", "bias_correction": "bias_correction",
    "max_weight_norm": "max_weight_norm", "nesterov": "nesterov",
    "inverse_bias_correction": "inverse_bias_correction", "scale": "scale", "per_row": "per_row",
    "update_norm_decay": "update_norm_decay", "zero_mean": "zero_mean",
}


def optimizer_kwargs(cfg: OptimizerConfig) -> dict:
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.beta1 is not None or cfg.beta2 is not None:
        cls, preset = resolve(cfg.name)
        default = preset.get("betas", inspect.signature(cls.__init__).parameters["betas"].default)
        kwargs["betas"] = (cfg.beta1 if cfg.beta1 is not None else default[0],
                           cfg.beta2 if cfg.beta2 is not None else default[1])
    for field_name, kwarg in OPTIONAL_KWARGS.items():
        value = getattr(cfg, field_name)
        if kwarg != "betas" and value is not None:
            kwargs[kwarg] = value
    return kwargs


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay, decay_embeddings=cfg.decay_embeddings,
                          rotational_embeddings=cfg.rotational_embeddings,
                          trust_ratio_vectors=cfg.trust_ratio_vectors)
    return create_optimizer(cfg.name, groups, **optimizer_kwargs(cfg))
