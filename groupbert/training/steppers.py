"""One optimizer step (or one IPU host call of ``device_iterations`` steps) of pretraining, for any task
(``groupbert.training.tasks``: MLM + NSP or causal LM), and the SQuAD IPU step.

``HostStepper`` runs on CPU/CUDA: ``micro_batches_per_step`` forward/backward passes, losses averaged,
global gradient clipping, the optimizer step. ``IPUStepper`` hands the same micro-batches, concatenated
in PopART's order ``[device_iterations, gradient_accumulation, replicas, micro_batch]``, to a PopTorch
``trainingModel`` (real PopTorch or the built-in emulator), which averages the gradients over
micro-batches and replicas (``ReductionType.Mean``) and updates on device. Both consume micro-batches in
the same order, so the two paths train on the same samples.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from groupbert.training.distributed import DistEnv, check_world_size, no_sync
from groupbert.training.precision import LossScaler, advance_schedule
from groupbert.training.tasks import Sums


@dataclass
class StepResult:
    sums: Sums
    lr: float
    grad_norm: float | None = None
    update_record: dict = field(default_factory=dict)
    precision_record: dict = field(default_factory=dict)  # fp16: loss_scale, skipped_steps


class HostStepper:
    def __init__(self, model, optimizer, schedule, cfg, device, autocast, task, update_metrics=None, scaler=None,
                 dist_env=None):
        """``model`` is what runs forward/backward: the DDP wrapper under torchrun (``dist_env``)."""
        self.model, self.optimizer, self.schedule, self.cfg = model, optimizer, schedule, cfg
        self.device, self.autocast, self.task, self.update_metrics = device, autocast, task, update_metrics
        self.scaler = scaler if scaler is not None else LossScaler(device, enabled=False)
        self.dist = dist_env if dist_env is not None else DistEnv()
        self.steps_per_call = 1

    def run(self, batches, step: int) -> StepResult:
        cfg, task = self.cfg, self.task
        ga = check_world_size(cfg, self.dist.world_size)  # this rank's share of the step's micro-batches
        self.optimizer.zero_grad(set_to_none=True)
        measuring = self.update_metrics is not None and self.update_metrics.arm(step + 1)
        # the logging sums stay on the device: one host sync per step, not per micro-batch (which would
        # stall a GPU after every forward)
        acc = torch.zeros(len(task.sum_names), device=self.device)
        for i in range(ga):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in next(batches).items() if k in task.batch_keys}
            with no_sync(self.model, sync=i == ga - 1):  # DDP all-reduces once, after the last micro-batch
                with self.autocast():
                    out = self.model(**batch)
                self.scaler.backward(out.loss / ga)  # DDP then averages over ranks: the global mean
            acc += task.sums(out, batch)
        sums = Sums(task.sum_names, self.dist.all_reduce_sum(acc).tolist(), ga * self.dist.world_size)
        max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else math.inf
        lr = self.optimizer.param_groups[0]["lr"]
        if measuring:
            self.update_metrics.before_update()
        # unscale (fp16), clip, optimizer step unless a gradient overflowed
        grad_norm, _ = self.scaler.step(self.optimizer, self.model.parameters(), max_norm)
        advance_schedule(self.schedule)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        result = StepResult(sums, lr, grad_norm, precision_record=self.scaler.record())
        if measuring:
            result.update_record = self.update_metrics.after_update()
        return result

    def sync_to_host(self) -> None:
        pass


class IPUStepper:
    """Under PopRun (``dist_env``: one process per instance) each instance feeds its own replicas: its
    share of the step's micro-batches, and the logging sums are added up over the instances."""

    def __init__(self, model, cfg, poptorch, optimizer, schedule, options, task, dist_env=None):
        self.cfg, self.poptorch, self.optimizer, self.schedule, self.task = cfg, poptorch, optimizer, schedule, task
        self.dist = dist_env if dist_env is not None else DistEnv()
        self.steps_per_call = cfg.ipu.device_iterations
        self.device_model = task.device_module(model, poptorch)
        self.executor = poptorch.trainingModel(self.device_model, options=options, optimizer=optimizer)

    def run(self, batches, step: int) -> StepResult:
        n_micro = self.steps_per_call * check_world_size(self.cfg, self.dist.world_size)
        micro = [next(batches) for _ in range(n_micro)]
        combined = {k: torch.cat([b[k] for b in micro]) for k in self.task.batch_keys}
        lr = self.optimizer.param_groups[0]["lr"]
        outs = torch.stack([t.sum().double() for t in self.executor(**combined)])
        *rest, loss = self.dist.all_reduce_sum(outs).tolist()  # the task's sums, loss last; all instances
        # PopTorch changes hyperparameters per host call: advance the schedule, then upload it. The host
        # optimizer never steps (PopART updates on device), which LambdaLR would warn about.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(self.steps_per_call):
                self.schedule.step()
        self.executor.setOptimizer(self.optimizer)
        return StepResult(Sums(self.task.sum_names, [loss, *rest], n_micro * self.dist.world_size), lr)

    def sync_to_host(self) -> None:
        """Weights (and, through the optimizer object, its state) back on the host for eval/checkpoints.
        Before the first call nothing has left the host (and PopTorch refuses to copy)."""
        if self.executor.isCompiled():
            self.executor.copyWeightsToHost()


class QAOnDevice(nn.Module):
    """SQuAD span model on the IPU: only the loss crosses to the host."""

    def __init__(self, model: nn.Module, poptorch):
        super().__init__()
        self.model, self._poptorch = model, poptorch

    def forward(self, input_ids, token_type_ids, attention_mask, start_positions, end_positions, position_ids=None,
                segment_ids=None):
        out = self.model(input_ids, token_type_ids, attention_mask, start_positions, end_positions, position_ids,
                         segment_ids)
        return self._poptorch.identity_loss(out.loss, reduction="none")


class QAIPUStepper:
    """``device_iterations`` SQuAD fine-tuning steps per host call through ``poptorch.trainingModel``."""

    KEYS = ("input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions", "position_ids",
            "segment_ids")

    def __init__(self, model, cfg, poptorch, optimizer, schedule, options, dist_env=None):
        self.cfg, self.optimizer, self.schedule = cfg, optimizer, schedule
        self.dist = dist_env if dist_env is not None else DistEnv()
        self.steps_per_call = cfg.ipu.device_iterations
        self.executor = poptorch.trainingModel(QAOnDevice(model, poptorch), options=options, optimizer=optimizer)

    def run(self, batches) -> tuple[float, int, float, float]:
        """Returns (sum of micro-batch losses, number of micro-batches, lr used, features trained on)."""
        n_micro = self.steps_per_call * check_world_size(self.cfg, self.dist.world_size)
        micro = [next(batches) for _ in range(n_micro)]
        combined = {k: torch.cat([b[k] for b in micro]) for k in self.KEYS if k in micro[0]}
        features = float((combined["start_positions"] >= 0).sum()) * self.dist.world_size
        lr = self.optimizer.param_groups[0]["lr"]
        # OutputMode.Sum: summed over the host call; under PopRun also over the instances
        loss = float(self.dist.all_reduce_sum(self.executor(**combined).sum().double().reshape(1)))
        n_micro *= self.dist.world_size
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(self.steps_per_call):
                self.schedule.step()
        self.executor.setOptimizer(self.optimizer)
        return loss, n_micro, lr, features

    def sync_to_host(self) -> None:
        if self.executor.isCompiled():
            self.executor.copyWeightsToHost()
