"""Schedules at their corners, against hand-computed values."""
import math

import pytest
import torch

from optimizers.schedules import build_schedule, lr_multiplier


def m(step, **kw):
    args = dict(name="linear", warmup_steps=10, total_steps=110)
    args.update(kw)
    return lr_multiplier(step, **args)


def test_linear_warmup_then_decay_to_zero():
    assert m(0) == pytest.approx(0.1)
    assert m(9) == pytest.approx(1.0)
    assert m(10) == pytest.approx(1.0)
    assert m(60) == pytest.approx(0.5)
    assert m(110) == pytest.approx(0.0)
    assert m(200) == pytest.approx(0.0)


def test_sqrt_warmup_polynomial_and_cosine():
    assert m(0, name="polynomial", warmup_power=0.5) == pytest.approx(math.sqrt(0.1))
    assert m(60, name="polynomial", decay_power=2.0) == pytest.approx(0.25)
    assert m(60, name="cosine") == pytest.approx(0.5)
    assert m(110, name="cosine", end_lr_ratio=0.1) == pytest.approx(0.1)
    assert m(35, name="constant") == 1.0


def test_zero_warmup_starts_at_peak():
    assert m(0, warmup_steps=0) == pytest.approx(1.0)
    assert m(0, warmup_steps=0, name="cosine") == pytest.approx(1.0)


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="linear, polynomial, cosine, constant"):
        m(0, name="exp")


def test_scheduler_positioned_for_resume():
    p = torch.nn.Parameter(torch.zeros(1))
    fresh = torch.optim.SGD([p], lr=1.0)
    s = build_schedule(fresh, name="linear", warmup_steps=10, total_steps=110)
    for _ in range(37):
        fresh.step()
        s.step()
    resumed = torch.optim.SGD([p], lr=1.0)
    build_schedule(resumed, name="linear", warmup_steps=10, total_steps=110, last_step=37)
    assert resumed.param_groups[0]["lr"] == pytest.approx(fresh.param_groups[0]["lr"])
    assert resumed.param_groups[0]["lr"] == pytest.approx(m(37))


def test_trapezoidal_warmup_constant_then_linear_cooldown_over_last_half():
    kw = dict(name="trapezoidal", warmup_steps=10, total_steps=100)
    assert lr_multiplier(4, **kw) == pytest.approx(0.5)
    assert lr_multiplier(10, **kw) == 1.0 and lr_multiplier(49, **kw) == 1.0
    assert lr_multiplier(50, **kw) == pytest.approx(1.0)
    assert lr_multiplier(75, **kw) == pytest.approx(0.5)
    assert lr_multiplier(100, **kw) == pytest.approx(0.0)
    assert lr_multiplier(90, **kw, cooldown_fraction=0.2) == pytest.approx(0.5)
    assert lr_multiplier(0, name="trapezoidal", warmup_steps=0, total_steps=100) == 1.0
