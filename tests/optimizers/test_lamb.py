"""LAMB against a separate float64 implementation of each variant's equations (NVIDIA clip, PopTorch φ cap,
bias correction off, excluded groups, zero weights, zero gradients), plus hand-checked per-tensor ratios."""
import inspect
import io
import math
import re

import pytest
import torch

from optimizers.lamb import LAMB, PRESETS


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class ReferenceLAMB:
    """Plain per-tensor float64 LAMB, written from the equations (You et al. 2020 with bias correction;
    NVLAMB global clip; PopTorch φ = min(‖θ‖, max_weight_norm)). ``groups`` are dicts with a ``params``
    list and every hyperparameter spelled out."""

    def __init__(self, groups, max_grad_norm=None):
        self.groups = [dict(g, params=[p.detach().double().clone() for p in g["params"]]) for g in groups]
        self.max_grad_norm = max_grad_norm
        self.state = {}  # (group, index) -> [t, m, v]

    def step(self, grads):
        """``grads[g][i]`` is the gradient of ``groups[g]["params"][i]`` or None. Returns G."""
        flat = [gr.double() for group_grads in grads for gr in group_grads if gr is not None]
        total_norm = math.sqrt(sum(float((gr * gr).sum()) for gr in flat))
        clip = 1.0
        if self.max_grad_norm is not None:
            clip = max(1.0, total_norm / self.max_grad_norm)
        for gi, (group, group_grads) in enumerate(zip(self.groups, grads)):
            beta1, beta2 = group["betas"]
            for i, (p, grad) in enumerate(zip(group["params"], group_grads)):
                if grad is None:
                    continue
                g = grad.double() / clip
                t, m, v = self.state.get((gi, i), [0, torch.zeros_like(p), torch.zeros_like(p)])
                t += 1
                m = beta1 * m + (1 - beta1) * g
                v = beta2 * v + (1 - beta2) * g * g
                if group["bias_correction"]:
                    m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
                else:
                    m_hat, v_hat = m, v
                u = m_hat / (v_hat.sqrt() + group["eps"]) + group["weight_decay"] * p
                phi = float(p.norm())
                if group["max_weight_norm"] is not None:
                    phi = min(phi, group["max_weight_norm"])
                u_norm = float(u.norm())
                ratio = phi / u_norm if group["trust_ratio"] and phi > 0 and u_norm > 0 else 1.0
                group["params"][i] = p - group["lr"] * ratio * u
                self.state[(gi, i)] = [t, m, v]
        return total_norm


def _tensors(dtype):
    """Group 0 (trust ratio, decay): two matrices of very different norm, a zero matrix (φ = 0, r = 1
    at first), a vector whose gradient is always zero, one with grad None. Group 1 (excluded: no ratio,
    no decay, own lr/betas): a bias and a zero-gradient vector."""
    g = torch.Generator().manual_seed(0)
    group0 = [torch.randn(6, 5, generator=g, dtype=dtype) * 2.0,
              torch.randn(4, 7, generator=g, dtype=dtype) * 0.05,
              torch.zeros(3, 3, dtype=dtype), torch.randn(5, generator=g, dtype=dtype),
              torch.randn(2, 2, generator=g, dtype=dtype)]
    group1 = [torch.randn(7, generator=g, dtype=dtype) * 0.1, torch.randn(4, generator=g, dtype=dtype)]
    return [group0, group1]


ZERO_GRAD = {(0, 3), (1, 1)}
NO_GRAD = {(0, 4)}


def _grad_sequence(steps, grad_scale, dtype):
    g = torch.Generator().manual_seed(1)
    shapes = [[p.shape for p in group] for group in _tensors(dtype)]
    seq = []
    for _ in range(steps):
        grads = []
        for gi, group_shapes in enumerate(shapes):
            row = []
            for i, shape in enumerate(group_shapes):
                if (gi, i) in NO_GRAD:
                    row.append(None)
                elif (gi, i) in ZERO_GRAD:
                    row.append(torch.zeros(shape, dtype=dtype))
                else:
                    row.append(grad_scale * torch.randn(shape, generator=g, dtype=dtype))
            grads.append(row)
        seq.append(grads)
    return seq


# variant -> (LAMB kwargs, gradient scale)
VARIANTS = {
    "nvidia": (dict(PRESETS["lamb_nvidia"]), 10.0),  # G >> 1: the clip is active every step
    "poptorch": (dict(PRESETS["lamb_poptorch"], max_weight_norm=1.0), 1.0),  # caps the 2.0·randn matrix
    "poptorch_nobc": (dict(PRESETS["lamb_poptorch_nobc"], max_weight_norm=1.0), 1.0),
    "graphcore_groupbert": (dict(PRESETS["lamb_graphcore_groupbert"]), 1.0),
    "nvidia_clip_inactive": (dict(max_grad_norm=1e6), 1.0),
}
EXCLUDED = dict(trust_ratio=False, weight_decay=0.0, lr=3e-3, betas=(0.8, 0.99))


def _run_ours(kwargs, grad_scale, dtype, foreach, steps=20):
    tensors = _tensors(dtype)
    params = [[p.clone().requires_grad_() for p in group] for group in tensors]
    opt = LAMB([{"params": params[0]}, {"params": params[1], **EXCLUDED}], lr=1e-2, weight_decay=0.01,
               foreach=foreach, **kwargs)
    norms = []
    for grads in _grad_sequence(steps, grad_scale, dtype):
        for group, group_grads in zip(params, grads):
            for p, g in zip(group, group_grads):
                p.grad = g
        opt.step()
        norms.append(opt.last_grad_norm)
    return params, opt, norms


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_matches_float64_reference(variant, foreach):
    kwargs, grad_scale = VARIANTS[variant]
    params, opt, norms = _run_ours(kwargs, grad_scale, torch.float64, foreach)

    full = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, bias_correction=True,
                max_weight_norm=None, trust_ratio=True)
    full.update({k: v for k, v in kwargs.items() if k != "max_grad_norm"})
    tensors = _tensors(torch.float64)
    ref = ReferenceLAMB([dict(full, params=tensors[0]), dict(full, params=tensors[1], **EXCLUDED)],
                        max_grad_norm=kwargs.get("max_grad_norm"))
    ref_norms = [ref.step(grads) for grads in _grad_sequence(20, grad_scale, torch.float64)]

    for group, ref_group in zip(params, ref.groups):
        for p, e in zip(group, ref_group["params"]):
            torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12)
    if "max_grad_norm" in kwargs:
        assert norms == pytest.approx(ref_norms, rel=1e-12)
        if variant == "nvidia":
            assert min(ref_norms) > 2 * kwargs["max_grad_norm"]
    else:
        assert norms == [None] * 20
    if kwargs.get("max_weight_norm") == 1.0:  # the cap binds for one matrix and not the other
        w0, w1 = (float(p.norm()) for p in tensors[0][:2])
        assert w0 > 1.0 > w1
    assert params[0][4] not in opt.state and opt.state[params[0][0]]["step"].item() == 20.0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_foreach_matches_single_tensor(variant):
    kwargs, grad_scale = VARIANTS[variant]
    multi, multi_opt, multi_norms = _run_ours(kwargs, grad_scale, torch.float32, foreach=True)
    single, single_opt, single_norms = _run_ours(kwargs, grad_scale, torch.float32, foreach=False)
    assert multi_norms == pytest.approx(single_norms, rel=1e-6)
    for group, single_group in zip(multi, single):
        for p, q in zip(group, single_group):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
            for key in ("exp_avg", "exp_avg_sq"):
                if p in multi_opt.state:
                    torch.testing.assert_close(multi_opt.state[p][key], single_opt.state[q][key],
                                               rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("foreach", [True, False])
def test_trust_ratio_is_per_tensor(foreach):
    # First step with bias correction, ε -> 0 and no decay: u = m̂/√v̂ = sign(g), ‖u‖ = √n, so each
    # coordinate moves by lr·‖θ‖/√n: a different amount for each tensor.
    lr, small, big = 1e-2, torch.full((4, 4), 0.5, dtype=torch.float64), torch.full((9,), 3.0, dtype=torch.float64)
    params = [small.clone().requires_grad_(), big.clone().requires_grad_()]
    opt = LAMB(params, lr=lr, eps=1e-30, weight_decay=0.0, foreach=foreach)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(4, 4, generator=g, dtype=torch.float64),
             -torch.rand(9, generator=g, dtype=torch.float64) - 0.1]
    for p, grad in zip(params, grads):
        p.grad = grad
    opt.step()
    for p, start, grad, per_coordinate in zip(params, (small, big), grads, (0.5, 3.0)):  # ‖θ‖/√n = 2/4, 9/3
        assert float(start.norm()) / math.sqrt(start.numel()) == pytest.approx(per_coordinate)
        torch.testing.assert_close(p.detach(), start - lr * per_coordinate * grad.sign(), rtol=1e-12, atol=0.0)


def test_excluded_group_takes_a_plain_adam_step():
    lr = 1e-2
    p = torch.full((5,), 100.0, dtype=torch.float64, requires_grad=True)
    opt = LAMB([{"params": [p], "trust_ratio": False, "weight_decay": 0.0}], lr=lr, eps=1e-30)
    p.grad = torch.tensor([1.0, -2.0, 3.0, -4.0, 5.0], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), 100.0 - lr * p.grad.sign(), rtol=1e-12, atol=0.0)


def test_zero_max_weight_norm_gives_ratio_one():
    # φ = min(‖θ‖, 0) = 0 -> r = 1, the effect of Graphcore's `max_weight_norm: 0` bias group.
    p = torch.full((4,), 10.0, dtype=torch.float64, requires_grad=True)
    opt = LAMB([p], lr=1e-2, eps=1e-30, weight_decay=0.0, max_weight_norm=0.0)
    p.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((4,), 10.0 - 1e-2, dtype=torch.float64))


def test_clipping_leaves_grads_untouched():
    p = torch.ones(3, requires_grad=True)
    grad = torch.tensor([30.0, -40.0, 0.0])
    p.grad = grad.clone()
    opt = LAMB([p], **PRESETS["lamb_nvidia"])
    opt.step()
    assert torch.equal(p.grad, grad)
    assert opt.last_grad_norm == pytest.approx(50.0)


def _rosenbrock(xy):
    return (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("foreach", [True, False])
def test_rosenbrock_descent(preset, foreach):
    xy = torch.tensor([1.5, 1.5], requires_grad=True)
    solution = torch.ones(2)
    start_loss, start_dist = _rosenbrock(xy).item(), xy.detach().dist(solution).item()
    opt = LAMB([xy], lr=1e-2, weight_decay=0.0, foreach=foreach, **PRESETS[preset])
    for _ in range(300):
        opt.zero_grad()
        _rosenbrock(xy).backward()
        opt.step()
    assert _rosenbrock(xy).item() < 0.01 * start_loss
    assert xy.detach().dist(solution).item() < 0.5 * start_dist


def _mlp_steps(model, opt, inputs):
    for x in inputs:
        opt.zero_grad()
        (10 * model(x).pow(2).mean()).backward()  # large enough for the clip to act
        opt.step()


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip(foreach):
    torch.manual_seed(0)
    inputs = [torch.randn(8, 5) for _ in range(10)]

    def make():
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
        groups = [{"params": [model[0].weight, model[2].weight]},
                  {"params": [model[0].bias, model[2].bias], "weight_decay": 0.0, "trust_ratio": False}]
        return model, LAMB(groups, lr=1e-2, max_grad_norm=0.5, max_weight_norm=2.0, foreach=foreach)

    model, opt = make()
    _mlp_steps(model, opt, inputs[:4])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    _mlp_steps(model, opt, inputs[4:])
    assert opt.last_grad_norm > 0.5

    buf.seek(0)
    saved = torch.load(buf)
    resumed_model, resumed_opt = make()
    resumed_model.load_state_dict(saved["model"])
    resumed_opt.load_state_dict(saved["opt"])
    assert resumed_opt.param_groups[1]["trust_ratio"] is False
    _mlp_steps(resumed_model, resumed_opt, inputs[4:])
    assert resumed_opt.last_grad_norm == opt.last_grad_norm
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg"], resumed_opt.state[b]["exp_avg"])
        assert resumed_opt.state[b]["step"].dtype == torch.float32


def test_presets_are_plain_constructor_kwargs():
    for name, kwargs in PRESETS.items():
        opt = LAMB([torch.nn.Parameter(torch.ones(2))], **kwargs)
        assert all(opt.defaults[k] == v for k, v in kwargs.items()), name


def test_sparse_grad_rejected():
    p = torch.ones(3, requires_grad=True)
    p.grad = torch.ones(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        LAMB([p]).step()


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=0.0), "lr"), (dict(lr=-1e-3), "lr"),
    (dict(betas=(1.0, 0.999)), "betas"), (dict(betas=(0.9, -0.1)), "betas"),
    (dict(eps=0.0), "eps"), (dict(weight_decay=-0.1), "weight_decay"),
    (dict(max_grad_norm=0.0), "max_grad_norm"), (dict(max_weight_norm=-1.0), "max_weight_norm"),
    (dict(trust_ratio="no"), "trust_ratio"), (dict(bias_correction=None), "bias_correction"),
])
def test_invalid_hyperparameters_name_the_argument(kwargs, name):
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match=rf"Invalid {name}"):
        LAMB([p], **kwargs)
    if name != "max_grad_norm":
        with pytest.raises(ValueError, match=rf"Invalid {name}"):  # a group override is checked too
            LAMB([{"params": [p], **kwargs}])


def test_max_grad_norm_is_global_not_per_group():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="max_grad_norm"):
        LAMB([{"params": [p], "max_grad_norm": 2.0}], max_grad_norm=1.0)


def test_docstring_args_match_signature():
    doc_args = re.findall(r"^ {8}(\w+):", LAMB.__doc__.split("Args:")[1], flags=re.M)
    assert doc_args == list(inspect.signature(LAMB.__init__).parameters)[1:]
