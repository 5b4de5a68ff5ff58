"""The parts of ``poptorch.Options``: the freezable option dictionary and the sub-objects
``Training``, ``Precision``, ``TensorLocations``, ``Distributed``, ``Jit``, ``_Popart`` (and the
emulator's own ``_emulator``).

Follows graphcore/poptorch:python/_options_impl.py (``OptionsDict``: only declared keys can be set,
``Can't modify frozen Options`` once frozen, deep copies are unfrozen) and the sub-option classes of
graphcore/poptorch:python/options.py.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Optional

import torch

from . import enums
from .errors import AssertError

__all__ = ["TensorLocationSettings", "FROZEN_ERROR"]

FROZEN_ERROR = "Can't modify frozen Options"


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class _OptionsDict:
    """Values settable only through the declared keys; freezable; deep-copied unfrozen."""

    def __init__(self, **default_values: Any) -> None:
        object.__setattr__(self, "_is_frozen", False)
        object.__setattr__(self, "_values", dict(default_values))

    def checkIsFrozen(self) -> None:
        if self.__dict__.get("_is_frozen", False):
            raise AttributeError(FROZEN_ERROR)

    def set(self, **kwargs: Any) -> "_OptionsDict":
        self.checkIsFrozen()
        for option, value in kwargs.items():
            if option not in self._values:
                raise AssertError(f"Invalid option {option}, valid options are {list(self._values)}")
            self._values[option] = value
        return self

    def createOrSet(self, **kwargs: Any) -> "_OptionsDict":
        self.checkIsFrozen()
        self._values.update(kwargs)
        return self

    def exists(self, option: str) -> bool:
        return option in self._values

    def deleteIfExists(self, option: str) -> None:
        self.checkIsFrozen()
        self._values.pop(option, None)

    def toDict(self) -> Dict[str, Any]:
        return dict(self._values)

    def __getattr__(self, option: str) -> Any:
        values = self.__dict__.get("_values")
        if values is not None and option in values:
            return values[option]
        raise AttributeError(f"Invalid attribute {option}.")

    def __setattr__(self, option: str, value: Any) -> None:
        self.checkIsFrozen()
        if option.startswith("_"):
            object.__setattr__(self, option, value)
        else:
            self.set(**{option: value})

    def _changeFreezeState(self, frozen: bool) -> None:
        object.__setattr__(self, "_is_frozen", frozen)
        for value in self.__dict__.values():
            if isinstance(value, (_OptionsDict, _PopartOptions)):
                value._changeFreezeState(frozen)

    def _freeze(self) -> None:
        self._changeFreezeState(True)

    def _unfreeze(self) -> None:
        self._changeFreezeState(False)

    def __deepcopy__(self, memo):
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            object.__setattr__(new, key, False if key == "_is_frozen" else copy.deepcopy(value, memo))
        return new

    def __call__(self, option: str) -> Any:
        return getattr(self, option)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


class _JitOptions(_OptionsDict):
    """``opts.Jit``: tracing front end (no effect in the emulator, which runs the model eagerly)."""

    def __init__(self) -> None:
        super().__init__(trace_model=True)

    def traceModel(self, trace_model: bool) -> "_JitOptions":
        self.set(trace_model=bool(trace_model))
        return self


class _PopartOptions:
    """``opts._Popart``: raw PopART session options (``set(key, value)``, ``setPatterns``)."""

    def __init__(self) -> None:
        self._is_frozen = False
        self.options: Dict[str, Any] = {}
        self.set("instrumentWithHardwareCycleCounter", False)
        self.set("rearrangeAnchorsOnHost", False)

    def checkIsFrozen(self) -> None:
        if self._is_frozen:
            raise AttributeError(FROZEN_ERROR)

    def _changeFreezeState(self, frozen: bool) -> None:
        self._is_frozen = frozen

    def __deepcopy__(self, memo):
        new = _PopartOptions.__new__(_PopartOptions)
        memo[id(self)] = new
        new._is_frozen = False
        new.options = copy.deepcopy(self.options, memo)
        return new

    def set(self, key: str, value: Any) -> "_PopartOptions":
        self.checkIsFrozen()
        self.options[key] = value
        return self

    def setEngineOptions(self, engine_options: Dict[str, str]) -> "_PopartOptions":
        return self.set("engineOptions", engine_options)

    def setPatterns(self, patterns: Dict[str, bool], level: int = 2) -> "_PopartOptions":
        if not isinstance(level, int) or not isinstance(patterns, dict):
            raise AssertError("setPatterns expects a dict of patterns and an int level")
        self.set("patterns_level", level)
        return self.set("patterns", patterns)

    def __repr__(self) -> str:
        return f"_PopartOptions({self.options!r})"


class _PrecisionOptions(_OptionsDict):
    """``opts.Precision``: partials type, stochastic rounding, FP exceptions (recorded only)."""

    def __init__(self, popart_options: _PopartOptions) -> None:
        self._popart_options = popart_options
        super().__init__(autocast_enabled=True,
                         half_float_casting=enums.HalfFloatCastingBehavior.Default)

    def autocastEnabled(self, autocast_enabled: bool) -> "_PrecisionOptions":
        if not isinstance(autocast_enabled, bool):
            raise ValueError("autocastEnabled must be set to either True or False")
        self.set(autocast_enabled=autocast_enabled)
        return self

    def halfFloatCasting(self, half_float_casting: enums.HalfFloatCastingBehavior) -> "_PrecisionOptions":
        if not isinstance(half_float_casting, enums.HalfFloatCastingBehavior):
            raise ValueError("halfFloatCasting must be set to a poptorch.HalfFloatCastingBehavior")
        self.set(half_float_casting=half_float_casting)
        return self

    def runningStatisticsAlwaysFloat(self, value: bool) -> "_PrecisionOptions":
        if not isinstance(value, bool):
            raise ValueError("runningStatisticsAlwaysFloat needs to be set to a bool")
        self.createOrSet(running_statistics_always_float=value)
        return self

    def enableFloatingPointExceptions(self, enabled: bool) -> "_PrecisionOptions":
        if not isinstance(enabled, bool):
            raise AssertError("enableFloatingPointExceptions needs to be set to a bool")
        self.checkIsFrozen()
        self._popart_options.set("enableFloatingPointChecks", enabled)
        return self

    def enableStochasticRounding(self, enabled: bool) -> "_PrecisionOptions":
        self.checkIsFrozen()
        self._popart_options.set("enableStochasticRounding", bool(enabled))
        return self

    def setPartialsType(self, dtype: torch.dtype) -> "_PrecisionOptions":
        if dtype in (torch.float, torch.float32):
            type_str = "float"
        elif dtype in (torch.half, torch.float16):
            type_str = "half"
        else:
            raise ValueError("parameter to setPartialsType should be either torch.float or torch.half")
        self.checkIsFrozen()
        self._popart_options.set("partialsTypeMatMuls", type_str)
        self._popart_options.set("convolutionOptions", {"partialsType": type_str})
        return self


class _TrainingOptions(_OptionsDict):
    """``opts.Training``: gradient accumulation and the reduction over micro-batches and replicas."""

    def __init__(self, popart_options: _PopartOptions) -> None:
        self._popart_options = popart_options
        super().__init__(gradient_accumulation=1,
                         accumulation_and_replication_reduction_type=enums.ReductionType.Mean,
                         meanAccumulationAndReplicationReductionStrategy=enums.MeanReductionStrategy.Post)

    def gradientAccumulation(self, gradient_accumulation: int) -> "_TrainingOptions":
        """Micro-batches per weight update (must be 1 for ``inferenceModel``)."""
        self.set(gradient_accumulation=_positive_int("gradientAccumulation", gradient_accumulation))
        return self

    def accumulationAndReplicationReductionType(self, reduction_type: enums.ReductionType
                                                ) -> "_TrainingOptions":
        """``Mean`` (default): gradients averaged over GA x replicas; ``Sum``: summed."""
        if not isinstance(reduction_type, enums.ReductionType) or \
                reduction_type == enums.ReductionType.NoReduction:
            raise ValueError("accumulationAndReplicationReductionType must be set to "
                             "poptorch.ReductionType.Mean or poptorch.ReductionType.Sum")
        self.set(accumulation_and_replication_reduction_type=reduction_type)
        return self

    def setMeanAccumulationAndReplicationReductionStrategy(
            self, mean_reduction_strategy: enums.MeanReductionStrategy) -> "_TrainingOptions":
        self.set(meanAccumulationAndReplicationReductionStrategy=mean_reduction_strategy)
        return self

    def setAutomaticLossScaling(self, enabled: bool) -> "_TrainingOptions":
        """Automatic loss scaling (recorded; the emulator computes in fp32 without loss scaling needs)."""
        self.checkIsFrozen()
        self._popart_options.set("automaticLossScalingSettings.enabled", bool(enabled))
        return self

    def setConvolutionDithering(self, enabled: bool) -> "_TrainingOptions":
        self.checkIsFrozen()
        self._popart_options.set("convolutionOptions", {"enableConvDithering": bool(enabled)})
        return self


class _DistributedOptions(_OptionsDict):
    """``opts.Distributed``: process id and count (default from ``OMPI_COMM_WORLD_RANK/SIZE``)."""

    def __init__(self) -> None:
        super().__init__(num_distributed_processes=1, distributed_process_id=0, ipuof_configs={})
        self.setEnvVarNames("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK")

    def disable(self) -> "_DistributedOptions":
        self.set(num_distributed_processes=1, distributed_process_id=0)
        return self

    def setEnvVarNames(self, var_num_processes: str, var_process_id: str) -> "_DistributedOptions":
        return self.configureProcessId(int(os.environ.get(var_process_id, "0")),
                                       int(os.environ.get(var_num_processes, "1")))

    def configureProcessId(self, process_id: int, num_processes: int) -> "_DistributedOptions":
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process id {process_id} must be in [0, {num_processes})")
        self.set(distributed_process_id=process_id)
        self.set(num_distributed_processes=num_processes)
        return self

    @property
    def processId(self) -> int:
        return self.distributed_process_id

    @property
    def numProcesses(self) -> int:
        return self.num_distributed_processes


class TensorLocationSettings(_OptionsDict):
    """Where a class of tensors lives: ``TensorLocationSettings().useOnChipStorage(False)``."""

    def __init__(self) -> None:
        super().__init__()

    def minElementsForOffChip(self, min_elements: int) -> "TensorLocationSettings":
        self.createOrSet(minElementsForOffChip=int(min_elements))
        return self

    def minElementsForReplicatedTensorSharding(self, min_elements: int
                                               ) -> "TensorLocationSettings":
        self.createOrSet(minElementsForReplicatedTensorSharding=int(min_elements))
        return self

    def useOnChipStorage(self, use: Optional[bool] = True) -> "TensorLocationSettings":
        if use is None:
            self.deleteIfExists("onChip")
        else:
            self.createOrSet(onChip=int(bool(use)))
        return self

    def useReplicatedTensorSharding(self, use: bool = True) -> "TensorLocationSettings":
        self.createOrSet(useReplicatedTensorSharding=int(bool(use)))
        return self

    def useIOTilesToLoad(self, use: bool = True) -> "TensorLocationSettings":
        self.createOrSet(useIOTilesToLoad=int(bool(use)))
        return self

    def useIOTilesToStore(self, use: bool = True) -> "TensorLocationSettings":
        self.createOrSet(useIOTilesToStore=int(bool(use)))
        return self


class _TensorLocationOptions(_OptionsDict):
    """``opts.TensorLocations``: locations of activations, weights, optimizer state, accumulators."""

    def numIOTiles(self, num_tiles: int) -> "_TensorLocationOptions":
        if not (isinstance(num_tiles, int) and 32 <= num_tiles <= 192 and num_tiles % 2 == 0):
            raise AssertError("numIOTiles must be an even number between 32 and 192.")
        self.createOrSet(numIOTiles=num_tiles)
        return self

    def _set_location(self, kind: str, location: TensorLocationSettings) -> "_TensorLocationOptions":
        if not isinstance(location, TensorLocationSettings):
            raise AssertError("location must be a poptorch.TensorLocationSettings")
        self.createOrSet(**{f"location_{kind}": location.toDict()})
        return self

    def setActivationLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":
        return self._set_location("activation", location)

    def setWeightLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":
        return self._set_location("weight", location)

    def setOptimizerLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":
        return self._set_location("optimizer", location)

    def setAccumulatorLocation(self, location: TensorLocationSettings) -> "_TensorLocationOptions":
        return self._set_location("accumulator", location)

    def location(self, kind: str) -> Dict[str, int]:
        """Emulator helper: the settings dict of ``kind`` (activation|weight|optimizer|accumulator)."""
        return dict(self._values.get(f"location_{kind}", {}))

    def on_chip(self, kind: str) -> bool:
        """Emulator helper: False only if ``useOnChipStorage(False)`` was set for ``kind``."""
        return bool(self.location(kind).get("onChip", 1))


class _EmulatorOptions(_OptionsDict):
    """Emulator-only switches (not PopTorch API): the per-IPU memory check of :mod:`.memory`.

    Defaults: check on unless the environment sets ``POPTORCH_EMULATOR_MEMORY_CHECK=0``; IPU memory
    from ``memory.IPU_MEMORY_BYTES`` (900 MB, GC200) unless ``ipuMemoryBytes(n)`` is given.
    """

    def __init__(self) -> None:
        super().__init__(memory_check=os.environ.get("POPTORCH_EMULATOR_MEMORY_CHECK", "1") != "0",
                         ipu_memory_bytes=None)

    def memoryCheck(self, enabled: bool = True) -> "_EmulatorOptions":
        self.set(memory_check=bool(enabled))
        return self

    def ipuMemoryBytes(self, num_bytes: Optional[int]) -> "_EmulatorOptions":
        self.set(ipu_memory_bytes=None if num_bytes is None else int(num_bytes))
        return self
