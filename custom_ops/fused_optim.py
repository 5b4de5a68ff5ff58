r"""Fused multi-tensor AdamW and LAMB updates on CPU: one C++ op call per parameter group.

``groupbert::fused_adamw_`` and ``groupbert::fused_lamb_`` (``csrc/fused_optim.cpp``) apply the equations
of :class:`optimizers.adamw.AdamW` and :class:`optimizers.lamb.LAMB`; the class docstrings there carry
them. ``groupbert::global_grad_norm`` is the fused (Σ_j ‖g_j‖²)^½ that LAMB's ``max_grad_norm`` clip needs
over all groups. The ops update their arguments in place (params, moments and the float32 host step
counters, which they increment) and return nothing. Their schemas carry alias annotations, so
``torch.compile`` functionalises them and :func:`torch.library.opcheck` passes.

Numerics. The operations follow the Python single-tensor paths (``_single_tensor_adamw``,
``_single_tensor_lamb``) line by line:

- AdamW: the same operations in the same order, divisions included. The division by the per-tensor
  constant √(1 − β2^t) uses three FMA-unit operations that round exactly as a division does (Markstein),
  because the divider is busy with √ and the division by √v̂ + ε. Results match the Python path to about
  one ulp per step. (Compilers contract a·b + c differently.)
- LAMB: the same order, but ĝ = g / divisor, m / (1 − β1^t) and √v / √(1 − β2^t) multiply by the
  reciprocal, which is within 1 ulp of the division. The exact form cost ~10% of LAMB's time. LAMB's
  results differ from the Python path's far more through the norms anyway: those are summed in blocks
  of 256 elements in the tensor's dtype, with the block sums added in double, where torch's float32
  norm of a 1M-element tensor can be off by 1e-5 relative.
- Sums of squares are taken per fixed chunk and added in chunk order, so results are bitwise the same
  for any thread count.

Memory traffic. The update is memory-bound: a few flops per 4-byte word moved.

- All tensors of a call are cut into 16 Ki-element chunks. Threads take chunks dynamically, so one
  embedding and hundreds of bias vectors share the threads evenly. Each inner loop is a contiguous
  vectorised pass over one chunk (the compiler's choice for -march=native: 512-bit on the Zen 4 this
  was tuned on, which measured as fast as or faster than 256-bit code in the memory-bound case).
  Per-tensor scalars (β^t corrections, trust ratio) are computed once, outside the loops.
- AdamW takes one pass: read θ, g, m, v and write θ, m, v. That is 7 words per element, the minimum;
  ``torch.optim.AdamW(fused=True)`` moves the same.
- LAMB's trust ratio needs ‖θ‖ and ‖u‖ of the whole tensor before θ may change, so it takes two passes.
  Pass 1 reads θ, g, m, v, writes m and v, and sums θ² and u². Pass 2 writes θ − η r u. The passes run
  per batch of tensors of at most 1.25 Mi elements (a larger tensor is a batch of its own). Each
  thread's pass 2 walks backwards over the chunks it did in pass 1, so it starts with the data its core
  touched last, still in L2/L3. For a batch that fits, pass 1 also keeps u in a small per-thread scratch
  buffer that stays in cache, and pass 2 reads only u and θ: about 7 words per element in all. For a
  larger tensor, pass 2 recomputes u bit for bit from m, v and θ: 10 words, minus the cached tail.
  Storing u in a tensor-sized scratch would also cost 10 words, plus read-for-ownership of the scratch.
  Taking chunks dynamically in pass 2 was slower than reading from memory, because the other core then
  fetched lines from this core's L2. So chunks are assigned statically per batch. The threads meet once
  per batch; a thread that waits meanwhile runs its pass 1 of the next batch (double-buffered scratch).
  There is one fork/join per call. Groups with ``trust_ratio=False`` take one pass, as AdamW.
- With ``max_grad_norm``, :func:`global_grad_norm` adds one read of every gradient (1 word). This is a
  global barrier: every gradient must be seen before any moment changes. It cannot be fused into the
  passes.

``benchmarks/bench_fused_optim.py`` measures all of this on GroupBERT Base against
``torch.optim.AdamW(fused=True)`` and a plain copy.

There is no CUDA kernel (none could be tested here); on CUDA the optimizers keep their foreach path. The
library is built or loaded, and the fake kernels registered, on the first call that wants it, never at
import. :func:`fused_available` says whether a set of tensors can take this path.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

from custom_ops import _build

__all__ = ["fused_adamw_", "fused_available", "fused_lamb_", "global_grad_norm", "ops_ready",
           "unsupported_reason"]

_LIB = "fused_optim"
_DTYPES = (torch.float32, torch.float64)
_registered = False


def ops_ready() -> bool:
    """True if the ``groupbert`` fused optimizer ops are loaded, enabled and their fake kernels registered
    (building the library on first use; ``GROUPBERT_CUSTOM_OPS=on`` raises instead of returning False)."""
    if not _build.available(_LIB):
        return False
    if not _registered:
        _register()
    return True


def unavailable_reason() -> str:
    """Why :func:`ops_ready` is False, for error messages."""
    if _build.mode() == "off":
        return f"custom ops are disabled ({_build.ENV_MODE}=off)"
    return f"custom op library {_LIB!r} could not be built or loaded: {_build.errors().get(_LIB, 'not built')}"


def unsupported_reason(tensors: Iterable[Tensor]) -> Optional[str]:
    """None if every tensor can take the fused path (dense, contiguous, CPU, float32/float64), else why not."""
    for t in tensors:
        if t.device.type != "cpu":
            return f"a tensor is on {t.device} (the fused kernels are CPU-only)"
        if t.layout != torch.strided:
            return f"a tensor has layout {t.layout} (the fused kernels need dense tensors)"
        if t.dtype not in _DTYPES:
            return f"a tensor has dtype {t.dtype} (the fused kernels support float32 and float64)"
        if not t.is_contiguous():
            return f"a tensor of shape {tuple(t.shape)} is not contiguous"
    return None


def fused_available(tensors: Iterable[Tensor]) -> bool:
    """True if the library is in use and every tensor is a dense contiguous CPU float32/float64 tensor."""
    tensors = list(tensors)
    return unsupported_reason(tensors) is None and ops_ready()


def _require_ops(name: str) -> None:
    if not ops_ready():
        raise _build.CustomOpsError(f"{name}: {unavailable_reason()}")


def fused_adamw_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                 state_steps: list[Tensor], *, lr: float, beta1: float, beta2: float, eps: float,
                 weight_decay: float, bias_correction: bool = True, maximize: bool = False) -> None:
    """One AdamW step (:class:`optimizers.adamw.AdamW`) for every tensor, in place; increments ``state_steps``.
    Raises :class:`custom_ops.CustomOpsError` if the library is unavailable."""
    _require_ops("fused_adamw_")
    if not params:
        return
    torch.ops.groupbert.fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, state_steps, float(lr), float(beta1),
                                     float(beta2), float(eps), float(weight_decay), bool(bias_correction),
                                     bool(maximize))


def fused_lamb_(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                state_steps: list[Tensor], *, grad_divisor: Optional[Tensor] = None, lr: float, beta1: float,
                beta2: float, eps: float, weight_decay: float, bias_correction: bool = True,
                max_weight_norm: Optional[float] = None, trust_ratio: bool = True) -> None:
    """One LAMB step (:class:`optimizers.lamb.LAMB`) for one group, in place; ``grad_divisor`` is the global
    clip factor max(1, G/c) (a one-element CPU tensor) or None. Increments ``state_steps``."""
    _require_ops("fused_lamb_")
    if not params:
        return
    torch.ops.groupbert.fused_lamb_(params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_divisor, float(lr),
                                    float(beta1), float(beta2), float(eps), float(weight_decay),
                                    bool(bias_correction),
                                    None if max_weight_norm is None else float(max_weight_norm), bool(trust_ratio))


def global_grad_norm(grads: list[Tensor]) -> Tensor:
    """(Σ_j ‖g_j‖²)^½ over dense contiguous CPU float32/float64 tensors in one fused pass, as a 0-dim
    float32 tensor (float64 if any gradient is float64); the sum is taken in double."""
    _require_ops("global_grad_norm")
    if not grads:
        raise ValueError("global_grad_norm: no gradients")
    return torch.ops.groupbert.global_grad_norm(grads)


def _register() -> None:
    """Fake kernels for the ops the library just defined (once per process)."""
    global _registered
    torch.library.register_fake("groupbert::fused_adamw_")(_fake_adamw)
    torch.library.register_fake("groupbert::fused_lamb_")(_fake_lamb)
    torch.library.register_fake("groupbert::global_grad_norm")(_fake_global_grad_norm)
    _registered = True


def _fake_adamw(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr, beta1, beta2, eps, weight_decay,
                bias_correction, maximize) -> None:
    return None


def _fake_lamb(params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_divisor, lr, beta1, beta2, eps,
               weight_decay, bias_correction, max_weight_norm, trust_ratio) -> None:
    return None


def _fake_global_grad_norm(grads) -> Tensor:
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    return grads[0].new_empty((), dtype=dtype)
