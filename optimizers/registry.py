"""Optimizer names for configs: the classes, their paper-grounded presets, and one constructor.

A preset is a base class plus keyword arguments (data, not subclasses); explicit config values win
over a preset's. ``create_optimizer`` checks every keyword against the class's signature so a setting
that the chosen optimizer does not have is an error, not silently ignored.
"""
from __future__ import annotations

import inspect

import torch

from optimizers import adamw, lamb, lion, lion_a, lion_ar

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": adamw.AdamW, "lamb": lamb.LAMB, "lion": lion.Lion, "lion_a": lion_a.LionA, "lion_ar": lion_ar.LionAR,
}

PRESETS: dict[str, tuple[type[torch.optim.Optimizer], dict]] = {
    # AdamW without momentum bias correction (Kosson et al. 2024, §"AdamW" ablation)
    "adamw_nobc": (adamw.AdamW, {"bias_correction": False}),
}
for _module, _cls in ((adamw, adamw.AdamW), (lamb, lamb.LAMB), (lion, lion.Lion), (lion_a, lion_a.LionA),
                      (lion_ar, lion_ar.LionAR)):
    for _name, _kwargs in getattr(_module, "PRESETS", {}).items():
        PRESETS[_name] = (_cls, dict(_kwargs))


def optimizer_names() -> list[str]:
    return sorted(OPTIMIZERS) + sorted(PRESETS)


def resolve(name: str) -> tuple[type[torch.optim.Optimizer], dict]:
    if name in OPTIMIZERS:
        return OPTIMIZERS[name], {}
    if name in PRESETS:
        cls, kwargs = PRESETS[name]
        return cls, dict(kwargs)
    raise ValueError(f"unknown optimizer '{name}'; valid: {', '.join(optimizer_names())}")


def accepted_arguments(name: str) -> set[str]:
    cls, _ = resolve(name)
    return set(inspect.signature(cls.__init__).parameters) - {"self", "params"}


def create_optimizer(name: str, params, **kwargs) -> torch.optim.Optimizer:
    """``name`` is an optimizer or a preset; ``kwargs`` override the preset's values."""
    cls, merged = resolve(name)
    unknown = set(kwargs) - accepted_arguments(name)
    if unknown:
        raise ValueError(f"optimizer '{name}' ({cls.__name__}) has no argument(s) {sorted(unknown)}")
    merged.update(kwargs)
    return cls(params, **merged)
