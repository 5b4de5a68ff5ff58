"""What every job sets up before it touches data: the run directory's state, the device, precision, seeds."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Optional

import torch

from groupbert.config import ConfigError, RunConfig
from groupbert.training import checkpoint as ckpt_io


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
    """Threads, device, the autocast context (bf16 on CUDA by default) and the seeds."""
    import random
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    device = select_device(cfg.runtime.backend)
    use_bf16 = cfg.runtime.precision == "bf16" or (cfg.runtime.precision == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    return device, autocast
