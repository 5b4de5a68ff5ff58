"""poptorch.optim on the emulator: PopART's update equations against independent references (float64
loops of the equations in graphcore/popart:willow/include/popart/adam.hpp, torch's own optimizers), the
setOptimizer semantics, and a trainingModel equivalence test."""
import math

import pytest
import torch

from groupbert.ipu import emulator as poptorch
from groupbert.ipu.emulator import optim as emu_optim

torch.set_num_threads(1)


def _params_and_grads(steps=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(5, 3, generator=g), torch.randn(3, generator=g), torch.zeros(4)]
    grads = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(steps)]
    return params, grads


def _run(make_opt, params, grads):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = make_opt(ps)
    snap = emu_optim.snapshot_hyperparameters(opt)
    for gs in grads:
        for p, gr in zip(ps, gs):
            p.grad = gr.clone()
        emu_optim.apply_update(opt, snap)
    return [p.detach() for p in ps], opt


def _popart_reference(params, grads, groups, *, bias_correction=True, lamb=False, l2=False):
    """float64 loop of PopART's Adam/AdamW/LAMB update; ``groups[i]`` = hyperparameters of params[i]."""
    ws = [p.double().clone() for p in params]
    ms = [torch.zeros_like(w) for w in ws]
    vs = [torch.zeros_like(w) for w in ws]
    for t, gs in enumerate(grads, start=1):
        for i, (w, g) in enumerate(zip(ws, gs)):
            h = groups[i]
            g = g.double()
            b1, b2 = h["betas"]
            if l2:
                g = g + h["weight_decay"] * w
            ms[i] = b1 * ms[i] + (1 - b1) * g
            vs[i] = b2 * vs[i] + (1 - b2) * g * g
            mc, vc = (ms[i] / (1 - b1 ** t), vs[i] / (1 - b2 ** t)) if bias_correction else (ms[i], vs[i])
            u = mc / (vc.sqrt() + h["eps"])
            if not l2:
                u = u + h["weight_decay"] * w
            ratio = 1.0
            if lamb:
                phi = min(w.norm().item(), h["max_weight_norm"])
                r2 = u.norm().item()
                ratio = 1.0 if phi == 0 or r2 == 0 else phi / r2
            ws[i] = w - h["lr"] * ratio * u
    return ws


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adamw_matches_popart_equations_and_torch(bias_correction):
    """AdamW is bias-corrected on the IPU even with ``bias_correction=False``: PopTorch makes it the type
    ADAMW_NO_BIAS, which graphcore/poptorch:popart_compiler/source/CompilerImpl.cpp
    (``CompilerImpl::getPopartOptimizer``) maps to ``AdamMode::Adam`` (only LAMB has a no-bias mode)."""
    params, grads = _params_and_grads()
    h = dict(lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.1)
    got, opt = _run(lambda ps: poptorch.optim.AdamW(ps, bias_correction=bias_correction, **h), params, grads)
    ref = _popart_reference(params, grads, [h] * 3, bias_correction=True)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    assert float(opt.state[opt.param_groups[0]["params"][0]]["step"]) == len(grads)
    # PopART's decay inside u equals torch's decoupled decay, exactly in real arithmetic
    torch_got, _ = _run_torch(lambda ps: torch.optim.AdamW(ps, **h), params, grads)
    for a, b in zip(got, torch_got):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _run_torch(make_opt, params, grads):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = make_opt(ps)
    for gs in grads:
        for p, gr in zip(ps, gs):
            p.grad = gr.clone()
        opt.step()
    return [p.detach() for p in ps], opt


def test_adam_is_l2_and_sgd_matches_torch():
    params, grads = _params_and_grads()
    h = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05)
    got, _ = _run(lambda ps: poptorch.optim.Adam(ps, **h), params, grads)
    ref = _popart_reference(params, grads, [h] * 3, l2=True)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
    for kwargs in (dict(momentum=0.9), dict(momentum=0.9, nesterov=True, weight_decay=0.01),
                   dict(momentum=0.5, dampening=0.1), dict()):
        got, _ = _run(lambda ps, kw=kwargs: poptorch.optim.SGD(ps, lr=0.1, **kw), params, grads)
        ref, _ = _run_torch(lambda ps, kw=kwargs: torch.optim.SGD(ps, lr=0.1, **kw), params, grads)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("bias_correction", [True, False])
def test_lamb_matches_float64_loop_with_groups(bias_correction):
    params, grads = _params_and_grads(steps=6, seed=1)
    weight_group = dict(lr=0.02, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, max_weight_norm=65500.0)
    capped_group = dict(weight_group, max_weight_norm=0.5, lr=0.05)
    bias_group = dict(weight_group, weight_decay=0.0, max_weight_norm=0.0)  # graphcore BERT's bias group

    def make(ps):
        return poptorch.optim.LAMB([{"params": [ps[0]]},
                                    {"params": [ps[1]], "max_weight_norm": 0.0, "weight_decay": 0.0},
                                    {"params": [ps[2]], "max_weight_norm": 0.5, "lr": 0.05}],
                                   lr=0.02, eps=1e-6, weight_decay=0.01, bias_correction=bias_correction)

    got, opt = _run(make, params, grads)
    assert opt.max_weight_norm == 65500.0 and opt.defaults["weight_decay"] == 0.01
    ref = _popart_reference(params, grads, [weight_group, bias_group, capped_group],
                            bias_correction=bias_correction, lamb=True)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_lamb_with_max_weight_norm_zero_is_adamw():
    params, grads = _params_and_grads(seed=2)
    h = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01)
    lamb, _ = _run(lambda ps: poptorch.optim.LAMB(ps, max_weight_norm=0.0, **h), params, grads)
    adamw, _ = _run(lambda ps: poptorch.optim.AdamW(ps, **h), params, grads)
    for a, b in zip(lamb, adamw):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    host, _ = _run_torch(lambda ps: poptorch.optim.LAMB(ps, max_weight_norm=0.0, **h), params, grads)
    for a, b in zip(host, adamw):  # the host step() runs the same equations
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_poptorch_optimizer_signatures_and_attributes():
    p = [torch.nn.Parameter(torch.zeros(2))]
    adamw = poptorch.optim.AdamW(p, lr=1e-3, loss_scaling=128.0, bias_correction=False, max_grad_norm=1.0,
                                 accum_type=torch.float16)
    assert isinstance(adamw, torch.optim.AdamW)
    assert (adamw.loss_scaling, adamw.bias_correction, adamw.max_grad_norm) == (128.0, False, 1.0)
    assert adamw.accum_type == torch.float16 and adamw.first_order_momentum_accum_type == torch.float32
    lamb = poptorch.optim.LAMB(p)
    assert isinstance(lamb, torch.optim.Optimizer) and not hasattr(lamb, "max_grad_norm")
    lamb.variable_attrs.markAsConstant("max_weight_norm")
    assert lamb.variable_attrs.isConstant("max_weight_norm")
    import copy
    assert copy.deepcopy(adamw).loss_scaling == 128.0
    with pytest.raises(AssertionError, match="Accumulation types"):
        poptorch.optim.Adam(p, accum_type=torch.int32)
    with pytest.raises(poptorch.Error, match="Unsupported optimizer type"):
        poptorch.trainingModel(torch.nn.Linear(1, 1), optimizer=torch.optim.Adagrad(p))


class Regression(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, x, y):
        out = self.net(x)
        return out, torch.nn.functional.mse_loss(out, y)


def test_set_optimizer_is_needed_for_host_changes():
    torch.manual_seed(0)
    model = Regression()
    opt = poptorch.optim.SGD(model.parameters(), lr=0.1)
    pm = poptorch.trainingModel(model, optimizer=opt)
    x, y = torch.randn(2, 4), torch.randn(2, 1)
    pm(x, y)
    for group in opt.param_groups:
        group["lr"] = 0.0  # e.g. an LR scheduler step on the host
    before = [p.detach().clone() for p in model.parameters()]
    pm(x, y)  # the device still has lr 0.1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    pm.setOptimizer(opt)
    before = [p.detach().clone() for p in model.parameters()]
    pm(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # as on PopTorch
def test_lr_scheduler_advances_once_per_host_call_and_state_is_read_back():
    torch.manual_seed(0)
    model = Regression()
    opt = poptorch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    opts = poptorch.Options().deviceIterations(3)
    pm = poptorch.trainingModel(model, opts, opt)
    x, y = torch.randn(6, 4), torch.randn(6, 1)
    for _ in range(2):
        pm(x, y)
        sched.step()
        pm.setOptimizer(opt)
    state = opt.state_dict()["ipu_state"]  # PopART's names (test_optimizer_state.py has the layout)
    assert float(state["Step___net.0.weight"]) == 6  # 2 calls x 3 device iterations, one update each
    assert state["Accl1___net.0.weight"].shape == model.net[0].weight.shape


def test_max_grad_norm_is_global_clipping_and_loss_scaling_is_neutral():
    torch.manual_seed(0)
    model, ref = Regression(), Regression()
    ref.load_state_dict(model.state_dict())
    x, y = torch.randn(4, 4) * 10, torch.randn(4, 1) * 10
    pm = poptorch.trainingModel(model, optimizer=poptorch.optim.SGD(model.parameters(), lr=0.1, max_grad_norm=0.5,
                                                                    loss_scaling=1024.0))
    pm(x, y)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    ref(x, y)[1].backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_training_model_equals_plain_torch_training(reduction):
    """DI=2, GA=4, R=2: each device iteration's update uses the mean (or sum) gradient of its 8
    micro-batches; the emulator's AdamW update equals torch.optim.AdamW."""
    torch.manual_seed(0)
    di, ga, r, micro = 2, 4, 2, 3
    model, ref = Regression(), Regression()
    ref.load_state_dict(model.state_dict())
    opts = poptorch.Options().deviceIterations(di).replicationFactor(r).outputMode(poptorch.OutputMode.All)
    opts.Training.gradientAccumulation(ga)
    red = poptorch.ReductionType.Mean if reduction == "mean" else poptorch.ReductionType.Sum
    opts.Training.accumulationAndReplicationReductionType(red)
    h = dict(lr=0.01, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    pm = poptorch.trainingModel(model, opts, poptorch.optim.AdamW(model.parameters(), **h))
    ref_opt = torch.optim.AdamW(ref.parameters(), **h)
    for _ in range(2):
        x, y = torch.randn(di * ga * r * micro, 4), torch.randn(di * ga * r * micro, 1)
        _, losses = pm(x, y)
        xs, ys = x.view(di, ga * r, micro, 4), y.view(di, ga * r, micro, 1)
        ref_losses = []
        for d in range(di):
            ref_opt.zero_grad()
            for k in range(ga * r):
                loss = ref(xs[d, k], ys[d, k])[1]
                ref_losses.append(loss.detach())
                (loss / (ga * r) if reduction == "mean" else loss).backward()
            ref_opt.step()
        torch.testing.assert_close(losses, torch.stack(ref_losses), rtol=1e-5, atol=1e-6)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_parameters_outside_the_optimizer_use_its_defaults():
    torch.manual_seed(0)
    model = Regression()
    first = list(model.net[0].parameters())
    opt = poptorch.optim.SGD(first, lr=0.0)  # net[2] is not in any group
    opt.defaults["lr"] = 0.0
    before = model.net[2].weight.detach().clone()
    poptorch.trainingModel(model, optimizer=opt)(torch.randn(1, 4), torch.randn(1, 1))
    assert torch.equal(before, model.net[2].weight)
    assert math.isinf(opt.max_grad_norm)
