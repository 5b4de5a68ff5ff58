"""Lion against hand-computed steps and a plain reference loop written here; foreach vs single-tensor;
Rosenbrock descent; state_dict round trip; argument checks."""
import copy
import inspect
import re

import pytest
import torch

from optimizers.lion import PRESETS, Lion

torch.set_num_threads(1)

FLAGS = [dict(), dict(inverse_bias_correction=True), dict(betas=(0.9, 0.9), nesterov=True),
         dict(betas=(0.98, 0.98), nesterov=True, inverse_bias_correction=True)]


def reference_lion(p0, grads, *, lr, betas=(0.9, 0.99), weight_decay=0.0, nesterov=False,
                   inverse_bias_correction=False):
    """Chen et al. 2023 Alg. 2 (+ Kosson et al. 2024 Nesterov / inverse bias correction), written out."""
    b1, b2 = betas
    p, m = p0.clone(), torch.zeros_like(p0)
    for t, g in enumerate(grads, start=1):
        if nesterov:
            m = b2 * m + (1 - b2) * g
            c = b1 * m + (1 - b1) * g
        else:
            c = b1 * m + (1 - b1) * g
            m = b2 * m + (1 - b2) * g
        f = 1 - b1 ** t if inverse_bias_correction else 1.0
        p = p * (1 - lr * weight_decay) - lr * f * torch.sign(c)
    return p


def run(opt_cls, p0, grads, **kw):
    p = torch.nn.Parameter(p0.clone())
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach()


def test_first_two_steps_by_hand():
    p0 = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=torch.float64)
    g1 = torch.tensor([0.3, -0.1, 0.0, 2.0], dtype=torch.float64)
    g2 = torch.tensor([-0.3, 0.05, 1.0, -0.001], dtype=torch.float64)
    # t=1: c = 0.1 g1 -> u = [1, -1, 0, 1]; p = 0.95 p0 - 0.1 u
    p1 = run(Lion, p0, [g1], lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(p1, torch.tensor([0.85, -1.8, 0.475, -0.1], dtype=torch.float64))
    # t=2: m1 = 0.01 g1; c = 0.9 m1 + 0.1 g2 = [-0.0273, 0.0041, 0.1, 0.0179] -> u = [-1, 1, 1, 1]
    p2 = run(Lion, p0, [g1, g2], lr=0.1, weight_decay=0.5)
    torch.testing.assert_close(p2, torch.tensor([0.9075, -1.81, 0.35125, -0.195], dtype=torch.float64))
    # inverse bias correction: steps scaled by 1 - 0.9 = 0.1 and 1 - 0.81 = 0.19
    p2 = run(Lion, p0, [g1, g2], lr=0.1, inverse_bias_correction=True)
    expected = p0 - 0.1 * 0.1 * torch.tensor([1.0, -1, 0, 1]) - 0.1 * 0.19 * torch.tensor([-1.0, 1, 1, 1])
    torch.testing.assert_close(p2, expected.double())


def test_nesterov_looks_ahead():
    # beta = 0.9, g1 = 1, g2 = -0.6.  Lion(0.9, 0.9): c2 = 0.09 g1 + 0.1 g2 = +0.03.
    # Nesterov: m2 = 0.09 g1 + 0.1 g2; c2 = 0.9 m2 + 0.1 g2 = 0.081 g1 + 0.19 g2 = -0.033.
    p0 = torch.zeros(1, dtype=torch.float64)
    grads = [torch.tensor([1.0], dtype=torch.float64), torch.tensor([-0.6], dtype=torch.float64)]
    plain = run(Lion, p0, grads, lr=1.0, betas=(0.9, 0.9))
    nest = run(Lion, p0, grads, lr=1.0, betas=(0.9, 0.9), nesterov=True)
    assert plain.item() == pytest.approx(-1.0 - 1.0)
    assert nest.item() == pytest.approx(-1.0 + 1.0)


@pytest.mark.parametrize("flags", FLAGS)
@pytest.mark.parametrize("foreach", [False, True])
def test_matches_reference(flags, foreach):
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(5, 7, generator=g, dtype=torch.float64)
    grads = [torch.randn(5, 7, generator=g, dtype=torch.float64) * 10 ** (i % 3) for i in range(12)]
    kw = dict(lr=3e-3, weight_decay=0.2, **flags)
    torch.testing.assert_close(run(Lion, p0, grads, foreach=foreach, **kw), reference_lion(p0, grads, **kw))


def _two_group_setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in [(4, 6), (6,), (3, 2, 5), (7,)]]
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(8)]
    return params, grads


def _groups(params, flags):
    return [{"params": params[:2], "weight_decay": 0.1},
            {"params": params[2:], "lr": 5e-3, "weight_decay": 0.0}]


def _train(params, grads, opt, skip_last_at=(2, 5)):
    for step, gs in enumerate(grads):
        for i, (p, g) in enumerate(zip(params, gs)):
            p.grad = None if (i == len(params) - 1 and step in skip_last_at) else g.clone()
        opt.step()


@pytest.mark.parametrize("flags", FLAGS)
def test_foreach_equals_single_tensor_with_groups_and_missing_grads(flags):
    results = []
    for foreach in (False, True):
        params, grads = _two_group_setup()
        opt = Lion(_groups(params, flags), lr=1e-2, foreach=foreach, **flags)
        _train(params, grads, opt)
        results.append([p.detach() for p in params])
        assert opt.state[params[-1]]["step"] == len(grads) - 2  # grad None: no step, no state change
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_param_groups_use_their_own_hyperparameters():
    params, grads = _two_group_setup()
    opt = Lion(_groups(params, {}), lr=1e-2)
    before = [p.detach().clone() for p in params]
    _train(params, grads[:1], opt, skip_last_at=())
    # first step: c = (1 - β1) g, so u = sign(g); θ = θ(1 - γλ) - γ u with each group's (γ, λ)
    for p, b0, g, (lr, wd) in zip(params, before, grads[0], [(1e-2, 0.1)] * 2 + [(5e-3, 0.0)] * 2):
        torch.testing.assert_close(p.detach(), b0 * (1 - lr * wd) - lr * torch.sign(g))


def rosenbrock(xy):
    x, y = xy
    return (1 - x) ** 2 + 100 * (y - x ** 2) ** 2


@pytest.mark.parametrize("preset", [None, *sorted(PRESETS)])
def test_rosenbrock_descends(preset):
    xy = torch.nn.Parameter(torch.tensor([1.5, 1.5]))
    opt = Lion([xy], lr=1e-2, **PRESETS.get(preset, {}))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 - t / 600)  # sign steps need a decaying lr
    start = rosenbrock(xy).item()
    for _ in range(600):
        opt.zero_grad()
        loss = rosenbrock(xy)
        loss.backward()
        opt.step()
        sched.step()
    assert rosenbrock(xy).item() < 1e-4 * start
    assert torch.dist(xy.detach(), torch.ones(2)).item() < 0.1


@pytest.mark.parametrize("flags", FLAGS)
def test_state_dict_round_trip(flags):
    params, grads = _two_group_setup()
    opt = Lion(_groups(params, flags), lr=1e-2, **flags)
    _train(params, grads[:4], opt)
    saved_params = [p.detach().clone() for p in params]
    saved_state = copy.deepcopy(opt.state_dict())
    _train(params, grads[4:], opt)

    fresh = [torch.nn.Parameter(p.clone()) for p in saved_params]
    opt2 = Lion(_groups(fresh, flags), lr=1e-2, **flags)
    opt2.load_state_dict(saved_state)
    _train(fresh, grads[4:], opt2)
    for a, b in zip(params, fresh):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-1.0), "lr"), (dict(betas=(1.0, 0.99)), "betas"),
    (dict(betas=(0.9, -0.1)), "betas"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(betas=(0.9, 0.99), nesterov=True), "nesterov"),
])
def test_invalid_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Lion([torch.nn.Parameter(torch.zeros(2))], **kwargs)


def test_sparse_grad_raises():
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.zeros(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        Lion([p]).step()


def test_closure_returns_loss():
    p = torch.nn.Parameter(torch.ones(2))
    opt = Lion([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(2.0)
    torch.testing.assert_close(p.detach(), torch.full((2,), 0.9))


def docstring_args(cls):
    args = cls.__doc__.split("Args:")[1]
    return re.findall(r"^\s{8}(\w+) \(", args, flags=re.M)


def test_docstring_args_match_signature():
    assert docstring_args(Lion) == list(inspect.signature(Lion.__init__).parameters)[1:]
