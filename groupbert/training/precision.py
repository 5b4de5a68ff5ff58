"""Mixed precision on the host path (CPU / CUDA): the autocast context and fp16 loss scaling.

``runtime.precision``:

- ``fp32``: no autocast.
- ``bf16``: ``torch.autocast(dtype=bfloat16)``; bf16 has fp32's exponent range, so no loss scaling.
- ``fp16``: ``torch.autocast(dtype=float16)`` with loss scaling (Micikevicius et al. 2018, "Mixed Precision
  Training", arXiv:1710.03740): the loss is multiplied by ``S`` before backward so small gradients survive
  fp16, and the gradients are divided by ``S`` again before clipping and the optimizer, so the update
  equals the unscaled one. ``runtime.loss_scale`` is a fixed ``S`` or ``"dynamic"``: start at
  ``runtime.loss_scale_init``, halve ``S`` and skip the step when any gradient is inf/NaN, double it after
  ``runtime.loss_scale_growth_interval`` good steps in a row (torch's GradScaler rule, as NVIDIA Apex
  and Megatron). A step with an inf/NaN gradient is skipped with either kind of scale, so an overflow is
  never applied to the weights; skipped steps are counted and logged (``skipped_steps``, ``loss_scale``).
- ``auto``: bf16 where the hardware computes it natively, else fp32 (:func:`resolve_precision`, logged
  once at set-up with the reason): a CUDA GPU with native bf16 (``torch.cuda.is_bf16_supported(
  including_emulation=False)``: Ampere and newer), a CPU with AMX or AVX512-BF16 (``/proc/cpuinfo`` flags
  ``amx_bf16`` / ``avx512_bf16``: Intel Cooper Lake and Sapphire Rapids onwards, AMD Zen 4 onwards).
  Elsewhere bf16 is emulated (older GPUs convert, older CPUs convert in software), slower than fp32, so
  ``auto`` keeps fp32. The IPU backends' host model stays fp32 (the IPU has its own ``ipu.half``).

Weights, gradients and optimizer state stay fp32 (autocast casts copies for the matmuls), so the
optimizer updates fp32 master weights. The scaling itself is ``torch.amp.GradScaler``, which works with
any ``torch.optim.Optimizer`` (ours included): it unscales the ``.grad`` tensors in place and calls
``optimizer.step()`` only when they are all finite. A skipped step still counts towards
``train.max_steps`` and the learning-rate schedule (torch's AMP recipe), which keeps the schedule a pure
function of the step for ``--resume``.

The IPU path has its own settings (``ipu.half``, ``ipu.loss_scaling``: PopTorch's static scale).
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from groupbert.training.hardware import cpu_features, native_bf16

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    """``runtime.precision`` resolved for a device: ``name`` fp32 | bf16 | fp16, and why (for ``auto``)."""
    name: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: fp32, no autocast)."""
        return DTYPES.get(self.name)


def resolve_precision(precision: str, device: torch.device, on_ipu: bool = False) -> Precision:
    """``fp32`` / ``bf16`` / ``fp16`` as given; ``auto`` by the hardware (module docstring)."""
    if precision != "auto":
        return Precision(precision, f"runtime.precision: {precision}")
    if on_ipu:
        return Precision("fp32", "IPU backend: the host model stays fp32, the IPU's precision is ipu.half")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return Precision("bf16", "CUDA device has native bf16")
        return Precision("fp32", "CUDA device has no native bf16 (before Ampere)")
    if device.type == "cpu":
        native = native_bf16(cpu_features())
        if native:
            return Precision("bf16", f"CPU has {native}")
        return Precision("fp32", "CPU has no native bf16: no AVX512-BF16 or AMX")
    return Precision("fp32", f"no bf16 rule for {device.type} devices")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``runtime.precision`` on ``device`` (None: fp32, no autocast)."""
    return resolve_precision(precision, device).dtype


def autocast_context(precision: str, device: torch.device) -> Callable:
    return autocast_for(autocast_dtype(precision, device), device)


def autocast_for(dtype: torch.dtype | None, device: torch.device) -> Callable:
    """A factory of autocast contexts for ``dtype`` on ``device`` (None: a no-op context)."""
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device.type, dtype=dtype)


class LossScaler:
    """Loss scaling around backward and the optimizer step (a no-op unless ``enabled``).

    Per optimizer step::

        scaler.backward(loss / ga)                 # every micro-batch: (S * loss).backward()
        grad_norm, skipped = scaler.step(optimizer, params, max_norm)  # unscale, clip, step or skip, update S
    """

    def __init__(self, device: torch.device, enabled: bool, loss_scale: float | str = "dynamic",
                 init_scale: float = 2.0 ** 16, growth_interval: int = 2000):
        self.enabled = enabled
        self.dynamic = loss_scale == "dynamic"
        self.static_scale = None if self.dynamic else float(loss_scale)
        self.skipped_steps = 0
        self._scaler = torch.amp.GradScaler(
            device.type, enabled=enabled, init_scale=init_scale if self.dynamic else self.static_scale,
            growth_factor=2.0, backoff_factor=0.5, growth_interval=growth_interval)

    @property
    def scale(self) -> float:
        return float(self._scaler.get_scale()) if self.enabled else 1.0

    def backward(self, loss: torch.Tensor) -> None:
        self._scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, params, max_norm: float) -> tuple[float, bool]:
        """Unscale the gradients, clip them to ``max_norm`` (inf: measure only), run ``optimizer.step()``
        unless a gradient is inf/NaN, update the scale. Returns (grad norm before clipping, skipped)."""
        if not self.enabled:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            optimizer.step()
            return grad_norm, False
        self._scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        # GradScaler's own verdict (the one its step() acts on), not our norm: a finite-gradient step
        # whose fp32 norm overflows is still taken, as GradScaler takes it
        skipped = sum(float(v) for v in self._scaler._found_inf_per_device(optimizer).values()) > 0
        self._scaler.step(optimizer)
        self._scaler.update(self.static_scale)  # static: reset to the fixed value; dynamic: grow/back off
        self.skipped_steps += int(skipped)
        return grad_norm, skipped

    def record(self) -> dict:
        """Fields for the train record."""
        return {"loss_scale": self.scale, "skipped_steps": self.skipped_steps} if self.enabled else {}

    def state_dict(self) -> dict:
        """JSON-serialisable state for the checkpoint's state.json."""
        if not self.enabled:
            return {}
        s = self._scaler.state_dict()
        return {"scale": float(s["scale"]), "growth_tracker": int(s["_growth_tracker"]),
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict | None) -> None:
        """Restore a checkpoint's scaler state; a checkpoint from an fp32/bf16 run starts the scale fresh."""
        if not self.enabled or not state:
            return
        s = self._scaler.state_dict()
        s["scale"] = state["scale"] if self.dynamic else self.static_scale
        s["_growth_tracker"] = state["growth_tracker"]
        self._scaler.load_state_dict(s)
        self.skipped_steps = int(state["skipped_steps"])


def advance_schedule(schedule) -> None:
    """``schedule.step()`` after every optimizer step, taken or skipped; a skipped first step would make
    torch warn that the schedule runs ahead of the optimizer, which here is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        schedule.step()


def build_loss_scaler(runtime_cfg, device: torch.device) -> LossScaler:
    """The loss scaler for ``runtime.precision`` (enabled for fp16 only)."""
    return LossScaler(device, enabled=runtime_cfg.precision == "fp16", loss_scale=runtime_cfg.loss_scale,
                      init_scale=runtime_cfg.loss_scale_init,
                      growth_interval=runtime_cfg.loss_scale_growth_interval)
