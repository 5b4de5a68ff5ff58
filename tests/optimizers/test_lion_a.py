"""LionA: the update norm is exactly γ·s·√numel whatever the gradient's size or zeros; it is Lion when no
entry of the direction is zero; foreach vs single-tensor; Rosenbrock; state_dict; argument checks."""
import copy
import inspect
import math
import re

import pytest
import torch

from optimizers.lion import Lion
from optimizers.lion_a import PRESETS, LionA

torch.set_num_threads(1)

FLAGS = [dict(), dict(inverse_bias_correction=True), dict(betas=(0.98, 0.98), nesterov=True)]


def _grads(shape, steps, magnitude, zero_fraction, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) >= zero_fraction  # the same coordinates are zero at every step
    return [torch.randn(shape, generator=g, dtype=dtype) * magnitude * mask for _ in range(steps)]


@pytest.mark.parametrize("magnitude", [1e-6, 1.0, 1e6])
@pytest.mark.parametrize("zero_fraction", [0.0, 0.3])
@pytest.mark.parametrize("scale", [1.0, PRESETS["lion_a_adamw_rms"]["scale"]])
@pytest.mark.parametrize("foreach", [False, True])
def test_update_norm_is_exact(magnitude, zero_fraction, scale, foreach):
    lr, steps = 1e-3, 6
    shapes = [(8, 5), (13,), (2, 3, 4)]
    params = [torch.nn.Parameter(torch.randn(s, dtype=torch.float64)) for s in shapes]
    grads = [_grads(s, steps, magnitude, zero_fraction, seed=i) for i, s in enumerate(shapes)]
    opt = LionA(params, lr=lr, scale=scale, foreach=foreach)  # weight_decay=0: the step is the update
    for t in range(steps):
        before = [p.detach().clone() for p in params]
        for p, gs in zip(params, grads):
            p.grad = gs[t]
        opt.step()
        for p, b in zip(params, before):
            expected = lr * scale * math.sqrt(p.numel())
            assert torch.linalg.vector_norm(p.detach() - b).item() == pytest.approx(expected, rel=1e-6)


def test_inverse_bias_correction_scales_the_norm():
    lr, beta1 = 1e-2, 0.9
    p = torch.nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))
    opt = LionA([p], lr=lr, betas=(beta1, 0.99), inverse_bias_correction=True)
    for t, g in enumerate(_grads((6, 4), 4, 1.0, 0.25), start=1):
        before = p.detach().clone()
        p.grad = g
        opt.step()
        expected = lr * (1 - beta1 ** t) * math.sqrt(24)
        assert torch.linalg.vector_norm(p.detach() - before).item() == pytest.approx(expected, rel=1e-6)


def test_all_zero_gradient_gives_zero_update():
    p = torch.nn.Parameter(torch.ones(3, 3))
    p.grad = torch.zeros(3, 3)
    LionA([p], lr=0.1).step()
    assert torch.equal(p.detach(), torch.ones(3, 3))


@pytest.mark.parametrize("flags", FLAGS)
def test_equals_lion_without_zero_entries(flags):
    """No exact zeros in c and s = 1: LionA takes Lion's step, weight decay included."""
    grads = _grads((5, 6), 10, 1.0, 0.0)
    p0 = torch.randn(5, 6, dtype=torch.float64)
    outs = []
    for cls in (Lion, LionA):
        p = torch.nn.Parameter(p0.clone())
        opt = cls([p], lr=1e-2, weight_decay=0.3, **flags)
        for g in grads:
            p.grad = g.clone()
            opt.step()
        outs.append(p.detach())
    torch.testing.assert_close(outs[0], outs[1])


def test_exact_norm_off_is_lion_with_zeros_and_scale():
    grads = _grads((5, 6), 5, 1.0, 0.4)
    p0 = torch.randn(5, 6, dtype=torch.float64)
    a = torch.nn.Parameter(p0.clone())
    b = torch.nn.Parameter(p0.clone())
    opt_a = LionA([a], lr=2e-2, scale=0.5, exact_norm=False)
    opt_b = Lion([b], lr=1e-2)
    for g in grads:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a.detach(), b.detach())


def _setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in [(4, 6), (6,), (3, 2, 5), (7,)]]
    mask = (torch.arange(7) % 3 != 0).float()
    grads = [[torch.randn(p.shape, generator=g) for p in params[:3]] + [torch.randn(7, generator=g) * mask]
             for _ in range(8)]
    groups = [{"params": params[:2], "weight_decay": 0.1},
              {"params": params[2:], "lr": 5e-3, "scale": 0.3, "exact_norm": True}]
    return params, grads, groups


def _train(params, grads, opt):
    for step, gs in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = None if (i == 0 and step == 3) else g.clone()
        opt.step()


@pytest.mark.parametrize("flags", FLAGS)
def test_foreach_equals_single_tensor(flags):
    results = []
    for foreach in (False, True):
        params, grads, groups = _setup()
        _train(params, grads, LionA(groups, lr=1e-2, foreach=foreach, **flags))
        results.append([p.detach() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("flags", FLAGS)
def test_state_dict_round_trip(flags):
    params, grads, groups = _setup()
    opt = LionA(groups, lr=1e-2, **flags)
    _train(params, grads[:4], opt)
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    _train(params, grads[4:], opt)

    fresh, _, fresh_groups = _setup()
    with torch.no_grad():
        for p, s in zip(fresh, saved_params):
            p.copy_(s)
    opt2 = LionA(fresh_groups, lr=1e-2, **flags)
    opt2.load_state_dict(saved_state)
    _train(fresh, grads[4:], opt2)
    for a, b in zip(params, fresh):
        assert torch.equal(a, b)


@pytest.mark.parametrize("preset", [None, *sorted(PRESETS)])
def test_rosenbrock_descends(preset):
    xy = torch.nn.Parameter(torch.tensor([1.5, 1.5]))
    kw = dict(PRESETS.get(preset, {}))
    lr = 1e-2 / kw.get("scale", 1.0)  # same step length for every preset
    opt = LionA([xy], lr=lr, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / 600)
    start = ((1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2).item()
    for _ in range(600):
        opt.zero_grad()
        loss = (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2
        loss.backward()
        opt.step()
        sched.step()
    assert loss.item() < 1e-3 * start
    assert torch.dist(xy.detach(), torch.ones(2)).item() < 0.1


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(betas=(0.9, 1.0)), "betas"), (dict(weight_decay=-1e-3), "weight_decay"),
    (dict(scale=0.0), "scale"), (dict(scale=-1.0), "scale"), (dict(nesterov=True), "nesterov"),
])
def test_invalid_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LionA([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_presets_construct():
    for kw in PRESETS.values():
        LionA([torch.nn.Parameter(torch.zeros(2))], **kw)
    assert PRESETS["lion_a_adamw_rms"]["scale"] == pytest.approx(0.2294, abs=1e-4)


def test_docstring_args_match_signature():
    args = re.findall(r"^\s{8}(\w+) \(", LionA.__doc__.split("Args:")[1], flags=re.M)
    assert args == list(inspect.signature(LionA.__init__).parameters)[1:]
