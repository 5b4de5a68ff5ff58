"""Learning-rate schedules as multipliers of the peak rate, wrapped in ``torch.optim.lr_scheduler.LambdaLR``.

Every schedule has a warmup of ``warmup_steps`` (0 allowed) followed by a decay to
``end_lr_ratio · lr`` at ``total_steps``:

    warmup (t < W):  m(t) = ((t + 1) / W) ** warmup_power
    decay  (t >= W): p = (t - W) / max(1, T - W)
        linear:      m = 1 - (1 - e) p
        polynomial:  m = e + (1 - e) (1 - p) ** decay_power
        cosine:      m = e + (1 - e) (1 + cos(pi p)) / 2
        constant:    m = 1
        trapezoidal: m = 1 until the cooldown, then linear to e over the last ``cooldown_fraction``
                     of the run (Kosson et al. 2024's schedule: warmup, constant, 50 % linear cooldown)

``warmup_power = 0.5`` is the square-root warmup of Graphcore's GroupBERT recipe (optimum-graphcore
``--groupbert_schedule``; TF1 configs ``lr_power [0.5, 1]``). Step ``t`` counts optimizer updates from 0,
so the first update already uses a non-zero rate.
"""
from __future__ import annotations

import math
from functools import partial

import torch

SCHEDULES = ("linear", "polynomial", "cosine", "constant", "trapezoidal")


def lr_multiplier(step: int, *, name: str, warmup_steps: int, total_steps: int,
                  warmup_power: float = 1.0, decay_power: float = 1.0, end_lr_ratio: float = 0.0,
                  cooldown_fraction: float = 0.5) -> float:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule '{name}'; valid: {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return ((step + 1) / warmup_steps) ** warmup_power
    if name == "constant":
        return 1.0
    if name == "trapezoidal":
        cooldown = max(1, int(round(cooldown_fraction * total_steps)))
        start = max(warmup_steps, total_steps - cooldown)
        if step < start:
            return 1.0
        q = min(1.0, (step - start) / max(1, total_steps - start))
        return 1.0 - (1.0 - end_lr_ratio) * q
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    e = end_lr_ratio
    if name == "linear":
        return 1.0 - (1.0 - e) * p
    if name == "polynomial":
        return e + (1.0 - e) * (1.0 - p) ** decay_power
    return e + (1.0 - e) * 0.5 * (1.0 + math.cos(math.pi * p))


def build_schedule(optimizer: torch.optim.Optimizer, *, name: str, warmup_steps: int, total_steps: int,
                   warmup_power: float = 1.0, decay_power: float = 1.0, end_lr_ratio: float = 0.0,
                   cooldown_fraction: float = 0.5, last_step: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR positioned so that the next ``optimizer.step()`` uses the rate of update ``last_step``."""
    fn = partial(lr_multiplier, name=name, warmup_steps=warmup_steps, total_steps=total_steps,
                 warmup_power=warmup_power, decay_power=decay_power, end_lr_ratio=end_lr_ratio,
                 cooldown_fraction=cooldown_fraction)
    fn(0)  # validates the name before training starts
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    # last_epoch = last_step - 1: the constructor's own step lands on last_step.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn, last_epoch=last_step - 1)
