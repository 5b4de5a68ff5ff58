"""groupbert::fused_adamw_ / fused_lamb_ / global_grad_norm (C++) against torch.optim.AdamW(fused=True) and
our Python single-tensor paths, through optimizers.AdamW / LAMB: odd sizes, several groups, every LAMB
preset, clipping, excluded groups, zero weights, float64, step counters, state dicts across paths, the
op registrations (opcheck, torch.compile) and the errors."""
import pytest
import torch

from custom_ops import _build, fused_optim
from optimizers.adamw import AdamW
from optimizers.lamb import LAMB, PRESETS

# 0-dim, one element, primes, a 3-D tensor, and one tensor over the kernel's 16 Ki-element chunk
SHAPES = [(), (1,), (7,), (13, 17), (5, 3, 2), (40009,)]
NO_GRAD = 2  # this parameter never gets a gradient
STEPS = 20


@pytest.fixture(scope="module")
def cpp():
    """The fused ops, or a skip saying why they are unavailable (built on first use, then cached)."""
    if _build.mode() == "off":
        pytest.skip("GROUPBERT_CUSTOM_OPS=off: the C++ kernels are disabled")
    if not fused_optim.ops_ready():
        pytest.skip(f"fused_optim C++ library unavailable: {_build.errors().get('fused_optim')}")
    return torch.ops.groupbert


@pytest.fixture
def mode_off():
    _build.set_mode("off")
    yield
    _build.set_mode(None)


def _start(dtype=torch.float32, zero=()):
    g = torch.Generator().manual_seed(0)
    return [torch.zeros(s, dtype=dtype) if i in zero else torch.randn(s, generator=g, dtype=dtype)
            for i, s in enumerate(SHAPES)]


def _grads(dtype, steps=STEPS, scale=1.0, zero_grad=()):
    g = torch.Generator().manual_seed(1)
    return [[None if i == NO_GRAD else torch.zeros(s, dtype=dtype) if i in zero_grad
             else scale * torch.randn(s, generator=g, dtype=dtype) for i, s in enumerate(SHAPES)]
            for _ in range(steps)]


def _run(make_optimizer, start, grads):
    params = [p.clone().requires_grad_() for p in start]
    opt = make_optimizer(params)
    norms = []
    for step_grads in grads:
        for p, gr in zip(params, step_grads):
            p.grad = gr
        opt.step()
        norms.append(getattr(opt, "last_grad_norm", None))
    return params, opt, norms


def _close(a, b, rtol, what):
    """Equal to ``rtol`` relative, and absolutely to ``rtol`` times the tensor's largest entry (entries that
    pass near 0 carry the rounding of the larger values they came from)."""
    a, b = a.detach(), b.detach()
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()) if b.numel() else 0.0,
                               msg=lambda m: f"{what}: {m}")


def _assert_same(a, b, opt_a, opt_b, rtol):
    for i, (p, q) in enumerate(zip(a, b)):
        _close(p, q, rtol, f"param {i}")
        if i == NO_GRAD:
            assert p not in opt_a.state and q not in opt_b.state
            continue
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert sa["step"].dtype == sb["step"].dtype == torch.float32
        assert sa["step"].item() == sb["step"].item() == STEPS
        for key in ("exp_avg", "exp_avg_sq"):
            _close(sa[key], sb[key], rtol, f"param {i} {key}")


def _adamw_groups(params, **group0):
    """Two groups with different hyperparameters; params[NO_GRAD] is in the first."""
    return [{"params": params[:3], **group0},
            {"params": params[3:], "lr": 3e-3, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.0}]


ADAMW_VARIANTS = {
    "default": ({}, torch.float32),
    "no_bias_correction": ({"bias_correction": False}, torch.float32),
    "maximize": ({"maximize": True}, torch.float32),
    "beta1_below_half": ({"betas": (0.3, 0.9)}, torch.float32),  # torch's lerp takes its other branch
    "float64": ({}, torch.float64),
}


@pytest.mark.parametrize("variant", list(ADAMW_VARIANTS))
def test_adamw_matches_python_path_and_torch_fused(cpp, variant):
    kwargs, dtype = ADAMW_VARIANTS[variant]
    start, grads = _start(dtype), _grads(dtype)
    hp = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    group0 = {k: kwargs.pop(k) for k in ("betas",) if k in kwargs}
    fused, fused_opt, _ = _run(lambda p: AdamW(_adamw_groups(p, **group0), **hp, **kwargs, fused=True), start, grads)
    ref, ref_opt, _ = _run(lambda p: AdamW(_adamw_groups(p, **group0), **hp, **kwargs, fused=False,
                                           foreach=False), start, grads)
    assert all(g["fused"] is True for g in fused_opt.param_groups)
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    _assert_same(fused, ref, fused_opt, ref_opt, rtol)
    if kwargs.get("bias_correction", True):  # torch has no bias_correction switch
        torch_kw = {"maximize": kwargs.get("maximize", False)}
        theirs, their_opt, _ = _run(lambda p: torch.optim.AdamW(_adamw_groups(p, **group0), **hp, **torch_kw,
                                                                 fused=True), start, grads)
        _assert_same(fused, theirs, fused_opt, their_opt, rtol)


def test_default_is_fused_on_cpu_unless_foreach_is_chosen(cpp, monkeypatch):
    calls = []
    for name in ("fused_adamw_", "fused_lamb_"):
        real = getattr(fused_optim, name)
        monkeypatch.setattr(fused_optim, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    for cls, op in ((AdamW, "fused_adamw_"), (LAMB, "fused_lamb_")):
        for foreach, expected in ((None, [op]), (False, []), (True, [])):
            calls.clear()
            p = torch.nn.Parameter(torch.ones(3))
            opt = cls([p], lr=0.1, foreach=foreach)
            assert opt.param_groups[0]["fused"] is None
            p.grad = torch.ones(3)
            opt.step()
            assert calls == expected, (cls.__name__, foreach)  # an explicit foreach wins (torch's rule)
            assert opt.state[p]["step"].item() == 1.0


# LAMB: group 0 (trust ratio, decay) holds a zero matrix (φ = 0 -> r = 1 at first), a zero-gradient
# vector and the parameter without gradient; group 1 is excluded from the ratio (plain Adam step + λθ
# with λ = 0, own lr/betas); group 2 has max_weight_norm = 0 (φ = 0 -> r = 1 always).
LAMB_ZERO_PARAM, LAMB_ZERO_GRAD = 1, 4


def _lamb_groups(params, **group0):
    return [{"params": params[:3], **group0},
            {"params": params[3:5], "trust_ratio": False, "weight_decay": 0.0, "lr": 3e-3, "betas": (0.8, 0.99)},
            {"params": params[5:], "max_weight_norm": 0.0}]


LAMB_VARIANTS = {name: (dict(kwargs), 10.0 if "max_grad_norm" in kwargs else 1.0) for name, kwargs in PRESETS.items()}
LAMB_VARIANTS.update({
    "clip_inactive": ({"max_grad_norm": 1e6}, 1.0),
    "poptorch_cap_binds": (dict(PRESETS["lamb_poptorch"], max_weight_norm=1.0), 1.0),
    "no_decay": ({"weight_decay": 0.0, "max_grad_norm": 1.0}, 10.0),
})


LAMB_CASES = [(v, torch.float32) for v in LAMB_VARIANTS] + [(v, torch.float64) for v in ("lamb_nvidia",
                                                                                       "lamb_poptorch_nobc")]


@pytest.mark.parametrize("variant, dtype", LAMB_CASES, ids=[f"{v}-{str(d)[6:]}" for v, d in LAMB_CASES])
def test_lamb_matches_python_path(cpp, variant, dtype):
    kwargs, scale = LAMB_VARIANTS[variant]
    start = _start(dtype, zero={LAMB_ZERO_PARAM})
    grads = _grads(dtype, scale=scale, zero_grad={LAMB_ZERO_GRAD})
    hp = dict(lr=1e-2, weight_decay=0.01)
    hp.update(kwargs)
    fused, fused_opt, fused_norms = _run(lambda p: LAMB(_lamb_groups(p), **hp, fused=True), start, grads)
    ref, ref_opt, ref_norms = _run(lambda p: LAMB(_lamb_groups(p), **hp, fused=False, foreach=False), start, grads)
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    _assert_same(fused, ref, fused_opt, ref_opt, rtol)
    if "max_grad_norm" in hp:
        assert fused_norms == pytest.approx(ref_norms, rel=1e-6 if dtype == torch.float32 else 1e-12)
        if scale > 1:
            assert min(ref_norms) > 2 * hp["max_grad_norm"]  # the clip acts on every step
    else:
        assert fused_norms == ref_norms == [None] * STEPS
    assert fused[LAMB_ZERO_PARAM].abs().sum() > 0  # the zero matrix moved (r = 1 on the first step)


def test_lamb_large_tensor_and_thread_count_do_not_change_bits(cpp):
    # A tensor over the kernel's 1 Mi-element batch takes the recompute path in pass 2; the rest the
    # scratch path. Norms are summed per fixed chunk, in chunk order: the same bits for any thread count.
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(1_100_003, generator=g), torch.randn(300, 7, generator=g)]
    grads = [[torch.randn(p.shape, generator=g) for p in start] for _ in range(3)]

    def run(threads, fused, max_grad_norm):
        old = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            params = [p.clone().requires_grad_() for p in start]
            opt = LAMB(params, lr=1e-2, max_grad_norm=max_grad_norm, fused=fused, foreach=None if fused else False)
            norms = []
            for step_grads in grads:
                for p, gr in zip(params, step_grads):
                    p.grad = gr
                opt.step()
                norms.append(opt.last_grad_norm)
            return params, norms
        finally:
            torch.set_num_threads(old)

    one, norms1 = run(1, True, 1.0)
    two, norms2 = run(2, True, 1.0)
    assert norms1 == norms2
    assert all(torch.equal(a, b) for a, b in zip(one, two))
    exact = [float(torch.cat([x.double().flatten() for x in step_grads]).norm()) for step_grads in grads]
    assert norms1 == pytest.approx(exact, rel=1e-6)  # (torch's float32 norm of 1.1M entries is off by ~1e-5)
    fused, _ = run(2, True, None)
    ref, _ = run(2, False, None)
    for a, b in zip(fused, ref):
        _close(a.detach(), b.detach(), 1e-6, "param")


def test_global_grad_norm(cpp):
    from optimizers.lamb import global_grad_norm
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=g) for s in SHAPES]
    mixed = grads + [torch.randn(5, generator=g, dtype=torch.float64)]
    for tensors, dtype in ((grads, torch.float32), (mixed, torch.float64)):
        ours = fused_optim.global_grad_norm(tensors)
        assert ours.dtype == dtype and ours.dim() == 0
        exact = float(torch.cat([t.double().flatten() for t in tensors]).norm())
        assert float(ours) == pytest.approx(exact, rel=1e-7)  # blocks of float32 squares, summed in double
        assert float(ours) == pytest.approx(float(global_grad_norm(tensors, foreach=False)), rel=1e-6)


@pytest.mark.parametrize("cls, kwargs", [(AdamW, {"lr": 1e-2}), (LAMB, {"lr": 1e-2, "max_grad_norm": 1.0})])
def test_state_dict_moves_between_fused_and_unfused(cpp, cls, kwargs):
    start, grads = _start(), _grads(torch.float32, steps=10, scale=3.0)
    groups = _adamw_groups if cls is AdamW else _lamb_groups

    def make(fused):
        params = [p.clone().requires_grad_() for p in start]
        return params, cls(groups(params), **kwargs, fused=fused, foreach=None if fused else False)

    def steps(params, opt, seq):
        for step_grads in seq:
            for p, gr in zip(params, step_grads):
                p.grad = gr
            opt.step()

    runs = {}
    for first, second in ((True, False), (False, True)):
        params, opt = make(first)
        steps(params, opt, grads[:5])
        saved = opt.state_dict()
        resumed_params, resumed = make(second)
        with torch.no_grad():
            for p, q in zip(resumed_params, params):
                p.copy_(q)
        resumed.load_state_dict(saved)
        assert [g["fused"] for g in resumed.param_groups] == [second] * len(resumed.param_groups)  # kept
        steps(resumed_params, resumed, grads[5:])
        runs[first, second] = (resumed_params, resumed)
    straight_params, straight = make(True)
    steps(straight_params, straight, grads)
    for (a, opt_a) in runs.values():
        for i, (p, q) in enumerate(zip(a, straight_params)):
            _close(p, q, 1e-6, f"param {i}")
            if i != NO_GRAD:
                assert opt_a.state[p]["step"].item() == straight.state[q]["step"].item() == 10
    # the same structure either way: state keys, dtypes, shapes and group keys
    sd_fused, sd_plain = runs[False, True][1].state_dict(), runs[True, False][1].state_dict()
    assert sd_fused["state"].keys() == sd_plain["state"].keys()
    for k in sd_fused["state"]:
        a, b = sd_fused["state"][k], sd_plain["state"][k]
        assert a.keys() == b.keys()
        assert all(a[n].dtype == b[n].dtype and a[n].shape == b[n].shape for n in a)
    assert [g.keys() for g in sd_fused["param_groups"]] == [g.keys() for g in sd_plain["param_groups"]]


def _op_args(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    shapes = [(5,), (3, 4), ()]
    params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    grads = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    exp_avgs = [torch.randn(s, generator=g, dtype=dtype) * 0.1 for s in shapes]
    exp_avg_sqs = [torch.rand(s, generator=g, dtype=dtype) * 0.1 for s in shapes]
    steps = [torch.tensor(3.0) for _ in shapes]
    return params, grads, exp_avgs, exp_avg_sqs, steps


def test_opcheck(cpp):
    adamw = _op_args() + (1e-2, 0.9, 0.999, 1e-8, 0.1, True, False)
    torch.library.opcheck(cpp.fused_adamw_.default, adamw)
    lamb = _op_args() + (torch.tensor(1.5), 1e-2, 0.9, 0.999, 1e-6, 0.01, True, 2.0, True)
    torch.library.opcheck(cpp.fused_lamb_.default, lamb)
    torch.library.opcheck(cpp.global_grad_norm.default, (_op_args()[1],))


def test_compiled_call_matches_eager(cpp):
    def update(params, grads, exp_avgs, exp_avg_sqs, steps):
        norm = torch.ops.groupbert.global_grad_norm(grads)
        divisor = torch.clamp(norm / 1.0, min=1.0)
        torch.ops.groupbert.fused_lamb_(params, grads, exp_avgs, exp_avg_sqs, steps, divisor, 1e-2, 0.9,
                                        0.999, 1e-6, 0.01, True, None, True)
        torch.ops.groupbert.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, steps, 1e-2, 0.9, 0.999, 1e-8,
                                         0.1, True, False)
        return norm

    eager, compiled = _op_args(), _op_args()
    norm = update(*eager)
    torch._dynamo.reset()
    compiled_norm = torch.compile(update, fullgraph=True, backend="aot_eager")(*compiled)
    assert torch.equal(norm, compiled_norm)
    for a, b in zip(eager, compiled):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    assert compiled[4][0].item() == 5.0  # both ops incremented the step counters


@pytest.mark.parametrize("cls, kwargs", [(AdamW, {"weight_decay": 0.1}), (LAMB, {"max_grad_norm": 1.0})])
def test_compiled_optimizer_step_matches_eager(cpp, cls, kwargs):
    # The whole step traces without a graph break on the fused path (the Python paths call .item()).
    g = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 3, generator=g), torch.randn(4, generator=g)]
    runs = []
    for compiled in (False, True):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = cls([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}], lr=1e-2, **kwargs)
        torch._dynamo.reset()
        step = torch.compile(opt.step, fullgraph=True, backend="aot_eager") if compiled else opt.step
        grads = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=grads)
            step()
        runs.append((params, opt))
    (eager, eager_opt), (comp, comp_opt) = runs
    assert all(torch.equal(a, b) for a, b in zip(eager, comp))
    assert comp_opt.state[comp[0]]["step"].item() == 3.0
    assert getattr(comp_opt, "last_grad_norm", None) == getattr(eager_opt, "last_grad_norm", None)


def test_errors(cpp, mode_off):
    p = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(RuntimeError, match="GROUPBERT_CUSTOM_OPS=off"):
        AdamW([p], fused=True)
    with pytest.raises(RuntimeError, match="GROUPBERT_CUSTOM_OPS=off"):
        LAMB([p], fused=True)
    opt = AdamW([p], lr=0.1)  # fused=None: the Python path when the library is off
    p.grad = torch.ones(3)
    opt.step()
    assert opt.state[p]["step"].item() == 1.0


def test_invalid_arguments(cpp):
    p = torch.nn.Parameter(torch.ones(3))
    for cls in (AdamW, LAMB):
        with pytest.raises(ValueError, match="`fused` and `foreach` cannot be `True` together"):
            cls([p], fused=True, foreach=True)
        with pytest.raises(RuntimeError, match="float16"):
            cls([torch.nn.Parameter(torch.ones(3, dtype=torch.float16))], fused=True)
        with pytest.raises(RuntimeError, match="not contiguous"):
            cls([torch.nn.Parameter(torch.ones(4, 3).t())], fused=True)
        # fused=None falls back to the Python path for such tensors
        q = torch.nn.Parameter(torch.ones(4, 3).t())
        q.grad = torch.ones(3, 4)
        cls([q], lr=0.1).step()
    params, grads, exp_avgs, exp_avg_sqs, steps = _op_args()
    hp = (1e-2, 0.9, 0.999, 1e-8, 0.1, True, False)
    with pytest.raises(RuntimeError, match="same length"):
        cpp.fused_adamw_(params, grads[:2], exp_avgs, exp_avg_sqs, steps, *hp)
    with pytest.raises(RuntimeError, match=r"grads\[1\] has dtype Double"):
        cpp.fused_adamw_(params, [grads[0], grads[1].double(), grads[2]], exp_avgs, exp_avg_sqs, steps, *hp)
    with pytest.raises(RuntimeError, match=r"exp_avgs\[1\] is not contiguous"):
        cpp.fused_adamw_(params, grads, [exp_avgs[0], torch.zeros(4, 3).t(), exp_avgs[2]], exp_avg_sqs, steps, *hp)
    with pytest.raises(RuntimeError, match=r"exp_avg_sqs\[0\] has shape"):
        cpp.fused_adamw_(params, grads, exp_avgs, [torch.zeros(6)] + exp_avg_sqs[1:], steps, *hp)
    with pytest.raises(RuntimeError, match=r"state_steps\[0\]"):
        cpp.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [torch.zeros(2)] + steps[1:], *hp)
    assert all(s.item() == 3.0 for s in steps)  # nothing ran
