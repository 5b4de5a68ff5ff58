"""groupbert::grouped_conv1d (C++, channels-last) against F.conv1d, its autograd / fake / compile
registrations, input checks, the reference fallback, and the GroupBERT conv module on either path."""
import pytest
import torch
import torch.nn.functional as F

from custom_ops import _build, grouped_conv
from custom_ops.grouped_conv import grouped_conv1d, grouped_conv1d_reference
from groupbert.models import GroupBertModel


@pytest.fixture(scope="module")
def cpp():
    """The C++ op, or a skip saying why it is unavailable (built on first use, then cached)."""
    if _build.mode() == "off":
        pytest.skip("GROUPBERT_CUSTOM_OPS=off: the C++ kernels are disabled")
    if not grouped_conv.ops_ready():
        pytest.skip(f"grouped_conv1d C++ library unavailable: {_build.errors().get('grouped_conv1d')}")
    return torch.ops.groupbert.grouped_conv1d


@pytest.fixture
def mode_off():
    _build.set_mode("off")
    yield
    _build.set_mode(None)


def _conv1d(x, w, b, groups):
    """The independent reference: F.conv1d on [B, C, T]."""
    return F.conv1d(x.transpose(1, 2), w, b, padding=w.shape[-1] // 2, groups=groups).transpose(1, 2)


def _inputs(B, T, C, C_out, K, groups, bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=dtype)
    w = torch.randn(C_out, C // groups, K, generator=g, dtype=dtype)
    b = torch.randn(C_out, generator=g, dtype=dtype) if bias else None
    gy = torch.randn(B, T, C_out, generator=g, dtype=dtype)
    return x, w, b, gy


def _forward_backward(fn, x, w, b, groups, gy):
    leaves = [t.detach().requires_grad_(True) for t in (x, w) + ((b,) if b is not None else ())]
    y = fn(leaves[0], leaves[1], leaves[2] if b is not None else None, groups)
    y.backward(gy)
    return [y.detach()] + [t.grad for t in leaves]


# (B, T, C, C_out, K, groups, bias): 16-, 8- and 4-channel groups (the unrolled kernels), groups = 1
# and = C (depthwise), C_out != C, groups of 12 / 2 -> 4 channels (generic blocks), K = 1, 3, 7, 9,
# T < K, B = 1, T across the 64 / 128-step chunks, no bias, and the GroupBERT Base layer on a short T.
SHAPES = [
    (2, 16, 48, 48, 7, 3, True),
    (2, 16, 32, 32, 7, 4, False),
    (2, 20, 12, 12, 3, 3, True),
    (3, 3, 16, 16, 7, 1, True),
    (1, 5, 8, 8, 7, 8, True),
    (1, 4, 6, 6, 9, 6, False),
    (2, 9, 6, 12, 5, 3, True),
    (2, 7, 24, 24, 9, 2, True),
    (2, 11, 10, 10, 1, 5, True),
    (1, 150, 32, 32, 3, 2, True),
    (2, 8, 768, 768, 7, 48, True),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-11)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}C{}-{}K{}G{}{}".format(*s[:6], "" if s[6] else "-nobias"))
def test_forward_and_gradients_match_conv1d(cpp, shape, dtype, tol):
    *dims, bias = shape
    x, w, b, gy = _inputs(*dims, bias=bias, dtype=dtype)
    ours = _forward_backward(cpp, x, w, b, dims[-1], gy)
    ref = _forward_backward(_conv1d, x, w, b, dims[-1], gy)
    for name, a, r in zip(["output", "grad_input", "grad_weight", "grad_bias"], ours, ref):
        assert a.dtype == dtype and a.shape == r.shape and a.is_contiguous()
        torch.testing.assert_close(a, r, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


def test_noncontiguous_input_and_grad_output(cpp):
    x, w, b, gy = _inputs(2, 10, 16, 16, 3, 4)
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)  # [B, T, C] view of a [B, C, T] tensor
    x_s = torch.randn(2, 10, 32)[..., ::2]                 # strided channels
    gy_t = gy.transpose(0, 1).contiguous().transpose(0, 1)
    for xin in (x_t, x_s):
        assert not xin.is_contiguous()
        ours = _forward_backward(cpp, xin, w, b, 4, gy_t)
        ref = _forward_backward(_conv1d, xin, w, b, 4, gy_t)
        for a, r in zip(ours, ref):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_one_and_two_threads_agree_with_conv1d(cpp):
    x, w, b, gy = _inputs(2, 40, 32, 32, 7, 2)  # 2 groups: the weight gradient is split over rows too
    ref = _forward_backward(_conv1d, x, w, b, 2, gy)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for a, r in zip(_forward_backward(cpp, x, w, b, 2, gy), ref):
                torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(threads)


def test_empty_batch_or_sequence(cpp):
    for B, T in ((0, 5), (2, 0)):
        x, w, b, gy = _inputs(B, T, 8, 8, 3, 2)
        y, gx, gw, gb = _forward_backward(cpp, x, w, b, 2, gy)
        assert y.shape == (B, T, 8) and gx.shape == x.shape
        assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


def test_bfloat16_and_cpu_autocast(cpp):
    x, w, b, gy = _inputs(2, 12, 32, 32, 7, 2)
    xb, wb, bb = (t.bfloat16() for t in (x, w, b))
    ref = _conv1d(xb.float(), wb.float(), bb.float(), 2)  # same rounded inputs, float accumulation
    y = cpp(xb, wb, bb, 2)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 in, computed in bfloat16 like F.conv1d
        y_auto = grouped_conv1d(x, w, b, 2)
        y_torch = _conv1d(x, w, b, 2)
    assert y_auto.dtype == y_torch.dtype == torch.bfloat16
    torch.testing.assert_close(y_auto.float(), y_torch.float(), rtol=1e-2, atol=5e-2)


def test_gradcheck_float64(cpp):
    x, w, b, _ = _inputs(2, 6, 8, 8, 3, 2, dtype=torch.float64)
    args = [t.requires_grad_(True) for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: cpp(x, w, b, 2), args)
    assert torch.autograd.gradcheck(lambda x, w: cpp(x, w, None, 2), args[:2])


def test_opcheck_both_ops(cpp):
    x, w, b, gy = _inputs(2, 5, 8, 8, 3, 4)
    for bias in (b, None):
        args = (x.requires_grad_(True), w.requires_grad_(True),
                bias.requires_grad_(True) if bias is not None else None, 4)
        torch.library.opcheck(torch.ops.groupbert.grouped_conv1d.default, args)
    backward = torch.ops.groupbert.grouped_conv1d_backward.default
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(backward, (gy, x.detach(), w.detach(), 4, mask))
    for mask in ([True, False, False], [False, True, False], [False, False, True], [True, True, False]):
        gi, gw, gb = backward(gy, x.detach(), w.detach(), 4, mask)
        assert [t.numel() > 0 for t in (gi, gw, gb)] == mask  # masked-out gradients come back empty


def test_torch_compile_fullgraph_forward_and_backward(cpp):
    x, w, b, _ = _inputs(2, 9, 16, 16, 3, 4)

    def loss(x, w, b):
        return grouped_conv1d(x, w, b, 4).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")  # fullgraph: a break would raise
    leaves = [t.requires_grad_(True) for t in (x, w, b)]
    compiled(*leaves).backward()
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    loss(*leaves).backward()
    for a, t in zip(got, leaves):
        torch.testing.assert_close(a, t.grad)


def test_double_backward_is_refused(cpp):
    x, w, b, _ = _inputs(1, 4, 4, 4, 3, 1)
    leaves = [t.requires_grad_(True) for t in (x, w, b)]
    (gx,) = torch.autograd.grad(cpp(*leaves, 1).sum(), leaves[0], create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward is not supported"):
        gx.sum().backward()


@pytest.mark.parametrize("x_shape,w_shape,groups,match", [
    ((2, 5, 8), (8, 4, 4), 2, "kernel size must be odd"),
    ((2, 5, 9), (9, 3, 3), 2, "divisible by groups"),
    ((5, 8), (8, 4, 3), 2, "input must be 3-D"),
    ((2, 5, 8), (8, 12), 2, "weight must be 3-D"),
    ((2, 5, 8), (8, 3, 3), 2, r"weight.size\(1\) must be channels / groups"),
    ((2, 5, 8), (8, 4, 3), 0, "groups must be positive"),
])
def test_bad_inputs_raise_clear_errors(cpp, x_shape, w_shape, groups, match):
    with pytest.raises(RuntimeError, match=match):
        cpp(torch.randn(x_shape), torch.randn(w_shape), None, groups)


def test_mismatched_dtypes_raise(cpp):
    with pytest.raises(RuntimeError, match="must match input dtype"):
        cpp(torch.randn(1, 4, 4), torch.randn(4, 2, 3, dtype=torch.float64), None, 2)
    with pytest.raises(RuntimeError, match="bias must"):
        cpp(torch.randn(1, 4, 4), torch.randn(4, 2, 3), torch.randn(3), 2)


def test_public_function_uses_the_op_when_built(cpp):
    x, w, b, _ = _inputs(1, 4, 8, 8, 3, 2)
    y = grouped_conv1d(x, w.requires_grad_(True), b, 2)
    assert "groupbert" in y.grad_fn.name()


def test_mode_off_routes_to_reference(mode_off):
    x, w, b, _ = _inputs(1, 4, 8, 8, 3, 2)
    assert not grouped_conv.ops_ready()
    y = grouped_conv1d(x, w.requires_grad_(True), b, 2)
    assert y.grad_fn.name() == "TransposeBackward0"  # transpose -> F.conv1d -> transpose
    torch.testing.assert_close(y, _conv1d(x, w, b, 2))


def test_reference_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        grouped_conv1d_reference(torch.randn(1, 4, 4), torch.randn(4, 2, 2), None, 2)


@pytest.mark.parametrize("group_size", [8, 16])
def test_groupbert_same_outputs_and_grads_with_and_without_custom_op(cpp, group_size, tiny_model_config):
    torch.manual_seed(0)
    model = GroupBertModel(tiny_model_config(conv_group_size=group_size))
    input_ids = torch.randint(0, 99, (2, 12))
    attention_mask = torch.ones(2, 12, dtype=torch.long)
    attention_mask[1, 7:] = 0
    results = {}
    for use in (True, False):
        for m in model.modules():
            if hasattr(m, "use_custom_op"):
                m.use_custom_op = use
        model.zero_grad(set_to_none=True)
        out = model(input_ids, attention_mask=attention_mask).last_hidden_state
        out.square().mean().backward()
        results[use] = (out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-5)
    assert results[True][1].keys() == results[False][1].keys()
    for name, grad in results[False][1].items():
        torch.testing.assert_close(results[True][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert {"encoder.layer.0.conv.grouped_conv.weight", "encoder.layer.0.conv.grouped_conv.bias"} <= set(
        model.state_dict())  # the parameters are nn.Conv1d's on either path


def test_groupbert_under_cpu_bf16_autocast(cpp, tiny_model_config):
    """precision: bf16 on CPU: the activations reaching the conv are bf16, its parameters float32."""
    torch.manual_seed(0)
    model = GroupBertModel(tiny_model_config())
    input_ids = torch.randint(0, 99, (2, 12))
    outs = {}
    for use in (True, False):
        for m in model.modules():
            if hasattr(m, "use_custom_op"):
                m.use_custom_op = use
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids).last_hidden_state
        out.float().square().mean().backward()
        outs[use] = (out.float().detach(), model.encoder.layer[0].conv.grouped_conv.weight.grad)
    torch.testing.assert_close(outs[True][0], outs[False][0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(outs[True][1], outs[False][1], rtol=2e-2, atol=1e-4)
