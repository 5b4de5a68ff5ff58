"""What every job sets up before it touches data: the run directory's state, the device, precision, seeds."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

import torch

from groupbert.config import ConfigError, RunConfig
from groupbert.training import checkpoint as ckpt_io
from groupbert.training.precision import autocast_context

logger = logging.getLogger(__name__)


def select_device(backend: str) -> torch.device:
    """The host device; the IPU backends keep the model on the CPU host and run it through PopTorch."""
    if backend in ("ipu", "ipu-model"):
        return torch.device("cpu")
    if backend == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but torch sees no GPU", key="runtime.backend")
    if backend == "auto":
        backend = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(backend)


def open_run(run_dir: Path, resume: bool) -> Optional[ckpt_io.Checkpoint]:
    """The checkpoint to resume from, or None for a new run; never starts over an existing run."""
    if not resume and ckpt_io.has_checkpoint(run_dir):
        raise ConfigError(f"{run_dir} already holds checkpoints; pass --resume {run_dir} to continue it "
                          f"or choose another --output-dir")
    return ckpt_io.read_checkpoint(run_dir) if resume else None


def setup_runtime(cfg: RunConfig) -> tuple[torch.device, Callable]:
    """Threads, device, the autocast context (bf16 on CUDA by default, ``runtime.precision``) and the seeds."""
    import random
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    _setup_custom_ops(cfg.runtime.custom_ops)
    device = select_device(cfg.runtime.backend)
    if device.type == "cuda":
        logger.info("custom ops are CPU kernels: on CUDA the conv runs cuDNN through F.conv1d and the optimizers "
                    "their foreach path")
    autocast = autocast_context(cfg.runtime.precision, device)  # fp16's loss scaler: precision.build_loss_scaler
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    return device, autocast


def _setup_custom_ops(config_mode: str) -> None:
    """Pick the C++ kernels or the PyTorch reference for this run and say which (an unbuilt library in
    ``on`` mode is a CustomOpsError, reported with exit 2)."""
    import os

    import custom_ops
    from custom_ops import _build
    env = os.environ.get(_build.ENV_MODE)
    custom_ops.set_mode(None if env else config_mode)
    for name, how in custom_ops.status().items():
        logger.info("custom op %s: %s%s", name, how, f" ({_build.ENV_MODE}={env})" if env else "")


def build_run_optimizer(model: torch.nn.Module, cfg: RunConfig):
    """The optimizer for ``model``: ours on CPU/CUDA; on the IPU backends the model is pipelined first and
    the optimizer is PopTorch's (AdamW/LAMB, updated on device). Returns (optimizer, poptorch or None)."""
    if cfg.runtime.backend not in ("ipu", "ipu-model"):
        from groupbert.training.optim import build_optimizer
        return build_optimizer(model, cfg.optimizer), None
    from groupbert.ipu import USING_EMULATOR, poptorch
    from groupbert.ipu.options import build_ipu_optimizer
    from groupbert.ipu.pipeline import parallelize
    if cfg.runtime.backend == "ipu" and (USING_EMULATOR or not poptorch.ipuHardwareIsAvailable()):
        raise ConfigError("runtime.backend ipu needs IPU hardware and the Poplar SDK's PopTorch; use "
                          "ipu-model to run the same code path on the IPU Model or the built-in emulator",
                          key="runtime.backend")
    if cfg.ipu.half and USING_EMULATOR:
        logger.warning("ipu.half: the emulator computes in fp32; fp16 applies on IPU hardware only")
    parallelize(model, cfg.ipu.layers_per_ipu, recompute=cfg.ipu.recompute)
    return build_ipu_optimizer(model, cfg), poptorch


def restore_run(ckpt: ckpt_io.Checkpoint, model: torch.nn.Module, optimizer, batches,
                scaler=None) -> tuple[int, Optional[str]]:
    """Weights, optimizer state, fp16 loss scale, data position and RNG from ``ckpt``; returns (step, W&B run id)."""
    ckpt_io.load_model_weights(model, ckpt)
    ckpt_io.load_optimizer_state(optimizer, ckpt)
    if scaler is not None:
        scaler.load_state_dict(ckpt.state.get("loss_scaler"))
    try:
        batches.load_state_dict(ckpt.state["data"])
    except ValueError as e:
        raise ckpt_io.CheckpointError(f"{ckpt.path}: {e}") from None
    ckpt_io.restore_rng(ckpt)
    logger.info("resuming from %s (step %d)", ckpt.path, ckpt.step)
    return ckpt.step, ckpt.state.get("run_id")
