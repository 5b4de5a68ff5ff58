"""PopTorch's enumerations, with PopTorch's names and values (graphcore/poptorch:python/enums.py).

They are ``IntEnum`` (or ``Enum`` with string values where PopTorch uses strings) so that options that
store ``enum.value`` compare equal to the enum member, as in PopTorch's ``Options.defaultOutputMode``.
"""
from __future__ import annotations

import enum

__all__ = ["OutputMode", "ReductionType", "MeanReductionStrategy", "AutoStage", "DataLoaderMode",
           "ConnectionType", "SyncPattern", "MatMulSerializationMode", "CommGroupType", "SharingStrategy",
           "HalfFloatCastingBehavior", "Liveness", "OverlapMode"]


class OutputMode(enum.IntEnum):
    """Which results a call returns (``Options.outputMode``).

    - ``Final``: the outputs of the last micro-batch of each replica;
    - ``EveryN``: every N-th batch (N = ``output_return_period``);
    - ``All``: every micro-batch;
    - ``Sum``: the sum over the device iterations and accumulation steps, per replica;
    - ``Default``: ``Final`` for ``trainingModel``, ``All`` for ``inferenceModel``.
    """
    Final = 0
    EveryN = 1
    All = 2
    Sum = 3
    Default = 4


class ReductionType(enum.IntEnum):
    """Reduction of gradients over accumulation steps and replicas (``NoReduction`` is rejected there)."""
    Sum = 0
    Mean = 1
    NoReduction = 2


class MeanReductionStrategy(enum.IntEnum):
    """When the Mean division happens (numerically equivalent in fp32; kept for API compatibility)."""
    Running = 0
    Post = 1
    PostAndLoss = 2


class AutoStage(enum.IntEnum):
    """How ``PipelinedExecution()`` without explicit stages numbers the stages.

    ``SameAsIpu``: stage id = IPU id (so the IPU ids must not go back along the forward pass);
    ``AutoIncrement``: every new block gets the next stage id (allows e.g. a tied head back on IPU 0).
    """
    SameAsIpu = 0
    AutoIncrement = 1


class DataLoaderMode(enum.IntEnum):
    """``poptorch.DataLoader`` modes. The emulator runs all of them synchronously."""
    Sync = 0
    Async = 1
    AsyncRebatched = 2


class ConnectionType(enum.IntEnum):
    """When to attach to the device: ``Never`` allows ``compile()`` only."""
    Always = 0
    OnDemand = 1
    Never = 2


class SyncPattern(enum.IntEnum):
    Full = 0
    SinglePipeline = 1
    ReplicaAndLadder = 2


class MatMulSerializationMode(enum.Enum):
    """Dimension a ``serializedMatMul`` is split along (numerically irrelevant)."""
    InputChannels = "input_channels"
    ReducingDim = "reducing_dim"
    OutputChannels = "output_channels"
    Disabled = "none"


class CommGroupType(enum.IntEnum):
    """Replica grouping for ``Options.inputReplicaGrouping``.

    ``Consecutive``: replicas ``[0..g-1]`` share an input, then ``[g..2g-1]`` ...;
    ``Orthogonal``: replicas ``r`` and ``r + R/g`` share an input.
    """
    All = 0
    Consecutive = 1
    Orthogonal = 2
    Ungrouped = 3


class SharingStrategy(enum.IntEnum):
    SharedMemory = 0
    FileSystem = 1
    Fork = 2
    ForkServer = 3


class HalfFloatCastingBehavior(enum.IntEnum):
    FloatDowncastToHalf = 0
    HalfUpcastToFloat = 1
    Default = 2


class Liveness(enum.IntEnum):
    AlwaysLive = 0
    OffChipAfterFwd = 1
    OffChipAfterFwdNoOverlap = 2
    OffChipAfterEachPhase = 3


class OverlapMode(enum.Enum):
    NoOverlap = "no_overlap"
    OverlapAccumulationLoop = "overlap_accumulation_loop"
    OverlapDeviceIterationLoop = "overlap_device_iteration_loop"
