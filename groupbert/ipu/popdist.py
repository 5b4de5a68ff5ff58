"""PopRun / PopDist: the IPU path on a pod, several host processes ("instances") over many replicas.

``poprun --num-instances I --num-replicas R --ipus-per-replica P python run_pretraining.py ...`` starts I
processes through MPI and tells each its share in the environment (names as PopRun exports them, e.g.
``POPDIST_NUM_TOTAL_REPLICAS=16 POPDIST_NUM_IPUS_PER_REPLICA=4 POPDIST_NUM_LOCAL_REPLICAS=16
POPDIST_REPLICA_INDEX_OFFSET=0`` in a POD64 run of Graphcore's BERT app):

- ``POPDIST_NUM_TOTAL_REPLICAS``: replicas over all instances (R);
- ``POPDIST_NUM_LOCAL_REPLICAS``: replicas this instance drives (R / I with uniform instances);
- ``POPDIST_NUM_IPUS_PER_REPLICA``: IPUs per replica (the pipeline length P);
- ``POPDIST_REPLICA_INDEX_OFFSET``: the first replica of this instance, so the instance index is
  ``offset // local`` and the instance count ``total // local`` (how Graphcore's apps derive them);
- ``OMPI_COMM_WORLD_RANK`` / ``OMPI_COMM_WORLD_SIZE`` (mpirun), which PopTorch's ``Options.Distributed``
  reads by default; when present they must agree with the above.

:func:`build_popdist_options` is what ``popdist.poptorch.Options(ipus_per_replica=P)`` does: a
``poptorch.Options`` with ``replicationFactor(local replicas)`` and ``Distributed.configureProcessId(
instance, instances)``; with the Poplar SDK's ``popdist`` installed (and real PopTorch) the SDK's class is
used itself. The replicas of all instances form one data-parallel group on the IPU-Links, so the update
is the mean over ``micro_batch x GA x R`` samples, as ``ipu.replication_factor: R`` in one process.

The built-in emulator honours the same environment: each instance is one process, and its executor
all-reduces the gradients across instances over a ``torch.distributed`` gloo group (host-side, which the
application also uses for logging sums and barriers) before the single update, standing in for the
IPU-Link all-reduce. So a PopRun launch can be rehearsed on a CPU (the README shows how).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from groupbert.config import ConfigError, RunConfig

ENV_TOTAL = "POPDIST_NUM_TOTAL_REPLICAS"
ENV_LOCAL = "POPDIST_NUM_LOCAL_REPLICAS"
ENV_IPUS = "POPDIST_NUM_IPUS_PER_REPLICA"
ENV_OFFSET = "POPDIST_REPLICA_INDEX_OFFSET"


@dataclass(frozen=True)
class PopDistEnv:
    total_replicas: int
    local_replicas: int
    ipus_per_replica: int
    replica_offset: int

    @property
    def num_instances(self) -> int:
        return self.total_replicas // self.local_replicas

    @property
    def instance_index(self) -> int:
        return self.replica_offset // self.local_replicas


def popdist_env() -> Optional[PopDistEnv]:
    """The PopRun environment of this process, or None when not launched by PopRun."""
    if ENV_TOTAL not in os.environ:
        return None

    def read(name: str, default: str | None = None) -> int:
        raw = os.environ.get(name, default)
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"PopRun environment variable {name}={raw!r} is not an integer") from None

    env = PopDistEnv(read(ENV_TOTAL), read(ENV_LOCAL, os.environ[ENV_TOTAL]), read(ENV_IPUS, "1"), read(ENV_OFFSET, "0"))
    if env.local_replicas < 1 or env.total_replicas % env.local_replicas:
        raise ConfigError(f"PopRun environment: {ENV_TOTAL}={env.total_replicas} is not a multiple of "
                          f"{ENV_LOCAL}={env.local_replicas} (instances must drive the same number of replicas)")
    for var, expected in (("OMPI_COMM_WORLD_SIZE", env.num_instances), ("OMPI_COMM_WORLD_RANK", env.instance_index)):
        if var in os.environ and int(os.environ[var]) != expected:
            raise ConfigError(f"PopRun environment: {var}={os.environ[var]} disagrees with the replica layout "
                              f"({ENV_TOTAL}, {ENV_LOCAL}, {ENV_OFFSET} give {expected})")
    return env


def check_popdist_config(cfg: RunConfig, env: PopDistEnv) -> None:
    """The config's replica count and pipeline must be the ones PopRun launched (no silent overwrite)."""
    if cfg.ipu.replication_factor != env.total_replicas:
        raise ConfigError(f"poprun launched {env.total_replicas} replicas ({ENV_TOTAL}) but the config has "
                          f"{cfg.ipu.replication_factor}; set ipu.replication_factor={env.total_replicas} (the global "
                          f"batch is micro_batch_size x gradient_accumulation x replication_factor, so adjust "
                          f"train.gradient_accumulation to keep it)", key="ipu.replication_factor")
    n_ipus = len(cfg.ipu.layers_per_ipu or [0])
    if env.ipus_per_replica != n_ipus:
        raise ConfigError(f"poprun gives each replica {env.ipus_per_replica} IPUs ({ENV_IPUS}) but the pipeline "
                          f"spans {n_ipus}; pass --ipus-per-replica {n_ipus} to poprun", key="ipu.layers_per_ipu")


def build_popdist_options(poptorch, env: PopDistEnv, using_emulator: bool):
    """``popdist.poptorch.Options(ipus_per_replica=...)``: the SDK's own when available, else its effect."""
    if not using_emulator:
        try:
            import popdist.poptorch  # ships with the Poplar SDK
            return popdist.poptorch.Options(ipus_per_replica=env.ipus_per_replica)
        except ImportError:
            pass
    opts = poptorch.Options()
    opts.replicationFactor(env.local_replicas)                                   # this instance's replicas
    opts.Distributed.configureProcessId(env.instance_index, env.num_instances)  # which instance of how many
    return opts


def join_pod(cfg: RunConfig, torchrun_launched: bool) -> Optional[PopDistEnv]:
    """This process's place in a PopRun launch (None outside one), with the host-side process group joined.

    One process per PopRun instance. The instances' replicas reduce gradients among themselves (IPU-Links;
    in the emulator, gloo); the host-side gloo group joined here carries the logging sums and barriers,
    with instance 0 writing the run directory. poprun starts the instances through mpirun;
    MASTER_ADDR/MASTER_PORT (exported to every instance, e.g. ``poprun --mpi-global-args="-x MASTER_ADDR
    -x MASTER_PORT"``) name instance 0's host.
    """
    import torch.distributed as dist

    if torchrun_launched:
        raise ConfigError("torchrun launches the CPU/CUDA path; IPU pods are launched with poprun "
                          "(see the README's PopRun section)", key="runtime.backend")
    pod = popdist_env()
    if pod is None:
        return None
    check_popdist_config(cfg, pod)
    if pod.num_instances > 1 and not dist.is_initialized():
        addr, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "29500")
        dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=pod.instance_index,
                                world_size=pod.num_instances)
    return pod
