"""groupbert::grouped_conv1d_segments (packed rows: the kernel window is cut at every run of equal
segment ids) against an independent reference, F.conv1d on each run alone; its autograd / fake / compile
registrations, input checks and the fallback to grouped_conv1d_segments_reference."""
import pytest
import torch
import torch.nn.functional as F

from custom_ops import _build, grouped_conv
from custom_ops.grouped_conv import grouped_conv1d, grouped_conv1d_segments_reference


@pytest.fixture(scope="module")
def cpp():
    if _build.mode() == "off":
        pytest.skip("GROUPBERT_CUSTOM_OPS=off: the C++ kernels are disabled")
    if not grouped_conv.ops_ready():
        pytest.skip(f"grouped_conv1d C++ library unavailable: {_build.errors().get('grouped_conv1d')}")
    return torch.ops.groupbert.grouped_conv1d_segments


@pytest.fixture
def mode_off():
    _build.set_mode("off")
    yield
    _build.set_mode(None)


def _runs(ids_row):
    """[(lo, hi)] of the contiguous runs of equal ids in one row."""
    ids_row = ids_row.tolist()
    runs, lo = [], 0
    for t in range(1, len(ids_row) + 1):
        if t == len(ids_row) or ids_row[t] != ids_row[t - 1]:
            runs.append((lo, t))
            lo = t
    return runs


def _per_run_conv1d(x, w, b, groups, ids):
    """The independent reference: every run of every row convolved alone by F.conv1d ("same" padding)."""
    rows = []
    for r in range(x.shape[0]):
        pieces = [F.conv1d(x[r:r + 1, lo:hi].transpose(1, 2), w, b, padding=w.shape[-1] // 2, groups=groups)
                  .transpose(1, 2) for lo, hi in _runs(ids[r])]
        rows.append(torch.cat(pieces, 1) if pieces else x.new_zeros(1, 0, w.shape[0]))
    return torch.cat(rows, 0)


def _cpp_public(x, w, b, groups, ids):
    return grouped_conv1d(x, w, b, groups, segment_ids=ids)


def _inputs(B, T, C, C_out, K, groups, bias=True, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=g, dtype=dtype)
    w = torch.randn(C_out, C // groups, K, generator=g, dtype=dtype)
    b = torch.randn(C_out, generator=g, dtype=dtype) if bias else None
    gy = torch.randn(B, T, C_out, generator=g, dtype=dtype)
    return x, w, b, gy


def _ids(B, T, layout, seed=0):
    """[B, T] int64 segment ids.
    mixed: runs of length 1 and 2 at the row start and end, a long middle run, a short one inside;
    random: random run lengths in 1..T//2; one: each row a single run; singles: every step its own run;
    reused: a sequence id that comes back after another (two separate runs, [0,0,1,1,0,0] style)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.empty(B, T, dtype=torch.long)
    for r in range(B):
        if layout == "mixed":
            lens = [1, 2, max(T - 8, 1), 1, 2, 2]
        elif layout == "random":
            lens = []
            while sum(lens) < T:
                lens.append(int(torch.randint(1, max(T // 2, 2), (1,), generator=g)))
        elif layout == "one":
            lens = [T]
        elif layout == "singles":
            lens = [1] * T
        elif layout == "reused":
            lens = [T // 3, T // 3, T]
        else:
            raise ValueError(layout)
        row, t = [], 0
        for i, n in enumerate(lens):
            n = min(n, T - t)
            row += [i % 2 if layout == "reused" else i + 3 * r] * n
            t += n
            if t == T:
                break
        ids[r] = torch.tensor(row[:T] + [row[-1]] * (T - len(row)))
    return ids


def _forward_backward(fn, x, w, b, groups, ids, gy):
    leaves = [t.detach().requires_grad_(True) for t in (x, w) + ((b,) if b is not None else ())]
    y = fn(leaves[0], leaves[1], leaves[2] if b is not None else None, groups, ids)
    y.backward(gy)
    return [y.detach()] + [t.grad for t in leaves]


def _assert_match(ours, ref, tol):
    for name, a, r in zip(["output", "grad_input", "grad_weight", "grad_bias"], ours, ref):
        assert a.dtype == r.dtype and a.shape == r.shape
        torch.testing.assert_close(a, r, rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


# (B, T, C, C_out, K, groups, layout): groups of 16 (groups=C/16, the fused square backward), groups=1,
# C_out != C (the separate input-gradient convolution), 12-channel groups (generic blocks), depthwise;
# T > 64 and not a multiple of 64 with runs straddling the chunk boundaries; runs of 1 and 2 (< K//2) at
# row starts and ends; a row that is one run; every step its own run; ids that repeat after another id.
CASES = [
    (2, 150, 32, 32, 7, 2, "random"),
    (2, 150, 32, 32, 7, 2, "mixed"),
    (3, 70, 48, 48, 7, 3, "random"),
    (2, 40, 16, 16, 7, 1, "mixed"),
    (4, 200, 16, 16, 7, 1, "random"),
    (2, 21, 16, 16, 7, 1, "reused"),
    (2, 40, 12, 24, 5, 3, "random"),
    (2, 33, 12, 24, 7, 3, "mixed"),
    (1, 50, 24, 24, 9, 2, "random"),
    (2, 30, 6, 6, 3, 6, "mixed"),
    (2, 70, 32, 32, 7, 2, "one"),
    (2, 12, 16, 16, 7, 1, "singles"),
    (2, 40, 768, 768, 7, 48, "random"),
]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}T{}C{}-{}K{}G{}-{}".format(*c))
def test_matches_conv1d_per_run(cpp, case, dtype, tol):
    *dims, layout = case
    x, w, b, gy = _inputs(*dims, dtype=dtype)
    # normalised so that float32 sums stay O(1): tol is then relative to the size of the terms
    w = w / (w.shape[1] * w.shape[2]) ** 0.5
    gy = gy / (dims[0] * dims[1]) ** 0.5
    ids = _ids(dims[0], dims[1], layout)
    ours = _forward_backward(_cpp_public, x, w, b, dims[-1], ids, gy)
    ref = _forward_backward(_per_run_conv1d, x, w, b, dims[-1], ids, gy)
    _assert_match(ours, ref, tol)


def test_public_function_uses_the_segments_op(cpp):
    x, w, b, _ = _inputs(1, 10, 8, 8, 3, 2)
    y = grouped_conv1d(x, w.requires_grad_(True), b, 2, segment_ids=_ids(1, 10, "mixed"))
    assert "grouped_conv1d_segments" in y.grad_fn.name()


def test_agrees_with_the_plain_pytorch_reference(cpp):
    x, w, b, gy = _inputs(2, 45, 32, 32, 7, 2, dtype=torch.float64)
    ids = _ids(2, 45, "random", seed=3)
    ours = _forward_backward(_cpp_public, x, w, b, 2, ids, gy)
    ref = _forward_backward(grouped_conv1d_segments_reference, x, w, b, 2, ids, gy)
    _assert_match(ours, ref, 1e-10)


def test_one_run_per_row_equals_the_unsegmented_op(cpp):
    x, w, b, gy = _inputs(2, 150, 32, 32, 7, 2)
    ids = torch.zeros(2, 150, dtype=torch.int32)
    plain = _forward_backward(lambda x, w, b, g, _: torch.ops.groupbert.grouped_conv1d(x, w, b, g), x, w, b, 2, ids, gy)
    for a, r in zip(_forward_backward(_cpp_public, x, w, b, 2, ids, gy), plain):
        assert torch.equal(a, r)  # same work items, same summation order


def test_id_dtypes_and_noncontiguous_ids(cpp):
    x, w, b, gy = _inputs(2, 30, 16, 16, 5, 1)
    ids = _ids(2, 30, "random")
    ref = _forward_backward(_per_run_conv1d, x, w, b, 1, ids, gy)
    strided = torch.stack([ids, ids], 2)[..., 0]
    assert not strided.is_contiguous()
    for variant in (ids.int(), ids.to(torch.int16), ids.to(torch.uint8), strided):
        _assert_match(_forward_backward(_cpp_public, x, w, b, 1, variant, gy), ref, 1e-5)


def test_one_and_two_threads_agree(cpp):
    x, w, b, gy = _inputs(2, 90, 32, 32, 7, 2)
    ids = _ids(2, 90, "random", seed=1)
    ref = _forward_backward(_per_run_conv1d, x, w, b, 2, ids, gy)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            _assert_match(_forward_backward(_cpp_public, x, w, b, 2, ids, gy), ref, 1e-4)
    finally:
        torch.set_num_threads(threads)


def test_empty_batch_or_sequence(cpp):
    for B, T in ((0, 5), (2, 0)):
        x, w, b, gy = _inputs(B, T, 8, 8, 3, 2)
        y, gx, gw, gb = _forward_backward(_cpp_public, x, w, b, 2, torch.zeros(B, T, dtype=torch.long), gy)
        assert y.shape == (B, T, 8) and gx.shape == x.shape
        assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


def test_bfloat16_and_cpu_autocast(cpp):
    x, w, b, _ = _inputs(2, 40, 32, 32, 7, 2)
    ids = _ids(2, 40, "mixed")
    xb, wb, bb = (t.bfloat16() for t in (x, w, b))
    ref = _per_run_conv1d(xb.float(), wb.float(), bb.float(), 2, ids)  # same rounded inputs, float sums
    y = cpp(xb, wb, bb, 2, ids)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=1e-2, atol=5e-2)
    leaves = [t.requires_grad_(True) for t in (x, w, b)]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 in, bf16 compute, ids untouched
        y_auto = grouped_conv1d(*leaves, 2, segment_ids=ids)
    assert y_auto.dtype == torch.bfloat16 and "grouped_conv1d_segments" in y_auto.grad_fn.name()
    torch.testing.assert_close(y_auto.float(), ref, rtol=1e-2, atol=5e-2)
    y_auto.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)


def test_float16_falls_back_to_the_reference(cpp):
    x, w, b, _ = _inputs(1, 12, 8, 8, 3, 2)
    y = grouped_conv1d(x.half(), w.half().requires_grad_(True), b.half(), 2, segment_ids=_ids(1, 12, "mixed"))
    assert "grouped_conv1d_segments" not in y.grad_fn.name()


def test_gradcheck_float64(cpp):
    x, w, b, _ = _inputs(2, 9, 8, 8, 5, 2, dtype=torch.float64)
    ids = torch.tensor([[0, 0, 0, 1, 2, 2, 2, 2, 2], [5, 5, 6, 6, 6, 6, 6, 6, 7]])
    args = [t.requires_grad_(True) for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: cpp(x, w, b, 2, ids), args)
    assert torch.autograd.gradcheck(lambda x, w: cpp(x, w, None, 2, ids), args[:2])


def test_opcheck_both_ops(cpp):
    x, w, b, gy = _inputs(2, 7, 8, 8, 3, 4)
    ids = torch.tensor([[0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.int32)
    for bias in (b, None):
        args = (x.requires_grad_(True), w.requires_grad_(True),
                bias.requires_grad_(True) if bias is not None else None, 4, ids)
        torch.library.opcheck(torch.ops.groupbert.grouped_conv1d_segments.default, args)
    backward = torch.ops.groupbert.grouped_conv1d_segments_backward.default
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(backward, (gy, x.detach(), w.detach(), ids, 4, mask))
    for mask in ([True, False, False], [False, True, False], [False, False, True], [True, True, False]):
        gi, gw, gb = backward(gy, x.detach(), w.detach(), ids, 4, mask)
        assert [t.numel() > 0 for t in (gi, gw, gb)] == mask


def test_torch_compile_fullgraph_forward_and_backward(cpp):
    x, w, b, _ = _inputs(2, 9, 16, 16, 3, 4)
    ids = _ids(2, 9, "mixed")

    def loss(x, w, b, ids):
        return grouped_conv1d(x, w, b, 4, segment_ids=ids).square().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    leaves = [t.requires_grad_(True) for t in (x, w, b)]
    compiled(*leaves, ids).backward()
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    loss(*leaves, ids).backward()
    for a, t in zip(got, leaves):
        torch.testing.assert_close(a, t.grad)


def test_double_backward_is_refused(cpp):
    x, w, b, _ = _inputs(1, 4, 4, 4, 3, 1)
    leaves = [t.requires_grad_(True) for t in (x, w, b)]
    (gx,) = torch.autograd.grad(cpp(*leaves, 1, torch.tensor([[0, 0, 1, 1]])).sum(), leaves[0], create_graph=True)
    with pytest.raises(NotImplementedError, match="double backward is not supported"):
        gx.sum().backward()


def test_bad_segment_ids_raise_clear_errors(cpp):
    x, w = torch.randn(2, 5, 8), torch.randn(8, 4, 3)
    with pytest.raises(RuntimeError, match=r"segment_ids must be \[batch, time\]"):
        cpp(x, w, None, 2, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(RuntimeError, match="segment_ids must be an integer"):
        cpp(x, w, None, 2, torch.zeros(2, 5))
    with pytest.raises(RuntimeError, match="kernel size must be odd"):
        cpp(x, torch.randn(8, 4, 4), None, 2, torch.zeros(2, 5, dtype=torch.long))


def test_mode_off_routes_to_reference(mode_off):
    x, w, b, _ = _inputs(1, 12, 8, 8, 3, 2)
    ids = _ids(1, 12, "mixed")
    assert not grouped_conv.ops_ready()
    y = grouped_conv1d(x, w.requires_grad_(True), b, 2, segment_ids=ids)
    assert "grouped_conv1d_segments" not in y.grad_fn.name()
    torch.testing.assert_close(y, _per_run_conv1d(x, w, b, 2, ids))
