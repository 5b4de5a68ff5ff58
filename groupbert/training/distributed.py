"""Multi-process data-parallel training on the host path: ``torchrun`` + ``DistributedDataParallel``.

Launched by ``torchrun --nproc_per_node N run_pretraining.py ...`` (or ``run_squad.py``), every process
finds ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in its environment (torch.distributed's env:// contract),
joins the process group (gloo on CPU, NCCL on CUDA, one GPU per ``LOCAL_RANK``) and wraps the model in
DDP. Without those variables (or with ``WORLD_SIZE=1``) nothing here does anything.

The numbers stay the configuration's whatever the world size:

- The global batch is ``micro_batch_size x gradient_accumulation x ipu.replication_factor`` as on one
  process; each of the W ranks runs ``micro_batches_per_step / W`` of the step's micro-batches (an error
  naming ``train.gradient_accumulation`` when that does not divide), backward through ``no_sync()`` on all
  but its last one, so gradients are all-reduced once per step. DDP averages over ranks and each rank
  averages over its micro-batches, so the update is the one-process mean over all micro-batches.
- Data: one seeded permutation per epoch, identical on every rank; the step's micro-batches are dealt
  out round-robin (global micro-batch ``g`` goes to rank ``g mod W``), so every sequence is seen once per
  epoch across ranks and the step sees exactly the sequences one process would (``EpochBatches``).
- The data position in checkpoints counts global micro-batches and the weights are the unwrapped model's,
  so a run can resume on a different world size.
- Rank 0 alone writes config.yaml, metrics.jsonl, W&B and checkpoints, and runs evaluation; logging on
  the other ranks is cut to warnings. The logged training sums are all-reduced, so they cover all ranks.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from groupbert.config import ConfigError, RunConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (e.g. fills the tokenised-data cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def env_from_environment() -> DistEnv:
    """``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` as torchrun sets them (absent: one process)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ConfigError(f"torchrun environment is malformed: {e}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"torchrun environment has RANK={rank} outside WORLD_SIZE={world}")
    return DistEnv(rank, world, local)


def check_world_size(cfg: RunConfig, world_size: int) -> int:
    """Micro-batches each rank runs per optimizer step; the config's global batch must split evenly."""
    k = cfg.micro_batches_per_step
    if k % world_size:
        raise ConfigError(f"the global batch of {k} micro-batches per step (train.gradient_accumulation "
                          f"{cfg.train.gradient_accumulation} x ipu.replication_factor {cfg.ipu.replication_factor}) "
                          f"does not split over {world_size} processes; make it a multiple of the world size "
                          f"(the global batch stays the config's whatever the number of processes)",
                          key="train.gradient_accumulation")
    return k // world_size


def setup_distributed(cfg: RunConfig, device: torch.device) -> tuple[DistEnv, torch.device]:
    """Join the process group when launched by torchrun (or by poprun on the IPU path,
    ``groupbert.ipu.popdist.join_pod``); returns the rank's view and its device."""
    env = env_from_environment()
    if cfg.runtime.on_ipu:
        from groupbert.ipu.popdist import join_pod
        pod = join_pod(cfg, env.enabled)
        if pod is None:
            return DistEnv(), device
        env = DistEnv(pod.instance_index, pod.num_instances, pod.instance_index)
        check_world_size(cfg, env.world_size)
        if not env.is_main:
            logging.getLogger("groupbert").setLevel(logging.WARNING)
        logger.info("poprun: instance %d of %d, %d of %d replicas, %d IPUs each", env.rank, env.world_size,
                    pod.local_replicas, pod.total_replicas, pod.ipus_per_replica)
        return env, device
    if not env.enabled:
        return env, device
    check_world_size(cfg, env.world_size)
    if device.type == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if not env.is_main:  # rank-0 filtering, in one place
        logging.getLogger("groupbert").setLevel(logging.WARNING)
    logger.info("distributed: %d processes (%s), global batch %d = %d per rank per step", env.world_size,
                dist.get_backend(), cfg.global_batch_size, cfg.global_batch_size // env.world_size)
    return env, device


def wrap_model(model: torch.nn.Module, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """The module that runs forward/backward: DDP around ``model`` when distributed, else ``model``."""
    if not env.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync(model: torch.nn.Module, sync: bool):
    """DDP's ``no_sync()`` for a micro-batch whose gradients should only accumulate locally."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def cleanup(env: DistEnv, ok: bool = True) -> None:
    """Leave the process group; after a success, wait for rank 0's final checkpoint first."""
    if env.enabled and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()
