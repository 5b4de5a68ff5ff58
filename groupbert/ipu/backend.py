"""Training on IPUs: everything PopTorch does for a training job, behind one class.

The training engine asks ``runtime.on_ipu`` and, when true, hands the model to :class:`IPUTrainer`, which

- checks that PopTorch can run it (hardware for ``ipu``; the IPU Model or the emulator for ``ipu-model``),
  pipelines the model over the IPUs (``pipeline.parallelize``: blocks and recomputation checkpoints) and
  builds PopTorch's AdamW or LAMB over the host's parameter groups (PopART updates on device);
- wraps the model so that only the loss (``poptorch.identity_loss``, for the backward pass) and the task's
  logging sums cross to the host, one scalar each, summed over the host call (``OutputMode.Sum``);
- compiles ``poptorch.trainingModel`` with the run's options (``options.build_options``);
- steps it: one host call is ``device_iterations`` optimizer steps whose micro-batches are concatenated in
  PopART's order ``[device_iterations, gradient_accumulation, replicas, micro_batch]``; the learning-rate
  schedule then advances by as many steps and the new values are uploaded with ``setOptimizer``, as
  PopTorch changes hyperparameters per host call;
- copies the weights back to the host for evaluation and checkpoints (``copyWeightsToHost``).

Checkpoints and resume use PopTorch 3.4's own mechanism (graphcore/poptorch@sdk-release-3.4
python/optim.py ``Optimizer``; python/_poplar_executor.py ``setOptimizer``, ``_get_optim_state_dict``,
``_on_device_attach``): ``trainingModel`` instruments the optimizer's ``state_dict()`` so that, after a
run, it reads the device state (``ipu_state``: PopART's ``Accl1___``/``Accl2___``/``Step___`` tensors per
weight; ``ipu_param``: the hyper-parameter tensors), which ``groupbert.training.checkpoint`` saves in its
"poptorch" format; on resume the engine calls ``optimizer.load_state_dict`` before :meth:`IPUTrainer.start`
wraps the model, and PopTorch writes that state to the device when the model attaches at its first call.

PopTorch options the recipe must not rely on are refused in ``groupbert.ipu.rules`` (AdamW's
``bias_correction=False``, which PopTorch 3.4 ignores); an unset LAMB ``max_weight_norm`` is PopTorch's
65500 here (logged), the host LAMB leaves the norm uncapped.

Nothing outside ``groupbert/ipu/`` imports PopTorch or the emulator.
"""
from __future__ import annotations

import inspect
import logging
import warnings
from typing import Callable, Sequence

import torch
import torch.nn as nn

from groupbert.config import ConfigError, RunConfig
from groupbert.ipu import USING_EMULATOR, poptorch
from groupbert.ipu.options import build_ipu_optimizer, build_options
from groupbert.ipu.pipeline import parallelize

logger = logging.getLogger(__name__)


class _OnDevice(nn.Module):
    """The model as it runs on the IPU: ``forward(**batch)`` returns the task's sums (one scalar each) and,
    last, the loss through ``identity_loss``, which PopTorch differentiates."""

    def __init__(self, model: nn.Module, sums: Callable):
        super().__init__()
        self.model, self._sums = model, sums

    def step(self, batch: dict) -> tuple:
        out = self.model(**batch)
        return (*self._sums(out, batch).unbind(0), poptorch.identity_loss(out.loss, reduction="none"))


def _device_module(model: nn.Module, keys: Sequence[str], sums: Callable) -> _OnDevice:
    """An :class:`_OnDevice` whose ``forward`` names the task's columns: PopTorch binds the inputs of a call
    to the parameters of ``forward``'s signature."""
    keys = tuple(keys)

    def forward(self, *args, **kwargs):
        batch = dict(zip(keys, args))
        batch.update(kwargs)
        return self.step({k: v for k, v in batch.items() if v is not None})

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    forward.__signature__ = inspect.Signature(
        [inspect.Parameter("self", kind)] + [inspect.Parameter(k, kind, default=None) for k in keys])
    cls = type("OnDevice", (_OnDevice,), {"forward": forward})
    return cls(model, sums)


class IPUTrainer:
    """A model trained through ``poptorch.trainingModel``; see the module docstring."""

    def __init__(self, model: nn.Module, cfg: RunConfig, batch_keys: Sequence[str], sums: Callable):
        if cfg.runtime.backend == "ipu" and (USING_EMULATOR or not poptorch.ipuHardwareIsAvailable()):
            raise ConfigError("runtime.backend ipu needs IPU hardware and the Poplar SDK's PopTorch; use "
                              "ipu-model to run the same code path on the IPU Model or the built-in emulator",
                              key="runtime.backend")
        if cfg.ipu.half and USING_EMULATOR:
            logger.warning("ipu.half: the emulator computes in fp32; fp16 applies on IPU hardware only")
        if cfg.optimizer.name == "lamb" and cfg.optimizer.max_weight_norm is None:
            logger.info("optimizer.max_weight_norm unset: PopTorch's LAMB caps the weight norm of the trust "
                        "ratio at 65500 (its default; the host LAMB does not cap it)")
        self.cfg, self.model, self.keys = cfg, model, tuple(batch_keys)
        parallelize(model, cfg.ipu.layers_per_ipu, recompute=cfg.ipu.recompute)
        self.optimizer = build_ipu_optimizer(model, cfg)
        self.steps_per_call = cfg.ipu.device_iterations
        self._device = _device_module(model, self.keys, sums)
        self.executor = None
        self.schedule = None

    def start(self, schedule) -> None:
        """Compile-ready: the schedule now wraps the optimizer, whose values go to the device. An optimizer
        state loaded before this (a resumed checkpoint, ``optimizer.load_state_dict``) is written to the
        device by PopTorch when the model attaches (its first call)."""
        self.schedule = schedule
        self.executor = poptorch.trainingModel(self._device, options=build_options(self.cfg), optimizer=self.optimizer)

    def run(self, micro_batches: list[dict]) -> list[float]:
        """One host call over ``micro_batches`` (this instance's share of ``device_iterations`` steps, in
        the order they were drawn); returns the task's sums added up over the call."""
        combined = {k: torch.cat([b[k] for b in micro_batches]) for k in self.keys if k in micro_batches[0]}
        outputs = self.executor(**combined)
        sums = [float(t.sum().double()) for t in outputs[:-1]]  # the identity loss (last) is also sums[0]
        # PopTorch changes hyperparameters per host call: advance the schedule, then upload it. The host
        # optimizer never steps (PopART updates on device), which LambdaLR would warn about.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(self.steps_per_call):
                self.schedule.step()
        self.executor.setOptimizer(self.optimizer)
        return sums

    def sync_to_host(self) -> None:
        """Weights back on the host (``copyWeightsToHost``); the optimizer's device state is read by its
        ``state_dict()`` (PopTorch instruments it). Before the first call nothing has left the host (and
        PopTorch refuses to copy)."""
        if self.executor is not None and self.executor.isCompiled():
            self.executor.copyWeightsToHost()
