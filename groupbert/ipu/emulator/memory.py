"""Per-IPU memory estimate and out-of-memory check (the emulator's own; not PopTorch API).

An IPU has no DRAM cache: weights, optimizer state, gradient accumulators and the activations of every
micro-batch in flight must fit in its in-processor memory (GC200 / Mk2: 900 MB of SRAM in 1472 tiles).
PopTorch only finds out when Poplar's compiler runs out of tile memory (``popart::memory_allocation_err``);
the emulator estimates, at the compile call, from what the compile trace measured (:mod:`.tracing`):

- **weights**: bytes of the parameters and buffers the ops of the IPU's stages use (a tied weight counts
  on every IPU that uses it); 0 if ``TensorLocations.setWeightLocation(useOnChipStorage(False))``;
- **optimizer state** (training): 2 moments for Adam/AdamW/LAMB, 1 velocity for SGD with momentum
  (:func:`.optim.state_bytes`); 0 if ``setOptimizerLocation(useOnChipStorage(False))``; divided by the
  replicas with ``useReplicatedTensorSharding(True)``;
- **gradient accumulators** (training with ``gradientAccumulation > 1``): one per weight; 0 if
  ``setAccumulatorLocation(useOnChipStorage(False))``;
- **activations** (training): bytes saved for backward by one micro-batch in each stage, times the
  micro-batches that stage holds in flight. PopART stashes a stage's activations from its forward to its
  backward: forward stage ``s`` of ``n`` holds ``2 (n - s) - 1`` (graphcore/popart:willow/src/transforms/
  pipeline.cpp: "stash size of 2*(IPUs to end) + 1"); 1 without pipelining. With pipeline recomputation
  (``_Popart.set("autoRecomputation", 3)``) only the stage inputs and ``recomputationCheckpoint`` outputs
  are stashed, plus one micro-batch of activations being recomputed.

Not counted: code, exchange buffers and temporary memory (the ``availableMemoryProportion`` share),
which on hardware take a sizeable part of the 900 MB, so a model that passes here can still fail to
compile. Turn the check off with ``options._emulator.memoryCheck(False)`` or the environment variable
``POPTORCH_EMULATOR_MEMORY_CHECK=0``; change the capacity with ``options._emulator.ipuMemoryBytes(n)`` or
by setting :data:`IPU_MEMORY_BYTES`.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional

import torch

from . import optim as _optim
from .errors import OutOfMemoryError
from .tracing import Placement

__all__ = ["IPU_MEMORY_BYTES", "IPU_TILES", "IpuMemory", "estimate", "check", "format_report",
           "in_flight_micro_batches"]

IPU_MEMORY_BYTES = 900_000_000  # GC200 (Mk2) In-Processor-Memory
IPU_TILES = 1472  # GC200 tiles (the memory is spread over them)
RECOMPUTATION_PIPELINE = 3  # popart::RecomputationType::Pipeline

MB = 1e6


@dataclasses.dataclass
class IpuMemory:
    """Estimated bytes on one IPU."""
    ipu: int
    stages: List[int]  # forward pipeline stage indices on this IPU
    weights: int
    optimizer_state: int
    accumulators: int
    activations_per_micro_batch: int
    in_flight: List[int]  # micro-batches in flight, per stage
    activations: int
    capacity: int

    @property
    def total(self) -> int:
        return self.weights + self.optimizer_state + self.accumulators + self.activations

    @property
    def fits(self) -> bool:
        return self.total <= self.capacity


def in_flight_micro_batches(stage: int, num_stages: int, pipelined_training: bool) -> int:
    """Micro-batches whose activations forward stage ``stage`` (0-based) of ``num_stages`` holds."""
    return 2 * (num_stages - stage) - 1 if pipelined_training else 1


def _capacity(options) -> int:
    override = options._emulator.ipu_memory_bytes if hasattr(options, "_emulator") else None
    return int(override if override is not None else IPU_MEMORY_BYTES)


def estimate(model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer], options,
             placement: Placement, training: bool, pipelined: bool) -> List[IpuMemory]:
    """The per-IPU table for one replica."""
    tensors: Dict[int, torch.Tensor] = {}
    for _, t in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        tensors.setdefault(id(t), t)
    locations = options.TensorLocations
    replicas = options.replication_factor
    ga = options.Training.gradient_accumulation
    groups = _optim.group_of(optimizer) if optimizer is not None else {}
    opt_rts = bool(locations.location("optimizer").get("useReplicatedTensorSharding", 0)) and replicas > 1
    recompute = options._Popart.options.get("autoRecomputation", 0) == RECOMPUTATION_PIPELINE
    n = placement.num_forward_stages
    capacity = _capacity(options)
    rows = []
    for ipu in sorted({s.ipu for s in placement.stages}):
        stages = [s for s in placement.stages if s.ipu == ipu]
        ids = set()
        for s in stages:
            ids |= placement.stage_params.get(s.index, set())
        used = [tensors[i] for i in ids if i in tensors]
        weights = sum(t.numel() * t.element_size() for t in used) if locations.on_chip("weight") else 0
        state = accum = act = per_mb = 0
        in_flight = []
        if training:
            trainable = [t for t in used if isinstance(t, torch.nn.Parameter) and t.requires_grad]
            if optimizer is not None and locations.on_chip("optimizer"):
                defaults = optimizer.defaults
                state = sum(_optim.state_bytes(optimizer, p, groups.get(id(p), defaults)) for p in trainable)
                if opt_rts:
                    state //= replicas
            if ga > 1 and locations.on_chip("accumulator"):
                accum = sum(_optim.accumulator_bytes(optimizer, p) if optimizer is not None
                            else p.numel() * p.element_size() for p in trainable)
            for s in stages:
                k = in_flight_micro_batches(s.index, n, pipelined)
                in_flight.append(k)
                per_mb += s.saved_bytes
                if recompute:
                    act += s.saved_bytes + (s.input_bytes + s.checkpoint_bytes) * k
                else:
                    act += s.saved_bytes * k
        rows.append(IpuMemory(ipu, [s.index for s in stages], weights, state, accum, per_mb, in_flight,
                              act, capacity))
    return rows


def format_report(rows: List[IpuMemory]) -> str:
    """A fixed-width table of the estimate, in MB (1e6 bytes)."""
    lines = [f"{'IPU':>3} {'stages':>8} {'weights':>9} {'opt.state':>9} {'accum':>9} {'act/mb':>9} "
             f"{'in flight':>9} {'acts':>9} {'total':>9} {'capacity':>9}"]
    for r in rows:
        lines.append(f"{r.ipu:>3} {','.join(map(str, r.stages)):>8} {r.weights / MB:>9.1f} "
                     f"{r.optimizer_state / MB:>9.1f} {r.accumulators / MB:>9.1f} "
                     f"{r.activations_per_micro_batch / MB:>9.1f} {','.join(map(str, r.in_flight)) or '-':>9} "
                     f"{r.activations / MB:>9.1f} {r.total / MB:>9.1f} {r.capacity / MB:>9.1f}")
    return "\n".join(lines)


def check(rows: List[IpuMemory], num_stages: int) -> None:
    """Raise :class:`OutOfMemoryError` naming the first IPU whose estimate exceeds its memory."""
    for r in rows:
        if r.fits:
            continue
        stages = ", ".join(f"{s} of {num_stages}" for s in r.stages)
        flight = " + ".join(f"{k}" for k in r.in_flight) or "0"
        raise OutOfMemoryError(
            f"Out of memory on IPU {r.ipu} (pipeline stage {stages}): the estimate is {r.total / MB:.1f} MB "
            f"but an IPU has {r.capacity / MB:.1f} MB of in-processor memory. Weights "
            f"{r.weights / MB:.1f} MB, optimizer state {r.optimizer_state / MB:.1f} MB, gradient "
            f"accumulators {r.accumulators / MB:.1f} MB, stashed activations {r.activations / MB:.1f} MB "
            f"({r.activations_per_micro_batch / MB:.1f} MB per micro-batch, {flight} micro-batches in "
            "flight). To fit: spread the layers over more IPUs (ipu.layers_per_ipu / more BeginBlock "
            "stages), move the optimizer state off-chip (options.TensorLocations.setOptimizerLocation("
            "poptorch.TensorLocationSettings().useOnChipStorage(False))), use a smaller micro-batch, or "
            "enable recomputation (options._Popart.set('autoRecomputation', 3)). The emulator's check "
            "can be turned off with options._emulator.memoryCheck(False) or "
            "POPTORCH_EMULATOR_MEMORY_CHECK=0.\n" + format_report(rows), report=rows)
