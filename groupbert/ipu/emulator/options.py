"""``poptorch.Options``, with PopTorch's setters, defaults and freezing (its sub-objects
``Training``, ``Precision``, ``TensorLocations``, ``Distributed``, ``Jit``, ``_Popart`` are in
:mod:`._options_impl`).

Follows graphcore/poptorch:python/options.py and python/_options_impl.py (``OptionsDict``):

- defaults: ``replication_factor=1, input_group_size=1, device_iterations=1, output_mode=Default,
  output_return_period=1, connection_type=Always, sync_pattern=Full, available_memory_proportion={}``,
  execution strategy ``PipelinedExecution()`` (``AutoStage.SameAsIpu``); ``Training``:
  ``gradient_accumulation=1``, reduction ``Mean``, mean strategy ``Post``;
- every setter returns ``self`` (chainable); values are read back as attributes with PopTorch's
  snake_case names (``opts.device_iterations``, ``opts.Training.gradient_accumulation``,
  ``opts.output_mode`` ...);
- an ``Options`` object is frozen once passed to a model wrapper or a ``DataLoader``: setters then raise
  ``AttributeError("Can't modify frozen Options")``; ``clone()`` returns an unfrozen deep copy;
- ``POPTORCH_CACHE_DIR`` (→ ``enableExecutableCaching``) and ``POPTORCH_DEFAULT_OPTIONS`` (JSON of
  ``{"Precision.enableFloatingPointExceptions": true}`` style) are read at construction.

Not PopTorch: ``options._emulator`` (:class:`_EmulatorOptions`) switches the emulator's per-IPU memory
check (:mod:`.memory`) and overrides the IPU memory size. Real PopTorch has no such attribute, so code
that must run on both guards it with ``hasattr(opts, "_emulator")``.
"""
from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any, Dict, Optional

import torch

from . import enums
from ._options_impl import (
    TensorLocationSettings,
    _DistributedOptions,
    _EmulatorOptions,
    _JitOptions,
    _OptionsDict,
    _PopartOptions,
    _positive_int,
    _PrecisionOptions,
    _TensorLocationOptions,
    _TrainingOptions,
)
from .blocks import PipelinedExecution, _IExecutionStrategy
from .errors import AssertError

__all__ = ["Options", "TensorLocationSettings"]

logger = logging.getLogger(__name__)

class Options(_OptionsDict):
    """Set of all options controlling how a model is compiled and executed (``poptorch.Options``)."""

    def __init__(self) -> None:
        self._jit = _JitOptions()
        self._popart = _PopartOptions()
        self._graphProcessing = _PrecisionOptions(self._popart)
        self._training = _TrainingOptions(self._popart)
        self._distributed = _DistributedOptions()
        self._tensor_locations = _TensorLocationOptions()
        self._execution_strategy: _IExecutionStrategy = PipelinedExecution()
        self._emulator = _EmulatorOptions()
        self._show_compilation_progress_bar = True
        self._relax_optimizer_checks = False
        self._module_namescope_enabled = True
        super().__init__(replication_factor=1, input_group_size=1,
                         input_cgt=enums.CommGroupType.Consecutive, broadcast_buffers=True,
                         device_iterations=1, log_dir=".", max_repeat_logs=4, auto_round_num_ipus=False,
                         anchored_tensors={}, output_mode=enums.OutputMode.Default, output_return_period=1,
                         connection_type=enums.ConnectionType.Always, sync_pattern=enums.SyncPattern.Full,
                         available_memory_proportion={})
        path = os.environ.get("POPTORCH_CACHE_DIR", "")
        if path:
            self.enableExecutableCaching(path)
        defaults = os.environ.get("POPTORCH_DEFAULT_OPTIONS", "")
        if defaults:
            for dotted, value in json.loads(defaults).items():
                target: Any = self
                *path_parts, method = dotted.split(".")
                for part in path_parts:
                    target = getattr(target, part)
                getattr(target, method)(value)

    # ---- sub-objects -------------------------------------------------------------------------------
    @property
    def Training(self) -> _TrainingOptions:
        return self._training

    @property
    def Precision(self) -> _PrecisionOptions:
        return self._graphProcessing

    @property
    def TensorLocations(self) -> _TensorLocationOptions:
        return self._tensor_locations

    @property
    def Distributed(self) -> _DistributedOptions:
        return self._distributed

    @property
    def Jit(self) -> _JitOptions:
        return self._jit

    @property
    def _Popart(self) -> _PopartOptions:
        return self._popart

    Popart = _Popart  # the pre-3.0 spelling, still used by some PopTorch tests

    @property
    def execution_strategy(self) -> _IExecutionStrategy:
        """Emulator convenience (PopTorch code reads ``opts._execution_strategy``)."""
        return self._execution_strategy

    # ---- batching ----------------------------------------------------------------------------------
    def deviceIterations(self, device_iterations: int) -> "Options":
        """Iterations of the device loop per host call; in training each is GA micro-batches + 1 update."""
        self.set(device_iterations=_positive_int("deviceIterations", device_iterations))
        return self

    def replicationFactor(self, replication_factor: int) -> "Options":
        """Data-parallel replicas of the model (IPUs used = IPUs per replica x replicas)."""
        self.set(replication_factor=_positive_int("replicationFactor", replication_factor))
        return self

    def inputReplicaGrouping(self, input_group_size: int,
                             input_cgt: enums.CommGroupType = enums.CommGroupType.Consecutive) -> "Options":
        """Replicas of one group receive the same input; the batch multiplier is R // input_group_size."""
        self.set(input_group_size=_positive_int("input_group_size", input_group_size), input_cgt=input_cgt)
        return self

    def outputMode(self, output_mode: enums.OutputMode,
                   output_return_period: Optional[int] = None) -> "Options":
        """Which results to return: ``All``, ``Sum``, ``Final``, ``EveryN`` (with a period), ``Default``."""
        if not isinstance(output_mode, enums.OutputMode):
            raise AssertError(f"output_mode must be a poptorch.OutputMode, got {output_mode!r}")
        if output_mode == enums.OutputMode.EveryN:
            if not output_return_period or output_return_period <= 0:
                raise AssertError("EveryN anchor must have output_return_period set to valid positive integer")
        elif output_return_period:
            logger.info("Anchor return period argument ignored with output_mode set to %s", output_mode)
        self.set(output_mode=output_mode, output_return_period=output_return_period or 1)
        return self

    anchorMode = outputMode  # the pre-2.5 name

    def defaultOutputMode(self) -> bool:
        return self.output_mode == enums.OutputMode.Default

    def anchorTensor(self, short_name: str, long_name: str,
                     output_mode: Optional[enums.OutputMode] = None, output_return_period: int = 1) -> "Options":
        """Recorded for API compatibility; the emulator has no PopART tensor names to anchor."""
        self.checkIsFrozen()
        self.anchored_tensors[short_name] = [long_name, output_mode is None, output_mode, output_return_period]
        return self

    # ---- placement and memory ----------------------------------------------------------------------
    def setExecutionStrategy(self, strategy: _IExecutionStrategy) -> "Options":
        if not isinstance(strategy, _IExecutionStrategy):
            raise AssertError("strategy must be a PipelinedExecution or ShardedExecution")
        self.checkIsFrozen()
        self._execution_strategy = strategy
        return self

    def setAvailableMemoryProportion(self, available_memory_proportion: Dict[str, float]) -> "Options":
        """Per-IPU proportion of tile memory for temporaries, ``{"IPU0": 0.2, ...}`` (recorded only)."""
        actual = {}
        for key, value in available_memory_proportion.items():
            if not (isinstance(key, str) and key.startswith("IPU")):
                raise AssertError("Available memory proportions are expected to be in a dictionary of "
                                  '{"IPU0": 0.5} where the 0 in IPU is the index of the IPU. '
                                  f"Invalid key: {key}")
            if not 0.0 < float(value) <= 1.0:
                raise ValueError(f"Available memory proportion for {key} must be in (0, 1], got {value}")
            actual[int(key[3:])] = float(value)
        self.createOrSet(available_memory_proportion=actual)
        return self

    def autoRoundNumIPUs(self, auto_round_num_ipus: bool = True) -> "Options":
        self.set(auto_round_num_ipus=bool(auto_round_num_ipus))
        return self

    # ---- device ------------------------------------------------------------------------------------
    def useIpuModel(self, use_model: bool) -> "Options":
        self.createOrSet(use_model=bool(use_model))
        return self

    def useIpuId(self, ipu_id: int) -> "Options":
        self.createOrSet(ipu_id=int(ipu_id))
        return self

    def useOfflineIpuTarget(self, ipu_version: int = 2) -> "Options":
        self.connectionType(enums.ConnectionType.Never)
        self.createOrSet(ipu_version=ipu_version)
        return self

    def connectionType(self, connection_type: enums.ConnectionType) -> "Options":
        if not isinstance(connection_type, enums.ConnectionType):
            raise AssertError("connection_type must be a poptorch.ConnectionType")
        self.set(connection_type=connection_type)
        return self

    def syncPattern(self, sync_pattern: enums.SyncPattern) -> "Options":
        if not isinstance(sync_pattern, enums.SyncPattern):
            raise AssertError("sync_pattern must be a poptorch.SyncPattern")
        self.set(sync_pattern=sync_pattern)
        return self

    def randomSeed(self, random_seed: int) -> "Options":
        """Seed the IPU's random generator; like PopTorch, also calls ``torch.manual_seed``."""
        if not isinstance(random_seed, int):
            raise AssertError("random_seed must be an int")
        self.checkIsFrozen()
        torch.manual_seed(random_seed)
        self.createOrSet(random_seed=random_seed)
        return self

    def enableExecutableCaching(self, path: Optional[str]) -> "Options":
        self.checkIsFrozen()
        if path is None:
            self._Popart.set("enableEngineCaching", False)
        else:
            self._Popart.set("cachePath", path)
            self._Popart.set("enableEngineCaching", True)
        return self

    def enableSyntheticData(self, enabled: bool) -> "Options":
        self.checkIsFrozen()
        self._Popart.set("syntheticDataMode", 2 if enabled else 0)
        return self

    def enableStableNorm(self, enabled: bool) -> "Options":
        self.checkIsFrozen()
        self._Popart.set("enableStableNorm", bool(enabled))
        return self

    def logCycleCount(self, log_cycle_count: bool) -> "Options":
        self.checkIsFrozen()
        self._Popart.set("instrumentWithHardwareCycleCounter", bool(log_cycle_count))
        return self

    def enableProfiling(self, profile_dir: Optional[str] = None) -> "Options":
        self.checkIsFrozen()
        opts = dict(self._popart.options.get("engineOptions", {}))
        opts.update({"debug.allowOutOfMemory": "true", "autoReport.directory": profile_dir or ".",
                     "autoReport.all": "true"})
        self._popart.setEngineOptions(opts)
        return self

    def broadcastBuffers(self, broadcast_buffers: bool = True) -> "Options":
        self.set(broadcast_buffers=bool(broadcast_buffers))
        return self

    def logDir(self, log_dir: str) -> "Options":
        self.set(log_dir=log_dir)
        return self

    def modelName(self, name: str) -> "Options":
        self.createOrSet(model_name=name)
        return self

    def maxRepeatLogs(self, max_lines: Optional[int]) -> "Options":
        self.set(max_repeat_logs=max_lines)
        return self

    def showCompilationProgressBar(self, show: bool = True) -> "Options":
        self.checkIsFrozen()
        self._show_compilation_progress_bar = show
        return self

    def relaxOptimizerAttributesChecks(self, relax: bool = True) -> "Options":
        self.checkIsFrozen()
        self._relax_optimizer_checks = relax
        return self

    def disableModuleNamescope(self) -> "Options":
        self.checkIsFrozen()
        self._module_namescope_enabled = False
        return self

    # ---- copies ------------------------------------------------------------------------------------
    def clone(self) -> "Options":
        """An unfrozen deep copy."""
        return copy.deepcopy(self)

    def toDict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = dict(self._execution_strategy.backendOptions())
        out.update(self._popart.options)
        for part in (self, self._training, self._distributed, self._tensor_locations):
            out.update(_OptionsDict.toDict(part))
        return out

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self._values.items()]
        parts += [f"{name}={getattr(self, name)!r}" for name in
                  ("Training", "Precision", "TensorLocations", "Distributed", "Jit", "_Popart")]
        return "Options(" + ", ".join(parts) + ")"

