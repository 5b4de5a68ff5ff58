"""Where and how a job runs, set up before it touches data: threads, kernels, device, precision, seeds,
the process group, and whether PopTorch steps the model. The rest of the code asks this object."""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Callable

import torch

from groupbert.config import ConfigError, RunConfig
from groupbert.training.distributed import DistEnv, setup_distributed
from groupbert.training.precision import autocast_context

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    device: torch.device     # the host device; on IPUs the model's home between host calls (CPU)
    autocast: Callable       # context manager: bf16/fp16 autocast or nothing (runtime.precision)
    dist: DistEnv            # this process's rank among torchrun ranks or PopRun instances
    on_ipu: bool             # PopTorch runs the training step (groupbert.ipu.backend)


def setup_runtime(cfg: RunConfig) -> Runtime:
    """Threads, custom ops, device, autocast (bf16 on CUDA by default), seeds and the process group; on the
    IPU backends PopTorch's rules are checked first (``groupbert.ipu.rules``), before any work."""
    if cfg.runtime.on_ipu:
        from groupbert.ipu.rules import check_run_config
        check_run_config(cfg)
    if cfg.runtime.threads:
        torch.set_num_threads(cfg.runtime.threads)
    _setup_custom_ops(cfg.runtime.custom_ops)
    device = select_device(cfg)
    if device.type == "cuda":
        logger.info("custom ops are CPU kernels: on CUDA the conv runs cuDNN through F.conv1d and the optimizers "
                    "their foreach path")
    autocast = autocast_context(cfg.runtime.precision, device)  # fp16's loss scaler: precision.build_loss_scaler
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    dist_env, device = setup_distributed(cfg, device)  # torchrun / poprun: this process's share; else one
    return Runtime(device, autocast, dist_env, cfg.runtime.on_ipu)


def select_device(cfg: RunConfig) -> torch.device:
    """The host device; the IPU backends keep the model on the CPU host and run it through PopTorch."""
    backend = cfg.runtime.backend
    if cfg.runtime.on_ipu:
        return torch.device("cpu")
    if backend == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but torch sees no GPU", key="runtime.backend")
    if backend == "auto":
        backend = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(backend)


def _setup_custom_ops(config_mode: str) -> None:
    """Pick the C++ kernels or the PyTorch reference for this run and say which (an unbuilt library in
    ``on`` mode is a CustomOpsError, reported with exit 2)."""
    import custom_ops
    from custom_ops import _build
    env = os.environ.get(_build.ENV_MODE)
    custom_ops.set_mode(None if env else config_mode)
    for name, how in custom_ops.status().items():
        logger.info("custom op %s: %s%s", name, how, f" ({_build.ENV_MODE}={env})" if env else "")
