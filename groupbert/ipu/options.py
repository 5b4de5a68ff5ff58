"""PopTorch options from the run configuration, one commented line per option (as Graphcore's
``ipu_options.py``), and the matching PopTorch optimizer."""
from __future__ import annotations

import inspect
import logging
import math

import torch

from groupbert.config import RunConfig, optimizer_kwargs
from groupbert.ipu import USING_EMULATOR, poptorch
from groupbert.ipu.popdist import build_popdist_options, popdist_env
from optimizers import param_groups
from optimizers.registry import resolve

logger = logging.getLogger(__name__)


def build_options(cfg: RunConfig, training: bool = True):
    ipu = cfg.ipu
    pod = popdist_env()
    if pod is not None:                                             # under poprun: popdist.poptorch.Options
        opts = build_popdist_options(poptorch, pod, USING_EMULATOR)  # local replicas + instance id from the env
    else:
        opts = poptorch.Options()
        opts.replicationFactor(ipu.replication_factor)              # data-parallel replicas
    opts.deviceIterations(ipu.device_iterations)                    # optimizer steps per host call
    opts.randomSeed(cfg.train.seed)                                 # IPU RNG (and torch's) for dropout / shuffling
    if training:
        opts.Training.gradientAccumulation(cfg.train.gradient_accumulation)  # micro-batches per update, per replica
        # average gradients over micro-batches and replicas: the same update as the CPU loop's
        opts.Training.accumulationAndReplicationReductionType(poptorch.ReductionType.Mean)
    opts.outputMode(poptorch.OutputMode.Sum)                        # cheap logging: the host divides by DI x GA
    # the tied MLM head returns to IPU 0 after the encoder, so stages must auto-increment (Graphcore's BERT)
    opts.setExecutionStrategy(poptorch.PipelinedExecution(poptorch.AutoStage.AutoIncrement))
    if ipu.available_memory_proportion:                             # temporaries for matmuls/convs, per IPU
        opts.setAvailableMemoryProportion({f"IPU{i}": p for i, p in enumerate(ipu.available_memory_proportion)})
    if ipu.optimizer_state_offchip:                                 # moments in streaming memory, not SRAM
        opts.TensorLocations.setOptimizerLocation(poptorch.TensorLocationSettings().useOnChipStorage(False))
    if ipu.half:                                                    # fp16 partials in matmuls and convolutions
        opts.Precision.setPartialsType(torch.half)
    if ipu.executable_cache_dir:                                    # reuse compiled executables across runs
        opts.enableExecutableCaching(ipu.executable_cache_dir)
    if cfg.runtime.backend == "ipu-model":                          # PopTorch's IPU Model (the emulator ignores it)
        opts.useIpuModel(True)
    if hasattr(opts, "_emulator"):                                  # emulator only: the memory it enforces per IPU
        opts._emulator.ipuMemoryBytes(int(ipu.ipu_memory_mb * 1e6))
    return opts


def build_ipu_optimizer(model: torch.nn.Module, cfg: RunConfig):
    """``poptorch.optim.AdamW`` or ``LAMB`` over the same parameter groups as on CPU/CUDA.

    Groups excluded from LAMB's trust ratio get ``max_weight_norm = 0``, which makes PopART's LAMB
    take a plain Adam step for them (Graphcore's BERT app does this for biases)."""
    o = cfg.optimizer
    groups = param_groups(model, o.weight_decay, decay_embeddings=o.decay_embeddings,
                          rotational_embeddings=o.rotational_embeddings, trust_ratio_vectors=o.trust_ratio_vectors)
    # unset settings take the defaults of our own AdamW / LAMB, so both backends run the same recipe
    cls, _ = resolve(o.name)
    default = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()}
    host = optimizer_kwargs(o)
    common = dict(lr=o.lr, betas=host.get("betas", default["betas"]), eps=host.get("eps", default["eps"]),
                  weight_decay=o.weight_decay,
                  bias_correction=host.get("bias_correction", default["bias_correction"]),
                  loss_scaling=cfg.ipu.loss_scaling)
    for g in groups:  # PopTorch optimizers take only their own group keys
        trust_ratio = g.pop("trust_ratio")
        for key in ("param_names", "group", "rotational"):
            g.pop(key, None)
        if o.name == "lamb" and not trust_ratio:
            g["max_weight_norm"] = 0.0
    if o.name == "adamw":
        clip = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else math.inf
        return poptorch.optim.AdamW(groups, max_grad_norm=clip, **common)
    return poptorch.optim.LAMB(groups, max_weight_norm=o.max_weight_norm, **common)
