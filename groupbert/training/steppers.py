"""One optimizer step (or one IPU host call of ``device_iterations`` steps) for any task.

``HostStepper`` runs on CPU/CUDA: ``micro_batches_per_step`` forward/backward passes, losses averaged,
global gradient clipping, the optimizer step, the schedule. ``IPUStepper`` draws the same micro-batches and
hands them to ``groupbert.ipu.backend.IPUTrainer``, which runs them through PopTorch (real or emulated) and
updates on device with the gradients averaged over micro-batches and replicas. Both consume micro-batches in
the same order, so the two paths train on the same samples. Under torchrun or PopRun (``dist``) each process
runs its share of the step's micro-batches and the logging sums are added up over the processes.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch

from groupbert.training.distributed import DistEnv, check_world_size, no_sync
from groupbert.training.precision import LossScaler, advance_schedule
from groupbert.training.task import Sums


@dataclass
class StepResult:
    sums: Sums
    lr: float
    grad_norm: float | None = None
    update_record: dict = field(default_factory=dict)
    precision_record: dict = field(default_factory=dict)  # fp16: loss_scale, skipped_steps


class HostStepper:
    steps_per_call = 1

    def __init__(self, model, optimizer, cfg, runtime, task, update_metrics=None, scaler=None):
        """``model`` is what runs forward/backward: the DDP wrapper under torchrun."""
        self.model, self.optimizer, self.cfg, self.task = model, optimizer, cfg, task
        self.device, self.autocast, self.dist = runtime.device, runtime.autocast, runtime.dist
        self.update_metrics = update_metrics
        self.scaler = scaler if scaler is not None else LossScaler(runtime.device, enabled=False)
        self.schedule = None

    def start(self, schedule) -> None:
        self.schedule = schedule

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
                with self.autocast(), _eager_if(measuring):
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


def _eager_if(measuring: bool):
    """A measured step (update metrics) runs eagerly under ``runtime.compile``: the forward hooks it adds for
    that step are not reliably in the compiled graph (dynamo does not guard on every submodule's hooks: the
    encoder layers' never fired, and their ``update_rrc`` went missing); without compile this changes nothing."""
    return torch.compiler.set_stance("force_eager") if measuring else contextlib.nullcontext()


class IPUStepper:
    """Under PopRun each instance feeds its own replicas its share of the step's micro-batches."""

    def __init__(self, trainer, cfg, task, dist: DistEnv):
        self.trainer, self.cfg, self.task, self.dist = trainer, cfg, task, dist
        self.optimizer = trainer.optimizer
        self.steps_per_call = trainer.steps_per_call

    def start(self, schedule) -> None:
        self.trainer.start(schedule)

    def run(self, batches, step: int) -> StepResult:
        n_micro = self.steps_per_call * check_world_size(self.cfg, self.dist.world_size)
        lr = self.optimizer.param_groups[0]["lr"]
        sums = self.trainer.run([next(batches) for _ in range(n_micro)])
        total = self.dist.all_reduce_sum(torch.tensor(sums, dtype=torch.float64)).tolist()  # all instances
        return StepResult(Sums(self.task.sum_names, total, n_micro * self.dist.world_size), lr)

    def sync_to_host(self) -> None:
        self.trainer.sync_to_host()
