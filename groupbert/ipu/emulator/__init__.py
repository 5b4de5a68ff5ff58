"""A CPU emulator of PopTorch (Graphcore's PyTorch for IPUs): the ``poptorch`` namespace this
application uses, with PopTorch's names, signatures and semantics (SDK 3.x), run in plain PyTorch.

``from groupbert.ipu import poptorch`` returns the real module when the Poplar SDK is installed and this
package otherwise. What it covers (details and sources in each module):

- :mod:`.options`, :mod:`._options_impl`: ``Options`` and its ``Training``/``Precision``/
  ``TensorLocations``/``Distributed``/``Jit``/``_Popart`` parts; chainable setters; frozen once used;
- :mod:`.executor`: ``trainingModel``/``inferenceModel`` → ``PoplarExecutor``: batching over device
  iterations, gradient accumulation and replicas, Mean/Sum reduction, one optimizer update per device
  iteration, ``OutputMode`` shapes, ``setOptimizer`` semantics, PopTorch's error messages; separate
  host and device copies of the weights (uploaded on attach, read back explicitly or lazily), buffers per
  replica;
- :mod:`.wrapping`: the class swap ``trainingModel`` applies to the user's module, parameters and buffers
  (implicit ``copyWeightsToHost`` on host reads; pickling and ``state_dict`` unwrapped);
- :mod:`.args`: binding a call's arguments to ``forward`` and checking later calls against the compiled
  inputs;
- :mod:`.blocks`: ``BeginBlock``/``Block``/``BlockFunction``/``removeBlocks``/``Stage``/
  ``PipelinedExecution``/``ShardedExecution``; the compile trace (:mod:`.tracing`) records block, IPU
  and pipeline stage of every op and checks the pipeline rules;
- :mod:`.optim`: ``poptorch.optim.SGD/Adam/AdamW/RMSprop/LAMB`` and PopART's update equations;
- :mod:`.ops`: ``identity_loss``, ``recomputationCheckpoint``, ``serializedMatMul``, ``custom_op`` (with a
  registry of torch implementations) and the other annotations;
- :mod:`.dataloader`: ``DataLoader`` with combined batches and per-process sub-datasets;
- :mod:`.memory` (emulator only): per-IPU memory estimate and ``OutOfMemoryError`` at compile time.

Not emulated: numerics of fp16 on the IPU (stochastic rounding, fp16 partials), phased execution,
``compileAndExport``/``poptorch.load``, anchored internal tensors, CPU ops (``poptorch.CPU``),
asynchronous data loading (it is synchronous here), cycle counts.
"""
from __future__ import annotations

from . import enums, memory, optim
from .blocks import (
                     BeginBlock,
                     Block,
                     BlockFunction,
                     LegacyBeginBlockFn,
                     PipelinedExecution,
                     ShardedExecution,
                     Stage,
                     removeBlocks,
)
from .dataloader import AsynchronousDataAccessor, DataLoader
from .enums import (
                     AutoStage,
                     CommGroupType,
                     ConnectionType,
                     DataLoaderMode,
                     HalfFloatCastingBehavior,
                     Liveness,
                     MatMulSerializationMode,
                     MeanReductionStrategy,
                     OutputMode,
                     OverlapMode,
                     ReductionType,
                     SharingStrategy,
                     SyncPattern,
)
from .errors import (
                     AssertError,
                     Error,
                     OutOfMemoryError,
                     RecoverableError,
                     UnrecoverableError,
                     createPoptorchError,
                     poptorch_core,
)
from .executor import PoplarExecutor, inferenceModel, trainingModel
from .memory import IPU_MEMORY_BYTES, IPU_TILES
from .ops import (
                     Attribute,
                     NameScope,
                     custom_op,
                     for_loop,
                     identity_loss,
                     ipu_print_tensor,
                     ipuHardwareIsAvailable,
                     ipuHardwareVersion,
                     isRunningOnIpu,
                     nop,
                     recomputationCheckpoint,
                     register_custom_op,
                     registered_custom_ops,
                     serializedMatMul,
                     set_available_memory,
                     setLogLevel,
                     unregister_custom_op,
)
from .options import Options, TensorLocationSettings

__version__ = "3.4.0+emulator"  # the PopTorch API version emulated

#: True in this package (real PopTorch has no such attribute).
IS_EMULATOR = True

# PopTorch's AnchorMode was renamed OutputMode in SDK 2.4.
AnchorMode = OutputMode

__all__ = [
    "Options", "TensorLocationSettings", "trainingModel", "inferenceModel", "PoplarExecutor", "DataLoader",
    "AsynchronousDataAccessor", "BeginBlock", "Block", "BlockFunction", "LegacyBeginBlockFn", "removeBlocks",
    "Stage", "PipelinedExecution", "ShardedExecution", "OutputMode", "AnchorMode", "ReductionType",
    "MeanReductionStrategy", "AutoStage", "DataLoaderMode", "ConnectionType", "SyncPattern",
    "MatMulSerializationMode", "CommGroupType", "SharingStrategy", "HalfFloatCastingBehavior", "Liveness",
    "OverlapMode", "identity_loss", "recomputationCheckpoint", "serializedMatMul", "set_available_memory",
    "nop", "ipu_print_tensor", "isRunningOnIpu", "ipuHardwareIsAvailable", "ipuHardwareVersion",
    "custom_op", "register_custom_op", "unregister_custom_op", "registered_custom_ops", "for_loop",
    "Attribute", "NameScope", "setLogLevel", "Error", "RecoverableError", "UnrecoverableError",
    "AssertError", "OutOfMemoryError", "createPoptorchError", "poptorch_core", "optim", "enums", "memory",
    "IPU_MEMORY_BYTES", "IPU_TILES", "IS_EMULATOR", "__version__",
]
