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
from groupbert.training.precision import Precision, autocast_for, resolve_precision

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    device: torch.device     # the host device; on IPUs the model's home between host calls (CPU)
    autocast: Callable       # context manager: bf16/fp16 autocast or nothing (runtime.precision)
    dist: DistEnv            # this process's rank among torchrun ranks or PopRun instances
    on_ipu: bool             # PopTorch runs the training step (groupbert.ipu.backend)
    precision: Precision = Precision("fp32", "default")  # runtime.precision resolved (auto: by the hardware)


def setup_runtime(cfg: RunConfig) -> Runtime:
    """Threads, custom ops, device, autocast (``runtime.precision``; ``auto``: bf16 where the hardware has
    it natively, one INFO line says which and why), seeds and the process group; on the IPU backends
    PopTorch's rules are checked first (``groupbert.ipu.rules``), before any work."""
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
    precision = resolve_precision(cfg.runtime.precision, device, cfg.runtime.on_ipu)
    if cfg.runtime.precision == "auto":
        logger.info("precision auto -> %s (%s)", precision.name, precision.reason)
    else:
        logger.info("precision %s (set by runtime.precision)", precision.name)
    autocast = autocast_for(precision.dtype, device)  # fp16's loss scaler: precision.build_loss_scaler
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    dist_env, device = setup_distributed(cfg, device)  # torchrun / poprun: this process's share; else one
    return Runtime(device, autocast, dist_env, cfg.runtime.on_ipu, precision)


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


def compile_model(model: torch.nn.Module, cfg: RunConfig) -> None:
    """``runtime.compile`` on the host path: ``model.compile()`` (torch.compile, inductor) in place, so the
    parameters, ``state_dict`` keys, checkpoints, exports and the DDP wrapper are the eager model's.

    Shapes: ``dynamic=None`` (torch's default). A shape seen first compiles a static graph; when a shape
    changes (a smaller last evaluation batch, a smaller last training batch) dynamo recompiles once with
    that dimension symbolic: a run compiles a few graphs (training, and evaluation under no_grad, each at most
    once static and once with a symbolic batch size), not one per batch size."""
    if not cfg.runtime.compile:
        return
    if cfg.runtime.on_ipu:  # groupbert.ipu.rules refuses this first; kept so no path can compile for PopTorch
        raise ConfigError("true is for the host path (CPU/CUDA): on the IPU backends PopTorch compiles the "
                          "graph itself", key="runtime.compile")
    # GroupBERT's C++ conv is a torch.library op with fake and autograd kernels: one opaque node of the graph
    # (custom_ops/grouped_conv.py, ops_ready); no graph break.
    model.compile()
    logger.info("runtime.compile: torch.compile (inductor) on the model; the first training steps and the first "
                "evaluation include the compile time")
