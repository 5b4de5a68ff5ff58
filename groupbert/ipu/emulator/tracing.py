"""The compile trace: one forward pass of one micro-batch that records where everything runs.

PopTorch traces the model once and lowers it to a PopART graph in which every op carries a virtual
graph (IPU) and a pipeline stage. The emulator runs the model once under a ``TorchFunctionMode`` and
records, per op, the active block (set by :mod:`.blocks`):

- **regions**: maximal runs of consecutive ops in one block. The forward pipeline stage index grows by
  one at every change of IPU, because PopTorch merges consecutive blocks on the same IPU
  (graphcore/poptorch:popart_compiler/source/CompilerImpl.cpp ``numPipelineStages``: forward stages =
  IPU switches + 1);
- **parameters and buffers** passed to each op (so a tied weight used by a head counts where it runs);
- **activations saved for backward** (``torch.autograd.graph.saved_tensors_hooks``), **stage inputs**
  (tensors consumed in a stage but produced outside it) and **recomputation checkpoints**, in bytes,
  for the memory estimate of :mod:`.memory`;
- **losses**: outputs of torch's loss functions (``F.cross_entropy`` ...), which PopTorch turns into
  losses automatically (graphcore/poptorch:poptorch/source/RemoveSurplusIdentityLosses.cpp).
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Set, Tuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ._runtime import RUNTIME

__all__ = ["Region", "StageInfo", "BlockInfo", "Placement", "Trace", "LOSS_FUNCTIONS"]

# torch loss functions PopTorch lowers to PopART losses (each one is an identity loss in the graph).
LOSS_FUNCTIONS = {getattr(F, name) for name in (
    "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "soft_margin_loss",
    "multilabel_soft_margin_loss", "hinge_embedding_loss", "margin_ranking_loss",
    "cosine_embedding_loss", "poisson_nll_loss", "triplet_margin_loss", "ctc_loss") if hasattr(F, name)}


@dataclasses.dataclass
class Region:
    """Consecutive ops of one block."""
    block_id: Optional[str]  # None: ops before the first block (IPU 0, stage 0)
    ipu: int
    stage_id: int  # PopTorch's stage id (== ipu for AutoStage.SameAsIpu)
    fwd_stage: int  # pipeline stage index after merging consecutive blocks on one IPU


@dataclasses.dataclass
class StageInfo:
    """One forward pipeline stage: blocks merged on one IPU, and what it holds for one micro-batch."""
    index: int
    ipu: int
    block_ids: List[Optional[str]]
    param_names: List[str]
    saved_bytes: int = 0  # activations saved for backward
    input_bytes: int = 0  # tensors entering the stage (stashed when recomputing)
    checkpoint_bytes: int = 0  # recomputationCheckpoint outputs


@dataclasses.dataclass
class BlockInfo:
    block_id: Optional[str]
    ipu: int
    stage: int  # first forward pipeline stage index the block runs in
    param_names: List[str]


@dataclasses.dataclass
class Placement:
    """What the compile trace found: the executor exposes it as ``stages``, ``block_placements``, ``num_ipus``."""
    regions: List[Region]
    stages: List[StageInfo]
    blocks: List[BlockInfo]
    stage_params: Dict[int, Set[int]]  # stage index -> ids of the parameters/buffers used there

    @property
    def num_forward_stages(self) -> int:
        return len(self.stages)

    @property
    def num_ipus(self) -> int:
        return 1 + max((s.ipu for s in self.stages), default=0)


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            if isinstance(o, torch.Tensor):
                yield o


def _view_key(t: torch.Tensor) -> Optional[Tuple[int, int, int, torch.dtype]]:
    """Identity of the memory a tensor view covers, or None for empty/meta/sparse tensors."""
    try:
        if t.numel() == 0 or t.is_sparse or t.device.type == "meta":
            return None
        return (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
    except (RuntimeError, NotImplementedError):
        return None


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Trace(TorchFunctionMode):
    """Records blocks, parameters and memory of one forward pass (the stage manager's ``recorder``)."""

    def __init__(self, model: torch.nn.Module, record_memory: bool) -> None:
        super().__init__()
        self.names: Dict[int, str] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(p), name)
        for name, b in model.named_buffers(remove_duplicate=False):
            self.names.setdefault(id(b), name)
        self._weight_ptrs = set()
        for t in list(model.parameters()) + list(model.buffers()):
            if t.numel():
                self._weight_ptrs.add(t.untyped_storage().data_ptr())
        self.record_memory = record_memory
        self.current: Tuple[Optional[str], int, int] = (None, 0, 0)
        self.ended = False
        self.regions: List[Region] = []
        self.stage_params: Dict[int, Set[int]] = {}
        self.block_params: Dict[Optional[str], Set[int]] = {}
        self.saved: Dict[int, int] = {}
        self.inputs: Dict[int, int] = {}
        self.checkpoints: Dict[int, int] = {}
        self._saved_keys: Set = set()
        self._input_keys: Set = set()
        self._ckpt_keys: Set = set()
        self._producer: Dict = {}

    # ---- called by the stage manager (blocks.py) -------------------------------------------------
    def begin_block(self, user_id: str, ipu: int, stage_id: int) -> None:
        self.current = (user_id, int(ipu), int(stage_id))
        self.ended = False

    def end_block(self) -> None:
        self.ended = True

    # ---- op recording ----------------------------------------------------------------------------
    def _stage(self) -> int:
        """The forward stage of the op being run (opens a new region when the block changed)."""
        if self.ended:
            raise RuntimeError("No active Block: an op ran after a poptorch.Block context ended and "
                               "before another block began. Put it inside a Block (or begin one with "
                               "poptorch.Block.start / poptorch.BeginBlock).")
        block_id, ipu, stage_id = self.current
        last = self.regions[-1] if self.regions else None
        if last is None or (last.block_id, last.ipu, last.stage_id) != self.current:
            if last is None:
                fwd = 0
            else:
                fwd = last.fwd_stage + (ipu != last.ipu)
            self.regions.append(Region(block_id, ipu, stage_id, fwd))
        return self.regions[-1].fwd_stage

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not any(True for _ in _tensors(out)):
            return out  # size(), dim(), ... are not ops of the graph
        s = self._stage()
        used = self.stage_params.setdefault(s, set())
        used_in_block = self.block_params.setdefault(self.regions[-1].block_id, set())
        for arg in list(args) + list(kwargs.values()):
            for t in _tensors(arg):
                if id(t) in self.names:
                    used.add(id(t))
                    used_in_block.add(id(t))
                elif self.record_memory:
                    self._note_input(t, s)
        if self.record_memory:
            for t in _tensors(out):
                key = _view_key(t)
                if key is not None:
                    # assign, not setdefault: the allocator reuses freed addresses, and a stale producer
                    # would count a tensor made in this stage as one entering it
                    self._producer[key] = s
        if func in LOSS_FUNCTIONS and RUNTIME.losses is not None and isinstance(out, torch.Tensor):
            RUNTIME.losses.append((out, kwargs.get("reduction", "mean"), func.__name__))
        return out

    def _note_input(self, t: torch.Tensor, s: int) -> None:
        key = _view_key(t)
        if key is None or key[0] in self._weight_ptrs:
            return
        if self._producer.get(key) != s and (s, key) not in self._input_keys:
            self._input_keys.add((s, key))
            self.inputs[s] = self.inputs.get(s, 0) + _nbytes(t)

    # ---- memory recording ------------------------------------------------------------------------
    def pack(self, t: torch.Tensor):
        """``saved_tensors_hooks`` pack hook: count each saved activation once, in its stage."""
        s = self._stage()
        key = _view_key(t)
        if key is not None and key[0] not in self._weight_ptrs and key not in self._saved_keys:
            self._saved_keys.add(key)
            self.saved[s] = self.saved.get(s, 0) + _nbytes(t)
        return t

    @staticmethod
    def unpack(t):
        return t

    def checkpoint(self, tensors) -> None:
        """Called by ``recomputationCheckpoint`` during the trace."""
        s = self._stage()
        for t in tensors:
            key = _view_key(t)
            if key is not None and key not in self._ckpt_keys:
                self._ckpt_keys.add(key)
                self.checkpoints[s] = self.checkpoints.get(s, 0) + _nbytes(t)

    # ---- result ----------------------------------------------------------------------------------
    def placement(self) -> Placement:
        regions = self.regions or [Region(None, 0, 0, 0)]
        stages: Dict[int, StageInfo] = {}
        blocks: Dict[Optional[str], BlockInfo] = {}
        for r in regions:
            st = stages.setdefault(r.fwd_stage, StageInfo(r.fwd_stage, r.ipu, [], []))
            if r.block_id not in st.block_ids:
                st.block_ids.append(r.block_id)
            blocks.setdefault(r.block_id, BlockInfo(r.block_id, r.ipu, r.fwd_stage, []))
        for s, ids in self.stage_params.items():
            stages[s].param_names = sorted(self.names[i] for i in ids)
        for block_id, ids in self.block_params.items():
            blocks[block_id].param_names = sorted(self.names[i] for i in ids)
        for s, st in stages.items():
            st.saved_bytes = self.saved.get(s, 0)
            st.input_bytes = self.inputs.get(s, 0)
            st.checkpoint_bytes = self.checkpoints.get(s, 0)
        return Placement(regions=regions, stages=[stages[i] for i in sorted(stages)],
                         blocks=list(blocks.values()),
                         stage_params={s: set(v) for s, v in self.stage_params.items()})
