"""Blocks, stages and execution strategies: where each part of the model runs.

Follows graphcore/poptorch:python/ops.py (``Block``, ``BeginBlock``, ``BlockFunction``,
``removeBlocks``, ``_BlockHook``, ``LegacyBeginBlockFn``), python/options.py (``Stage``,
``_DefaultStageManager``, ``PipelinedExecution``, ``ShardedExecution``) and
python/_options_impl.py (``IStageManager.beginStage``):

- Outside an executor's compile trace (``Block._stages_manager is None``) every annotation is a no-op,
  so the CPU model runs unchanged.
- During the trace, ``beginStage(user_id, ipu_id)`` resolves the block's stage: with
  ``AutoStage.SameAsIpu`` (the default) the stage id is the IPU id; with ``AutoStage.AutoIncrement``
  every new block id gets the next stage id; explicit ``PipelinedExecution("A", Stage("B").ipu(1))``
  maps block ids to stages. The IPU is the stage's ``ipu()`` if set, else the block's ``ipu_id``, else
  the stage id. Ops run before any block are on IPU 0, stage 0; ops run after a ``with Block()`` has
  exited and before another block begins raise ``RuntimeError("No active Block")``.

The emulator hands each begin/end to a recorder (:mod:`.tracing`), which computes the pipeline.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional

import torch

from . import enums
from .errors import AssertError, Error

__all__ = ["Block", "BeginBlock", "BlockFunction", "removeBlocks", "Stage", "PipelinedExecution",
           "ShardedExecution", "LegacyBeginBlockFn"]


class Stage:
    """A stage: one or more blocks (by user id) that run on one IPU (``Stage("A", "B").ipu(1)``)."""

    def __init__(self, *block_ids: str) -> None:
        if not all(isinstance(b, str) for b in block_ids):
            raise AssertError(f"Block IDs are supposed to be strings but got {block_ids}")
        self._blocks = block_ids
        self._stage_id = -1
        self._phase_id = -1
        self._ipu: Optional[int] = None

    @property
    def blocks(self):
        """List of blocks this stage is made of."""
        return self._blocks

    def ipu(self, ipu: int) -> "Stage":
        """Set the IPU on which this stage will run."""
        if not isinstance(ipu, int):
            raise AssertError(f"ipu must be an int, got {ipu!r}")
        self._ipu = ipu
        return self

    def _setStage(self, stage: Optional[int]) -> "Stage":
        if stage is not None:
            self._stage_id = stage
        return self


class _IStageManager:
    """PopTorch's ``IStageManager``: resolves (block id, ipu id) to a stage while tracing."""

    def __init__(self) -> None:
        self._next_auto_id = 0
        self._current_ipu: Optional[int] = None
        self.recorder = None  # set by the executor for the compile trace (tracing._Trace)

    def nextAutoId(self) -> str:
        auto_id = self._next_auto_id
        self._next_auto_id += 1
        return str(auto_id)

    def resetAutoId(self) -> None:
        self._next_auto_id = 0

    def getStage(self, block_id: str) -> Stage:
        raise NotImplementedError

    def beginStage(self, user_id: Optional[str], ipu_id_from_block: Optional[int]) -> None:
        user_id = user_id or self.nextAutoId()
        self._current_ipu = ipu_id_from_block
        stage = self.getStage(user_id)
        # If the user specified an ipu in the Stage use that one, else the block's, else the stage id.
        ipu = stage._ipu if stage._ipu is not None else ipu_id_from_block
        if ipu is None:
            ipu = stage._stage_id
        if self.recorder is not None:
            self.recorder.begin_block(user_id, ipu, stage._stage_id)

    def endStage(self) -> None:
        if self.recorder is not None:
            self.recorder.end_block()


class _DefaultStageManager(_IStageManager):
    def __init__(self, auto_stage: enums.AutoStage) -> None:
        super().__init__()
        self._next_id = 1
        self._block_map: Dict[str, Stage] = {}
        self._auto_stage = auto_stage

    def getStage(self, block_id: str) -> Stage:
        if block_id not in self._block_map:
            stage = Stage(block_id)
            if self._auto_stage == enums.AutoStage.SameAsIpu:
                if self._current_ipu is None:
                    raise AssertError("poptorch.AutoStage.SameAsIpu was selected but no "
                                      f"IPU was specified for block {block_id}")
                stage_id = self._current_ipu
            else:
                stage_id = self._next_id
                self._next_id += 1
            stage._setStage(stage_id)
            self._block_map[block_id] = stage
        return self._block_map[block_id]


class _ExplicitStageManager(_IStageManager):
    def __init__(self, block_map: Dict[str, Stage]) -> None:
        super().__init__()
        self._block_map = block_map

    def getStage(self, block_id: str) -> Stage:
        if block_id not in self._block_map:
            raise AssertError(f"Unknown Block '{block_id}' list of expected Blocks: "
                              f"{list(self._block_map.keys())}")
        return self._block_map[block_id]


class _IExecutionStrategy:
    def __init__(self, block_map: Dict[str, Stage], auto_stage: enums.AutoStage) -> None:
        self._block_map = block_map
        self._auto_stage = auto_stage

    @property
    def auto_stage(self) -> enums.AutoStage:
        return self._auto_stage

    def stage(self, block_id: str) -> Stage:
        """Return the :class:`Stage` the given block belongs to (explicit strategies only)."""
        if block_id not in self._block_map:
            raise AssertError(f"Unknown block {block_id}")
        return self._block_map[block_id]

    def _make_stages_manager(self) -> _IStageManager:
        """A fresh stage manager for one compile trace."""
        if self._block_map:
            return _ExplicitStageManager(self._block_map)
        return _DefaultStageManager(self._auto_stage)

    def backendOptions(self) -> Dict[str, Any]:
        return {}


class PipelinedExecution(_IExecutionStrategy):
    """Pipeline the stages (the default strategy, ``AutoStage.SameAsIpu``).

    ``PipelinedExecution(AutoStage.AutoIncrement)``, ``PipelinedExecution("A", "B")`` or
    ``PipelinedExecution(Stage("A", "B"), Stage("C").ipu(2))`` as in PopTorch. A pipeline of n forward
    stages has 2n - 1 stages in training, which ``gradientAccumulation`` must cover; in inference
    ``deviceIterations`` must cover the n stages.
    """

    def __init__(self, *args) -> None:
        block_map: Dict[str, Stage] = {}
        auto_stage = enums.AutoStage.SameAsIpu
        if len(args) == 1 and isinstance(args[0], enums.AutoStage):
            auto_stage = args[0]
        else:
            for stage_id, arg in enumerate(args):
                if isinstance(arg, Stage):
                    stage = arg
                elif isinstance(arg, str):
                    stage = Stage(arg)
                else:
                    stage = Stage(*arg)
                stage._setStage(stage_id)
                for block in stage.blocks:
                    if block in block_map:
                        raise AssertError(f"{block} associated with more than one stage")
                    block_map[block] = stage
        super().__init__(block_map, auto_stage)

    def backendOptions(self) -> Dict[str, Any]:
        return {"execution_mode": 0}


class ShardedExecution(PipelinedExecution):
    """The same partitioning, run one stage after the other (no pipelining, no stage-count rules)."""

    def backendOptions(self) -> Dict[str, Any]:
        return {"execution_mode": 1}


def _end_ipu_block() -> None:
    if Block._stages_manager is not None:
        Block._stages_manager.endStage()


class Block:
    """Context manager: everything run inside is in block ``user_id`` on IPU ``ipu_id``.

    >>> with poptorch.Block("Encoder", ipu_id=1):
    ...     x = layer(x)
    """
    # Set by the executor for its compile trace; None means CPU execution: everything is a no-op.
    _stages_manager: Optional[_IStageManager] = None

    @staticmethod
    def useAutoId() -> None:
        """Restart automatic ids ("0", "1", ...) for blocks created without a ``user_id``."""
        if Block._stages_manager is not None:
            Block._stages_manager.resetAutoId()

    @staticmethod
    def start(user_id: Optional[str] = None, ipu_id: Optional[int] = None) -> None:
        """Begin a block without a ``with`` statement (it lasts until the next block begins)."""
        if Block._stages_manager is not None:
            Block._stages_manager.beginStage(user_id, ipu_id)

    def __init__(self, user_id: Optional[str] = None, ipu_id: Optional[int] = None) -> None:
        self._user_id = user_id
        self._ipu_id = ipu_id

    def __enter__(self):
        Block.start(self._user_id, self._ipu_id)

    def __exit__(self, exc_type, exc, tb):
        _end_ipu_block()


class LegacyBeginBlockFn(torch.nn.Module):
    """``BeginBlock`` applied to a callable that is not a Module (PopTorch keeps this for old code)."""

    def __init__(self, layer_to_call: Callable, user_id: Optional[str] = None,
                 ipu_id: Optional[int] = None) -> None:
        super().__init__()
        self._user_id = user_id
        self._layer_to_call = layer_to_call
        self._ipu_id = ipu_id

    def __call__(self, *args, **kwargs):
        if Block._stages_manager is not None:
            if self._user_id is None:
                self._user_id = Block._stages_manager.nextAutoId()
            Block._stages_manager.beginStage(self._user_id, self._ipu_id)
        return self._layer_to_call(*args, **kwargs)


class _BlockHook:
    """The forward pre-hook that ``BeginBlock`` registers: the module and everything run after it (until
    another block begins) is in block ``user_id`` on IPU ``ipu_id``."""

    def __init__(self, user_id: Optional[str], ipu_id: Optional[int]) -> None:
        self._user_id = user_id
        self._ipu_id = ipu_id

    def __call__(self, module, inputs):
        if Block._stages_manager is not None:
            if self._user_id is None:
                self._user_id = Block._stages_manager.nextAutoId()
            Block._stages_manager.beginStage(self._user_id, self._ipu_id)

    def __repr__(self) -> str:
        return f"BeginBlock(user_id={self._user_id}, ipu_id={self._ipu_id})"


def BeginBlock(layer_to_call: torch.nn.Module, user_id: Optional[str] = None,
               ipu_id: Optional[int] = None) -> torch.nn.Module:
    """Start block ``user_id`` on IPU ``ipu_id`` at this module (a forward pre-hook; returns the module).

    Raises ``poptorch.Error`` if the module already begins a block (call :func:`removeBlocks` first).
    """
    if not isinstance(layer_to_call, torch.nn.Module):
        if callable(layer_to_call):
            return LegacyBeginBlockFn(layer_to_call, user_id, ipu_id)
        raise Error("module is not an instance of torch.nn.Module or function.")
    if any(isinstance(h, _BlockHook) for h in layer_to_call._forward_pre_hooks.values()):
        raise Error("module has already been assigned to a block.")
    layer_to_call.register_forward_pre_hook(_BlockHook(user_id, ipu_id))
    return layer_to_call


def BlockFunction(user_id: Optional[str] = None, ipu_id: Optional[int] = None):
    """Decorator: the function body runs in block ``user_id`` on IPU ``ipu_id``."""

    def decorator(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with Block(user_id, ipu_id):
                return func(*args, **kwargs)

        return wrapper

    return decorator


def removeBlocks(module: torch.nn.Module) -> None:
    """Recursively remove the ``BeginBlock`` annotations of ``module`` and its submodules."""
    if not isinstance(module, torch.nn.Module):
        raise AssertError("removeBlocks expects a torch.nn.Module")
    for m in module.modules():
        for key in [k for k, h in m._forward_pre_hooks.items() if isinstance(h, _BlockHook)]:
            del m._forward_pre_hooks[key]


def block_annotations(module: torch.nn.Module) -> List[tuple]:
    """(module name, user_id, ipu_id) of every ``BeginBlock`` in ``module`` (for logging and tests)."""
    out = []
    for name, m in module.named_modules():
        for h in m._forward_pre_hooks.values():
            if isinstance(h, _BlockHook):
                out.append((name, h._user_id, h._ipu_id))
    return out
