r"""Grouped 1-D "same" convolution on the channels-last [batch, time, channels] layout.

GroupBERT's conv module convolves along the sequence with K = 7 taps in groups of 16 channels. Its
activations are [B, T, C]; ``nn.Conv1d`` wants [B, C, T], so the PyTorch path transposes in and out.
``groupbert::grouped_conv1d`` (``csrc/grouped_conv1d.cpp``) computes directly on [B, T, C], with the
weight in the ``nn.Conv1d`` layout [C_out, C_in / G, K] (so the model's parameters are unchanged)::

    y[b, t, o] = bias[o] + Σ_k Σ_i x[b, t + k − K//2, g(o)·Cg + i] · w[o, i, k]

for k < K, i < Cg = C_in / G, g(o) = o // (C_out / G), and x = 0 outside 0 ≤ t < T ("same" zero padding,
K odd). The backward (``groupbert::grouped_conv1d_backward``), with gy = ∂L/∂y::

    ∂L/∂x[b, s, g·Cg + i] = Σ_k Σ_{o in group g} gy[b, s − k + K//2, o] · w[o, i, k]
    ∂L/∂w[o, i, k]         = Σ_b Σ_t gy[b, t, o] · x[b, t + k − K//2, g(o)·Cg + i]
    ∂L/∂bias[o]            = Σ_b Σ_t gy[b, t, o]

(the input gradient is the same convolution of gy with the kernel flipped in time and transposed within
each group; gy = 0 outside 0 ≤ t < T).

:func:`grouped_conv1d` uses the C++ op for CPU tensors of float32, float64 or bfloat16 (float
accumulation) when the library is built and enabled (``GROUPBERT_CUSTOM_OPS``, see ``_build.py``), and
:func:`grouped_conv1d_reference` (transpose → ``F.conv1d`` → transpose) otherwise. On CUDA that reference
is PyTorch's own cuDNN kernel: no CUDA kernel was written here (none could be tested without a GPU).

Packed rows (``segment_ids`` [B, T], each token's sequence index) restrict every tap to the output's own
run of equal contiguous ids, with gy and x zero outside it (each run convolved as its own sequence)::

    y[b, t, o]     = bias[o] + Σ_k Σ_i [run(s) = run(t)] · x[b, s, g(o)·Cg + i] · w[o, i, k]      s = t + k − K//2
    ∂L/∂x[b, s, c] = Σ_k Σ_o [run(t) = run(s)] · gy[b, t, o] · w[o, c − g·Cg, k]               t = s − k + K//2
    ∂L/∂w[o, i, k] = Σ_b Σ_t [run(s) = run(t)] · gy[b, t, o] · x[b, s, g(o)·Cg + i]            s = t + k − K//2

(∂L/∂bias unchanged). ``groupbert::grouped_conv1d_segments`` / ``_segments_backward`` compute these in
C++ with the same kernels (work items cut at run edges, halo rows outside the run staged as zeros),
under the same conditions as the plain op and for integer ``segment_ids`` on the CPU;
:func:`grouped_conv1d_segments_reference` (unfold + einsum) is the reference and the fallback elsewhere
(other devices, float16 autocast, library unavailable or ``GROUPBERT_CUSTOM_OPS=off``).

The ops are real dispatcher ops: they have fake (meta) kernels for ``torch.compile`` / ``torch.export``, an
autograd formula (:func:`torch.library.register_autograd`) and a CPU autocast rule (inputs cast to
bfloat16, as ``F.conv1d`` is under CPU autocast). Double backward is not supported: the backward op's
autograd formula raises a clear error if a second derivative is asked for through it (GroupBERT training
never does). Nothing is compiled at import; the library is built/loaded and these Python registrations
made on the first call that wants it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from custom_ops import _build

_LIB = "grouped_conv1d"
_CPP_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
_CPP_ID_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)  # segment_ids the C++ op takes
_registered = False


def grouped_conv1d_reference(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                             groups: int = 1) -> Tensor:
    """The PyTorch path: [B, T, C] -> [B, C, T] -> ``F.conv1d(padding=K // 2, groups)`` -> [B, T, C_out]."""
    K = weight.shape[-1]
    if K % 2 != 1:
        raise ValueError(f"grouped_conv1d: kernel size must be odd for \"same\" padding K // 2, got {K}")
    return F.conv1d(input.transpose(1, 2), weight, bias, padding=K // 2, groups=groups).transpose(1, 2)


def segment_runs(segment_ids: Tensor) -> Tensor:
    """[B, T] ids -> [B, T] run index: positions share a run when they are contiguous with equal ids."""
    change = torch.ones_like(segment_ids, dtype=torch.long)
    change[:, 1:] = (segment_ids[:, 1:] != segment_ids[:, :-1]).long()
    return change.cumsum(1)


def grouped_conv1d_segments_reference(input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int,
                                      segment_ids: Tensor) -> Tensor:
    """Segment-aware grouped "same" conv in plain PyTorch: a tap of output position t reads input position
    s only when s lies in t's segment (the contiguous run of equal ``segment_ids`` around t), so packed
    sequences never see each other (zero padding at every segment edge, as if each were its own row)::

        y[b, t, o] = bias[o] + Σ_k Σ_i [run(b, s) = run(b, t)] · x[b, s, g(o)·Cg + i] · w[o, i, k],  s = t + k − K//2

    Built from an unfold to [B, T, C, K] windows and one grouped contraction (K times the input's memory),
    differentiable by autograd; the C++ op's reference and its fallback off CPU."""
    K = weight.shape[-1]
    if K % 2 != 1:
        raise ValueError(f"grouped_conv1d: kernel size must be odd for \"same\" padding K // 2, got {K}")
    if segment_ids.shape != input.shape[:2]:
        raise ValueError(f"grouped_conv1d: segment_ids must be [B, T] = {tuple(input.shape[:2])}, "
                         f"got {tuple(segment_ids.shape)}")
    B, T, C = input.shape
    C_out, Cg, P = weight.shape[0], weight.shape[1], K // 2
    runs = F.pad(segment_runs(segment_ids), (P, P), value=-1)           # B, T + 2P; -1 never matches
    same = runs.unfold(1, K, 1) == runs[:, P:P + T, None]              # B, T, K: tap k stays in t's run
    windows = F.pad(input, (0, 0, P, P)).unfold(1, K, 1)                # B, T, C, K (a view)
    windows = windows * same[:, :, None, :].to(input.dtype)
    y = torch.einsum("btgik,goik->btgo", windows.reshape(B, T, groups, Cg, K),
                     weight.reshape(groups, C_out // groups, Cg, K)).reshape(B, T, C_out)
    return y if bias is None else y + bias


def grouped_conv1d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, groups: int = 1,
                   segment_ids: Optional[Tensor] = None) -> Tensor:
    """Grouped "same" conv of ``input`` [B, T, C] with an ``nn.Conv1d`` weight [C_out, C / groups, K] (K odd)
    and optional ``bias`` [C_out]; returns [B, T, C_out]. The C++ op on CPU where available, otherwise
    :func:`grouped_conv1d_reference` (module docstring).

    ``segment_ids`` [B, T] (packed rows: each token's sequence index): the kernel window is cut at the
    edges of every run of equal ids, as :func:`grouped_conv1d_segments_reference` defines; computed by
    ``groupbert::grouped_conv1d_segments`` where the plain op would run (and the ids are CPU integers),
    otherwise by that reference. ``segment_ids`` gets no gradient."""
    cpp = input.device.type == "cpu" and _compute_dtype(input) in _CPP_DTYPES
    if segment_ids is not None:
        if (cpp and segment_ids.device.type == "cpu" and segment_ids.dtype in _CPP_ID_DTYPES
                and ops_ready()):
            return torch.ops.groupbert.grouped_conv1d_segments(input, weight, bias, groups, segment_ids)
        return grouped_conv1d_segments_reference(input, weight, bias, groups, segment_ids)
    if cpp and ops_ready():
        return torch.ops.groupbert.grouped_conv1d(input, weight, bias, groups)
    return grouped_conv1d_reference(input, weight, bias, groups)


# torch.compile: dynamo does not trace this function; it calls it once while tracing and uses the answer as a
# constant. Traced, the first call (loading the library, torch.library.register_fake) would break the graph
# and recompile; this way the op is one opaque node of a single graph. A compiled model keeps the choice made
# when it was traced (set the custom-ops mode before compiling).
@torch.compiler.assume_constant_result
def ops_ready() -> bool:
    """True if ``torch.ops.groupbert.grouped_conv1d`` is loaded, enabled and registered (building the
    library on first use; ``GROUPBERT_CUSTOM_OPS=on`` raises instead of returning False)."""
    if not _build.available(_LIB):
        return False
    if not _registered:
        _register()
    return True


def _compute_dtype(input: Tensor) -> torch.dtype:
    # Under CPU autocast the op runs in bfloat16 (register_autocast below); another autocast dtype
    # (float16) is left to F.conv1d.
    if torch.is_autocast_enabled("cpu") and input.is_floating_point():
        return torch.get_autocast_dtype("cpu")
    return input.dtype


def _register() -> None:
    """Fake kernels, autograd and autocast for the ops the library just defined (once per process)."""
    global _registered
    torch.library.register_fake("groupbert::grouped_conv1d")(_fake_forward)
    torch.library.register_fake("groupbert::grouped_conv1d_backward")(_fake_backward)
    torch.library.register_autograd("groupbert::grouped_conv1d", _backward, setup_context=_setup_context)
    torch.library.register_autograd("groupbert::grouped_conv1d_backward", _no_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)
    torch.library.register_autocast("groupbert::grouped_conv1d", "cpu", torch.bfloat16)
    # Packed rows: the same rules; segment_ids is an integer input, so it has no gradient and autocast
    # leaves it alone (only floating-point tensors are cast).
    torch.library.register_fake("groupbert::grouped_conv1d_segments")(_fake_segments_forward)
    torch.library.register_fake("groupbert::grouped_conv1d_segments_backward")(_fake_segments_backward)
    torch.library.register_autograd("groupbert::grouped_conv1d_segments", _segments_backward,
                                    setup_context=_segments_setup_context)
    torch.library.register_autograd("groupbert::grouped_conv1d_segments_backward", _no_segments_double_backward,
                                    setup_context=lambda ctx, inputs, output: None)
    torch.library.register_autocast("groupbert::grouped_conv1d_segments", "cpu", torch.bfloat16)
    _registered = True


def _check_shapes(input: Tensor, weight: Tensor, groups: int) -> None:
    torch._check(input.dim() == 3, lambda: f"grouped_conv1d: input must be 3-D [B, T, C], got {input.dim()}-D")
    torch._check(weight.dim() == 3, lambda: f"grouped_conv1d: weight must be 3-D, got {weight.dim()}-D")
    torch._check(groups >= 1 and input.shape[2] % groups == 0 and weight.shape[0] % groups == 0,
                 lambda: f"grouped_conv1d: channels {input.shape[2]} -> {weight.shape[0]} not divisible by "
                         f"groups={groups}")
    torch._check(weight.shape[1] * groups == input.shape[2],
                 lambda: f"grouped_conv1d: weight.shape[1] must be C / groups, got {tuple(weight.shape)}")
    torch._check(weight.shape[2] % 2 == 1, lambda: f"grouped_conv1d: kernel size must be odd, got {weight.shape[2]}")
    torch._check(input.dtype == weight.dtype, lambda: "grouped_conv1d: input and weight dtypes differ")


def _fake_forward(input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int) -> Tensor:
    _check_shapes(input, weight, groups)
    return input.new_empty((input.shape[0], input.shape[1], weight.shape[0]))


def _fake_backward(grad_output: Tensor, input: Tensor, weight: Tensor, groups: int,
                   output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    _check_shapes(input, weight, groups)
    return (input.new_empty(input.shape) if output_mask[0] else input.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0),
            weight.new_empty(weight.shape[0]) if output_mask[2] else weight.new_empty(0))


def _check_segment_ids(input: Tensor, segment_ids: Tensor) -> None:
    torch._check(segment_ids.dim() == 2 and segment_ids.shape[0] == input.shape[0]
                 and segment_ids.shape[1] == input.shape[1],
                 lambda: f"grouped_conv1d_segments: segment_ids must be [B, T] = {tuple(input.shape[:2])}, "
                         f"got {tuple(segment_ids.shape)}")
    torch._check(segment_ids.dtype in _CPP_ID_DTYPES,
                 lambda: f"grouped_conv1d_segments: segment_ids must be integer, got {segment_ids.dtype}")


def _fake_segments_forward(input: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int,
                           segment_ids: Tensor) -> Tensor:
    _check_segment_ids(input, segment_ids)
    return _fake_forward(input, weight, bias, groups)


def _fake_segments_backward(grad_output: Tensor, input: Tensor, weight: Tensor, segment_ids: Tensor, groups: int,
                            output_mask: Sequence[bool]) -> tuple[Tensor, Tensor, Tensor]:
    _check_segment_ids(input, segment_ids)
    return _fake_backward(grad_output, input, weight, groups, output_mask)


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, groups = inputs
    ctx.save_for_backward(input, weight)
    ctx.groups = groups
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output: Tensor):
    input, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grad_input, grad_weight, grad_bias = torch.ops.groupbert.grouped_conv1d_backward(
        grad_output, input, weight, ctx.groups, mask)
    return (grad_input if mask[0] else None, grad_weight if mask[1] else None,
            grad_bias if mask[2] else None, None)


def _segments_setup_context(ctx, inputs, output) -> None:
    input, weight, bias, groups, segment_ids = inputs
    ctx.save_for_backward(input, weight, segment_ids)
    ctx.groups = groups
    ctx.has_bias = bias is not None


def _segments_backward(ctx, grad_output: Tensor):
    input, weight, segment_ids = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    grad_input, grad_weight, grad_bias = torch.ops.groupbert.grouped_conv1d_segments_backward(
        grad_output, input, weight, segment_ids, ctx.groups, mask)
    return (grad_input if mask[0] else None, grad_weight if mask[1] else None,
            grad_bias if mask[2] else None, None, None)  # groups and segment_ids: no gradient


def _no_double_backward(ctx, *grads):
    # Registered so that a second derivative fails loudly, rather than being silently dropped by the
    # dispatcher's fallback for ops without an autograd kernel.
    raise NotImplementedError("groupbert::grouped_conv1d: double backward is not supported; use "
                              "custom_ops.grouped_conv1d_reference (F.conv1d) for higher derivatives")


def _no_segments_double_backward(ctx, *grads):
    raise NotImplementedError("groupbert::grouped_conv1d_segments: double backward is not supported; use "
                              "custom_ops.grouped_conv1d_segments_reference for higher derivatives")
