"""LionAR: fixed row norms, exact angular steps arctan(η_r), the equilibrium formula against a hand-computed
number, plain Lion for non-rotational tensors, foreach vs single-tensor, state_dict, a small classification
task, argument checks."""
import copy
import inspect
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from optimizers.lion import Lion
from optimizers.lion_ar import PRESETS, LionAR, lion_equilibrium_angular_update
from optimizers.param_groups import param_groups

torch.set_num_threads(1)

SHAPES = [(6, 9), (4, 3, 2), (11, 5)]


def _rows(x, per_row):
    return x.reshape(x.shape[0], -1) if per_row else x.reshape(1, -1)


def _row_norms(x, per_row):
    return torch.linalg.vector_norm(_rows(x, per_row), dim=1)


def _row_angles(a, b, per_row):
    """Angle between matching rows of a and b: atan2(|b_perp|, b_par), well conditioned for small angles."""
    a, b = _rows(a, per_row), _rows(b, per_row)
    a_hat = a / torch.linalg.vector_norm(a, dim=1, keepdim=True)
    par = (a_hat * b).sum(dim=1)
    perp = torch.linalg.vector_norm(b - par[:, None] * a_hat, dim=1)
    return torch.atan2(perp, par)


def _matrices(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in SHAPES]


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 10.0 ** (seed % 5 - 2)


# (c) ------------------------------------------------------------------------------------------------------

def test_equilibrium_formula_hand_computed():
    # lr 1e-3, λ 0.1, β = (0.9, 0.99):
    #   (1-β1)² + β1²(1-β2)/(1+β2) = 0.01 + 0.81·0.01/1.99 = 0.0140703518
    #   η_r = √(π/2) · √(2e-4) · √0.0140703518 = 1.2533141 · 0.0141421356 · 0.1186185 = 0.0021024584
    assert lion_equilibrium_angular_update(1e-3, 0.1, 0.9, 0.99) == pytest.approx(0.0021024584, rel=1e-8)
    # Nesterov, β = 0.98 ≡ Lion with (β², β) = (0.9604, 0.98):
    #   0.0396² + 0.9604²·0.02/1.98 = 0.00156816 + 0.00931685 = 0.01088501
    #   η_r(lr 6e-4, λ 0.1) = 1.2533141 · √1.2e-4 · √0.01088501
    #                       = 1.2533141 · 0.0109544512 · 0.1043312 = 0.0014324022
    assert lion_equilibrium_angular_update(6e-4, 0.1, 0.98, 0.98, nesterov=True) == pytest.approx(
        0.0014324022, rel=1e-8)
    # η_r ∝ √(γλ): a linear lr warmup is a square-root ramp of the angle
    assert lion_equilibrium_angular_update(4e-3, 0.1, 0.9, 0.99) == pytest.approx(2 * 0.0021024584, rel=1e-8)


# (a) ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("update_norm_decay", [0.0, 0.9])
@pytest.mark.parametrize("zero_mean", [False, True])
@pytest.mark.parametrize("foreach", [False, True])
def test_norms_stay_at_initial_value(per_row, update_norm_decay, zero_mean, foreach):
    params = _matrices()
    initial = [_row_norms(p.detach(), per_row) for p in params]
    opt = LionAR(params, lr=3e-2, per_row=per_row, update_norm_decay=update_norm_decay, zero_mean=zero_mean,
                 foreach=foreach)
    for t in range(8):
        _set_grads(params, t)
        opt.step()
        for p, r0 in zip(params, initial):
            torch.testing.assert_close(_row_norms(p.detach(), per_row), r0, rtol=1e-6, atol=0)
            if zero_mean:
                means = _rows(p.detach(), per_row).mean(dim=1)
                assert means.abs().max().item() < 1e-6 * r0.max().item()


# (b) ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_row", [True, False])
@pytest.mark.parametrize("flags", [dict(), dict(inverse_bias_correction=True),
                                   dict(betas=(0.98, 0.98), nesterov=True, inverse_bias_correction=True)])
def test_angle_per_step_is_arctan_eta_r(per_row, flags):
    """The step is orthogonal to w and has length η_r‖w₀‖, then the norm is restored to ‖w₀‖, so
    tan(angle) = η_r‖w₀‖ / ‖w₀‖ = η_r exactly (times 1 - β1^t with the inverse bias correction)."""
    params = _matrices(torch.float64)
    opt = LionAR(params, lr=1e-3, weight_decay=0.1, per_row=per_row, **flags)
    beta1, beta2 = opt.defaults["betas"]
    schedule = [1e-4, 1e-3, 1e-2, 3e-2, 1e-3, 0.0]  # the scheduled lr sets η_r at each step
    for t, lr in enumerate(schedule, start=1):
        for group in opt.param_groups:
            group["lr"] = lr
        before = [p.detach().clone() for p in params]
        _set_grads(params, t)
        opt.step()
        eta_r = lion_equilibrium_angular_update(lr, 0.1, beta1, beta2, nesterov=flags.get("nesterov", False))
        if flags.get("inverse_bias_correction"):
            eta_r *= 1 - beta1 ** t
        for p, b in zip(params, before):
            angles = _row_angles(b, p.detach(), per_row)
            torch.testing.assert_close(angles, torch.full_like(angles, math.atan(eta_r)), rtol=1e-5, atol=1e-12)


def test_update_norm_ema_averages_the_angle():
    """With ρ > 0 the step is u_perp / n̂ with n̂ an EMA, so single angles vary but stay near arctan(η_r)."""
    params = _matrices(torch.float64)
    opt = LionAR(params, lr=1e-3, update_norm_decay=0.9)
    eta_r = lion_equilibrium_angular_update(1e-3, 0.1, 0.9, 0.99)
    angles = []
    for t in range(20):
        before = [p.detach().clone() for p in params]
        _set_grads(params, t)
        opt.step()
        angles += [_row_angles(b, p.detach(), True) for p, b in zip(params, before)]
    angles = torch.cat(angles)
    assert angles.mean().item() == pytest.approx(math.atan(eta_r), rel=0.1)
    assert angles.std().item() > 0.0


# (d) ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [dict(), dict(betas=(0.98, 0.98), nesterov=True, inverse_bias_correction=True)])
@pytest.mark.parametrize("foreach", [False, True])
def test_non_rotational_tensors_take_plain_lion_steps(flags, foreach):
    g = torch.Generator().manual_seed(3)
    w_plain, bias, w_rot = (nn.Parameter(torch.randn(s, generator=g)) for s in [(5, 4), (5,), (3, 4)])
    twins = [nn.Parameter(p.detach().clone()) for p in (w_plain, bias)]
    opt = LionAR([{"params": [w_plain], "rotational": False, "weight_decay": 0.2},
                  {"params": [bias], "weight_decay": 0.0},
                  {"params": [w_rot]}], lr=1e-2, foreach=foreach, **flags)
    ref = Lion([{"params": [twins[0]], "weight_decay": 0.2}, {"params": [twins[1]], "weight_decay": 0.0}],
               lr=1e-2, **flags)
    r0 = _row_norms(w_rot.detach(), True)
    for t in range(6):
        _set_grads([w_plain, bias, w_rot], t)
        for twin, p in zip(twins, (w_plain, bias)):
            twin.grad = p.grad.clone()
        opt.step()
        ref.step()
    for twin, p in zip(twins, (w_plain, bias)):
        torch.testing.assert_close(p.detach(), twin.detach(), rtol=0, atol=0)
    torch.testing.assert_close(_row_norms(w_rot.detach(), True), r0, rtol=1e-6, atol=0)  # rotated, no decay
    assert "init_norm" in opt.state[w_rot] and "init_norm" not in opt.state[w_plain]


# (e) ------------------------------------------------------------------------------------------------------

def _mixed_setup(seed=0, **group_flags):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=g)) for s in [(6, 5), (5,), (4, 2, 3), (3, 7), (7,)]]
    groups = [{"params": params[:3], "weight_decay": 0.1},
              {"params": params[3:], "lr": 3e-3, "weight_decay": 0.05, **group_flags}]
    return params, groups


def _train(params, opt, steps):
    for t in steps:
        _set_grads(params, t)
        if t == 2:
            params[0].grad = None  # skipped: no state change for that tensor
        opt.step()


CONFIGS = [dict(), dict(per_row=False), dict(update_norm_decay=0.9, zero_mean=True),
           dict(betas=(0.98, 0.98), nesterov=True, inverse_bias_correction=True),
           dict(inverse_bias_correction=True, per_row=False, update_norm_decay=0.5)]


@pytest.mark.parametrize("config", CONFIGS)
def test_foreach_equals_single_tensor(config):
    results = []
    for foreach in (False, True):
        params, groups = _mixed_setup(**{"per_row": not config.get("per_row", True)})
        opt = LionAR(groups, lr=1e-2, foreach=foreach, **config)
        _train(params, opt, range(7))
        results.append([p.detach() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# (f) ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", CONFIGS)
def test_state_dict_round_trip(config):
    params, groups = _mixed_setup()
    opt = LionAR(groups, lr=1e-2, **config)
    _train(params, opt, range(4))
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    _train(params, opt, range(4, 8))

    fresh, fresh_groups = _mixed_setup()
    with torch.no_grad():
        for p, s in zip(fresh, saved_params):
            p.copy_(s)
    opt2 = LionAR(fresh_groups, lr=1e-2, **config)
    opt2.load_state_dict(saved_state)
    _train(fresh, opt2, range(4, 8))
    for a, b in zip(params, fresh):
        assert torch.equal(a, b)


# (g) ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", [None, *sorted(PRESETS)])
def test_small_classification_loss_decreases(preset):
    torch.manual_seed(0)
    centers = torch.randn(3, 8) * 2.0
    y = torch.arange(3).repeat_interleave(40)
    x = centers[y] + torch.randn(120, 8)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = LionAR(param_groups(model, weight_decay=0.1), lr=2e-2, **PRESETS.get(preset, {}))
    losses = []
    for _ in range(120):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
    assert (model(x).argmax(dim=1) == y).float().mean().item() > 0.95


# (h) ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"), (dict(betas=(1.0, 0.99)), "betas"),
    (dict(betas=(0.9, 1.5)), "betas"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(update_norm_decay=1.0), "update_norm_decay"), (dict(update_norm_decay=-0.1), "update_norm_decay"),
    (dict(betas=(0.9, 0.98), nesterov=True), "nesterov"),
    (dict(weight_decay=0.0), "weight_decay"),  # rotational matrix with λ = 0 would never move
])
def test_invalid_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LionAR([nn.Parameter(torch.zeros(3, 2))], **kwargs)


def test_invalid_group_values_raise():
    w = nn.Parameter(torch.ones(3, 2))
    with pytest.raises(ValueError, match="betas"):
        LionAR([{"params": [w], "betas": (0.9, 1.0)}])
    with pytest.raises(ValueError, match="weight_decay"):
        LionAR([{"params": [w], "weight_decay": 0.0}])


def test_zero_weight_decay_allowed_where_nothing_rotates():
    LionAR([nn.Parameter(torch.zeros(4))], weight_decay=0.0)
    LionAR([{"params": [nn.Parameter(torch.ones(3, 2))], "rotational": False}], weight_decay=0.0)


def test_zero_rows_stay_zero_without_nans():
    w = nn.Parameter(torch.randn(4, 5))
    with torch.no_grad():
        w[1] = 0.0
    opt = LionAR([w], lr=1e-2)
    for t in range(3):
        _set_grads([w], t)
        opt.step()
    assert torch.isfinite(w).all() and torch.equal(w[1].detach(), torch.zeros(5))


def test_docstring_args_match_signature():
    args = re.findall(r"^\s{8}(\w+) \(", LionAR.__doc__.split("Args:")[1], flags=re.M)
    assert args == list(inspect.signature(LionAR.__init__).parameters)[1:]
