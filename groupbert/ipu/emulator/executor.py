"""``trainingModel`` / ``inferenceModel`` and the ``PoplarExecutor`` they return, run on the CPU.

Follows graphcore/poptorch:python/__init__.py and python/_poplar_executor.py (SDK 3.x):

- the wrapper runs a shallow ``copy.copy`` of the model, so parameters are shared with the original;
  the options are frozen and cloned; the training default optimizer is ``optim.SGD(lr=0.01)``;
  wrapping an already wrapped model for training raises until ``destroy()`` is called; an inference
  model with ``gradientAccumulation != 1`` is an error; ``OutputMode.Default`` becomes ``Final`` in
  training and ``All`` in inference;
- the first call (or ``compile()``) is the "compilation": one traced forward of the first micro-batch
  (:mod:`.tracing`; RNG and buffers are restored afterwards) records the blocks, IPUs and pipeline
  stages, identifies the loss, checks the pipeline rules with PopTorch's messages
  (graphcore/poptorch:popart_compiler/source/Compiler.cpp) and the per-IPU memory (:mod:`.memory`);
- each call runs ``deviceIterations`` device iterations; in training each is ``GA x replicas``
  micro-batch forward/backward passes, the loss scaled by ``1 / (GA x replicas)`` (``ReductionType.Mean``)
  or 1 (``Sum``) and by ``loss_scaling`` (removed from the gradients again), optional global
  grad-norm clipping (``max_grad_norm``), then ONE PopART update (:func:`.optim.apply_update`) with the
  hyperparameters captured by the last ``setOptimizer`` (a host-side LR change only takes effect after
  ``setOptimizer``, as on the IPU). Replicas of one input group compute once and count ``group size``
  times. Outputs are collected per ``OutputMode`` (:mod:`.batching`), detached.

The loss of a training model is, as in PopTorch, the one final loss among ``poptorch.identity_loss``
outputs and torch loss-function outputs (``F.cross_entropy`` ...): none is "Couldn't find a loss in
graph!", several independent ones "Multiple independent losses found in graph..."
(graphcore/poptorch:poptorch/source/RemoveSurplusIdentityLosses.cpp, ``removeSurplusIdentityLosses``; a
returned tensor is *not* a loss by itself).

Arguments (:mod:`.args`, PopTorch's ``_args_parser.py``) are bound to ``forward``'s parameters, omitted
ones take their defaults, and every call after compilation is validated against the compiled inputs with
PopTorch's messages ("Type mismatch for X", "Shape mismatch for X" ...). The trace runs on clones of the
first micro-batch (``_preprocessGraph`` clones the inputs), so in-place input updates reach the caller's
tensors once per run, not once more at compilation.

Host and device state (``_poplar_executor.py``: ``copyWeightsToHost``, ``copyWeightsToDevice``,
``copyWeightsToHostIfNeeded``, ``_on_device_attach``, ``__call__``, ``destroy``, ``detachFromDevice``):

- the executor holds **device copies** of the traced module's named parameters and buffers (allocated at
  compilation); runs point the parameters at them (``Tensor.data``, a pointer swap per call, no clone per
  step) and train those; the host tensors keep their values until copied back;
- **upload** (``copyWeightsToDevice``) happens on attach (at compilation with ``ConnectionType.Always``,
  at the first call with ``OnDemand``, on every ``attachToDevice()``), explicitly, from
  ``load_state_dict`` on the wrapper when attached, and for an inference model when the training wrapper
  of the same module has copied newer weights to the host (``_host_weights_version``). Host writes are
  never detected otherwise;
- **download** (``copyWeightsToHost``) copies into the existing host tensors in place and increments
  ``_host_weights_version``. A training call marks host weights dirty; they are copied back lazily when
  the user's module, its parameters or buffers are read (:mod:`.wrapping`: the class swap PopTorch does),
  by ``detachFromDevice()`` and ``destroy()``. Inference calls never mark them dirty;
- **buffers are per replica**: one device copy per input group of replicas (replicas of one group read
  the same data, so their buffers stay equal), each filled from the host on upload (PopART streams the
  host value to every replica); the host receives replica 0's copy (PopART ``Devicex``: a variable is
  returned by the first replica of its group, graphcore/popart:willow/src/popx/devicex.cpp). An in-place
  buffer update with input replication and ``broadcastBuffers(True)`` (the default) is refused
  (graphcore/poptorch:poptorch/source/InplaceOps.cpp); BatchNorm's running statistics are PopART
  batch-norm outputs, not aliased buffers (``_impl.BUFFERS_CAN_CHANGE``), and are exempt *(from code
  reading)*;
- ``executor._emulator_copies`` (emulator only) counts the copies: ``{"to_host": n, "to_device": n}``.

The optimizer state lives in the executable (:class:`.optim.DeviceOptimizerState`), not in the optimizer
object: a ``poptorch.optim`` optimizer's ``state_dict()`` reads it from the device as ``ipu_state`` /
``ipu_param`` (PopART names), and a state loaded into the optimizer is written to the device on attach or
before the next run (``_get_optim_state_dict``, ``_write_optim_state_dict_if_needed``).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils import _pytree as pytree

from . import enums, memory, optim, wrapping
from .args import ArgsParser, InputSpec
from ._runtime import RUNTIME, running
from .batching import MicroBatches, collect_outputs, replica_data_group
from .blocks import Block, PipelinedExecution, ShardedExecution
from .errors import NO_EXECUTABLE_ERR, AssertError, Error
from .options import Options
from .tracing import Placement, Trace

__all__ = ["PoplarExecutor", "trainingModel", "inferenceModel"]

logger = logging.getLogger(__name__)

_NO_LOSS = "Couldn't find a loss in graph!"
_MULTIPLE_LOSSES = ("Multiple independent losses found in graph. Graph must have one final loss. "
                    "Wrap final graph loss in poptorch.identity_loss.")
_BROADCAST_BUFFERS = ("PopTorch does not support broadcasting buffers. If your model is able to tolerate "
                      "buffers becoming out of sync between replicas, you can disable buffer broadcasting "
                      "using poptorch.Options.broadcastBuffers(False).")
# graphcore/poptorch:python/_impl.py BUFFERS_CAN_CHANGE: modules whose buffers PopART's own op updates
_BUFFERS_CAN_CHANGE = (torch.nn.modules.batchnorm._BatchNorm,)


def _is_pipelined(strategy) -> bool:
    return isinstance(strategy, PipelinedExecution) and not isinstance(strategy, ShardedExecution)


def _ancestors(node) -> set:
    seen, stack = set(), [node]
    while stack:
        for nxt, _ in stack.pop().next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def _resolve_loss_rule(out: Any, losses: List[Tuple[torch.Tensor, str, str]]) -> Tuple[str, int]:
    """How to find the loss in every later forward: ("identity", k) or ("output", leaf index)."""
    leaves = pytree.tree_flatten(out)[0]
    if losses:
        # Losses that do not depend on a trainable parameter (metrics under no_grad) cannot start a
        # backward pass and are left out.
        nodes = [t.grad_fn if isinstance(t, torch.Tensor) and t.requires_grad else None for t, _, _ in losses]
        if all(n is None for n in nodes):
            raise Error(f"{_NO_LOSS} No loss depends on a trainable parameter.")
        ancestors = [_ancestors(n) if n is not None else set() for n in nodes]
        final = [i for i, n in enumerate(nodes)
                 if n is not None and not any(n in ancestors[j] for j in range(len(nodes)) if j != i)]
        if len(final) != 1:
            raise Error(_MULTIPLE_LOSSES)
        i = final[0]
        tensor, _, kind = losses[i]
        if kind == "identity":
            return "identity", sum(1 for _, _, k in losses[:i] if k == "identity")
        for j, leaf in enumerate(leaves):
            if leaf is tensor:
                return "output", j
        raise Error(f"The model's loss (computed by torch.nn.functional.{kind}) is not among its outputs: "
                    "return it, or mark it with poptorch.identity_loss(loss, reduction=...)")
    # PopTorch: a training graph without an identity loss (poptorch.identity_loss or a torch loss function)
    # is an error, whatever the model returns (tests/custom_loss_test.py, test_no_loss).
    raise Error(_NO_LOSS)


class PoplarExecutor:
    """The wrapper ``trainingModel``/``inferenceModel`` return; call it like the model."""

    def __init__(self, model: torch.nn.Module, options: Optional[Options], training: bool,
                 optimizer: Optional[torch.optim.Optimizer] = None,
                 user_model: Optional[torch.nn.Module] = None) -> None:
        if options is not None:
            if not isinstance(options, Options):
                raise Error(f"Invalid type: 'options' is of type {type(options)} (Expected poptorch.Options)")
            options._freeze()  # prevent the user from modifying these options
            options = options.clone()
        else:
            options = Options()
        self._user_model = user_model if user_model is not None else model
        self._model = model
        self._training = training
        # host/device state (set before anything can read host weights through the wrapper classes)
        self._dirty_host_weights = False
        self._host_weights_version = 0
        self._emulator_copies = {"to_host": 0, "to_device": 0}
        self._slots: List[Tuple[str, torch.Tensor, bool]] = []  # (name, host tensor, is buffer)
        self._device_params: Dict[str, torch.Tensor] = {}
        self._device_buffers: List[Dict[str, torch.Tensor]] = []  # one dict per input group of replicas
        self._args_parser = ArgsParser(model)  # before the model is wrapped (PopTorch does the same)
        self._executable_inputs: Optional[InputSpec] = None
        if training:
            if options.defaultOutputMode():
                options.outputMode(enums.OutputMode.Final)
            if optimizer is None:
                optimizer = optim.SGD(self._user_model.parameters(), lr=0.01)
        else:
            if options.defaultOutputMode():
                options.outputMode(enums.OutputMode.All)
            if options.Training.gradient_accumulation != 1:
                msg = ("You must set poptorch.Options().Training.gradientAccumulation to 1 or leave it as its "
                       "default value (1) when running a poptorch.inferenceModel().")
                if _is_pipelined(options._execution_strategy):
                    msg += (" Use poptorch.Options().deviceIterations to process a sufficient number of "
                            "batches each run for pipelined execution instead.")
                raise Error(msg)
            if optimizer is not None:
                raise AssertError("Optimizer should be None for inference")
        self._options = options
        self._optimizer: Optional[torch.optim.Optimizer] = None
        self._hyper: Optional[Dict[str, Any]] = None
        self._compiled = False
        self._attached = False
        self._per_replica = False
        self._loss_rule: Optional[Tuple[str, int]] = None
        self._identity_count = 0
        self.placement: Optional[Placement] = None
        self.memory_report: Optional[List[memory.IpuMemory]] = None
        if optimizer is not None:
            self.setOptimizer(optimizer)
        options._freeze()
        if training:
            wrapping.install(self, self._user_model)

    def __del__(self):
        # PopTorch's wrapped module holds its executor through a weak reference only: once the executor is
        # gone, weights trained since the last copy to the host are lost. The emulator says so.
        try:
            if (self.__dict__.get("_dirty_host_weights") and self.__dict__.get("_compiled")
                    and not sys.is_finalizing()):
                logger.info("A trainingModel was garbage-collected before its trained weights were copied "
                            "to the host: the host model keeps its old weights (keep a reference to the "
                            "PoplarExecutor, or call copyWeightsToHost() or destroy() first)")
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- PopTorch's public API ---------------------------------------------------------------------
    def __getattr__(self, attr: str):
        if attr in ("_user_model", "_model", "_dirty_host_weights") or attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(self._user_model, attr)

    @property
    def model(self) -> torch.nn.Module:
        """The wrapped (user's) model."""
        return self._user_model

    @property
    def options(self) -> Options:
        return self._options

    @property
    def rng_state(self) -> torch.Tensor:
        """The emulated device's random state (torch's CPU generator)."""
        return torch.get_rng_state()

    @rng_state.setter
    def rng_state(self, state: torch.Tensor) -> None:
        torch.set_rng_state(state)

    def isCompiled(self) -> bool:
        return self._compiled

    def isAttachedToDevice(self) -> bool:
        return self._attached

    def compile(self, *args, **kwargs) -> None:
        """Trace and "compile" with these inputs (same arguments as the model) without running."""
        parsed = self._args_parser(args, kwargs, False)
        if self._compiled:
            logger.warning("Call to compile() ignored: the executable is already compiled")
            return
        self._compile(parsed, self._split(parsed))

    def copyWeightsToHost(self) -> None:
        """Copy the device weights and buffers (replica 0's buffers) into the host tensors, in place."""
        if not self._compiled:
            raise Error(NO_EXECUTABLE_ERR)
        self._dirty_host_weights = False  # reading the host tensors below must not copy again
        with torch.no_grad():
            for name, host, is_buffer in self._slots:
                host.copy_(self._device_buffers[0][name] if is_buffer else self._device_params[name])
        self._host_weights_version += 1
        self._emulator_copies["to_host"] += 1

    def copyWeightsToDevice(self) -> None:
        """Copy the host parameters and buffers to the device (buffers to every replica)."""
        if not self._compiled:
            raise Error(NO_EXECUTABLE_ERR)
        self._dirty_host_weights = False  # the device is overwritten: nothing to read back
        with torch.no_grad():
            for name, host, is_buffer in self._slots:
                if is_buffer:
                    for replica_buffers in self._device_buffers:
                        replica_buffers[name].copy_(host)
                else:
                    self._device_params[name].copy_(host)
        self._emulator_copies["to_device"] += 1

    def copyWeightsToHostIfNeeded(self) -> bool:
        """Return True if the weights on the host were dirty and have been updated."""
        if self._dirty_host_weights:
            logger.debug("Implicit copyWeightsToHost()")
            self.copyWeightsToHost()
            return True
        return False

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True):
        """Load into the wrapped model and, if attached, copy the weights to the device."""
        out = self._user_model.load_state_dict(state_dict, strict)
        if self.isAttachedToDevice():
            logger.debug("load_state_dict: implicit copyWeightsToDevice()")
            self.copyWeightsToDevice()
        return out

    def setOptimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Set the optimizer of a training model (graphcore/poptorch:python/_poplar_executor.py,
        ``setOptimizer``): its current hyper-parameters go to the device, with PopART's replacement checks
        once compiled (:func:`.optim.check_replacement`; ``accum_type`` float16 needs
        ``MeanReductionStrategy.Running``, :func:`.optim.optimizer_to_dict`). A ``poptorch.optim``
        optimizer's ``state_dict()`` then reads the device state; a state it holds from
        ``load_state_dict`` is written to the device (now if attached, else on attach). A different
        optimizer object after compilation: the old one's state is read back and it is detached; the new
        one's state is written only if it has one, so a fresh optimizer keeps the device's moments."""
        if not self._training:
            raise Error("setOptimizer() is only available for a poptorch.trainingModel()")
        from types import MethodType
        bound = optimizer.__dict__.get("state_dict")
        if isinstance(bound, MethodType) and bound.__self__ is not self:
            bound()  # used by another (destroyed) model: its state comes back first, as destroy() reads it
        hyper = optim.snapshot_hyperparameters(optimizer)
        desc = optim.optimizer_to_dict(optimizer, self._options, self._compiled)
        old = self._optimizer
        if self._compiled:
            optim.check_replacement(self.__dict__["_optimizer_dict"], desc,
                                    lambda: self._group_weight_names(optimizer))
            if old is not None and optimizer is not old:
                if optim.is_poptorch_optimizer(old):
                    self._read_optimizer_state_if_needed()
                    old.__dict__.pop("state_dict", None)  # back to its own (host) state_dict
                if optim.is_poptorch_optimizer(optimizer):
                    optimizer.ipu_state_is_dirty = True
        if optim.is_poptorch_optimizer(optimizer):
            optimizer.state_dict = MethodType(PoplarExecutor._get_optimizer_state_dict, self)
        changed = desc != self.__dict__.get("_optimizer_dict")
        self._optimizer, self._hyper, self._optimizer_dict = optimizer, hyper, desc
        device = self.__dict__.get("_optimizer_device")
        if device is not None and changed:
            device.upload(desc)  # updateOptimizers
        if self._compiled and self._attached:
            self._optimizer_state_on_attach()
            self._write_optimizer_state_if_needed(sync_weights=True)

    # ---- optimizer state (python/_poplar_executor.py: _on_device_attach, _get_optim_state_dict,
    # _read_optim_state_dict_if_needed, _write_optim_state_dict_if_needed) ---------------------------------
    def _group_weight_names(self, optimizer: torch.optim.Optimizer) -> List[List[str]]:
        names = optim.weight_names(self._model)
        return [[names.get(id(p), "?") for p in g["params"]] for g in optimizer.param_groups]

    def _optimizer_state_on_attach(self) -> Optional["optim.DeviceOptimizerState"]:
        """The executable's optimizer state, allocated (zeros) the first time it is needed after
        compilation; what ``_on_device_attach`` does then: write a state the optimizer holds (a checkpoint
        loaded before compilation), else mark the host copy stale so that ``state_dict()`` reads the
        device. Idempotent; called before each update, by ``setOptimizer`` and by ``state_dict()``."""
        device = self.__dict__.get("_optimizer_device")
        attached = self._attached or self._options.connection_type == enums.ConnectionType.Always
        if device is not None or not (self._training and self._compiled and attached):
            return device
        device = optim.DeviceOptimizerState(self._optimizer, self._hyper, self._optimizer_dict, self._model,
                                            self._options)
        self.__dict__["_optimizer_device"] = device
        opt = self._optimizer
        if optim.is_poptorch_optimizer(opt):
            if opt.has_state():
                opt.ipu_state_is_dirty = True
                self._write_optimizer_state_if_needed(sync_weights=False)
            else:
                opt.host_state_is_dirty, opt.ipu_state_is_dirty = True, False
        return device

    def _get_optimizer_state_dict(self) -> Dict[str, Any]:
        """Replaces ``state_dict`` of the ``poptorch.optim`` optimizer given to this model: the device
        state when the host copy is stale ({"ipu_state", "ipu_param", "state", "param_groups"})."""
        self._optimizer_state_on_attach()
        self._read_optimizer_state_if_needed()
        return self._optimizer.get_state_dict()

    def _read_optimizer_state_if_needed(self) -> None:
        opt = self._optimizer
        if not optim.is_poptorch_optimizer(opt):
            return
        if not opt.host_state_is_dirty:
            logger.debug("Using cached optimiser state dict")
            return
        device = self.__dict__.get("_optimizer_device")
        if device is None:
            raise Error(NO_EXECUTABLE_ERR)
        logger.debug("Writing optimiser state tensors from IPU to host.")
        opt.set_state_dict({**device.read(), **torch.optim.Optimizer.state_dict(opt)})
        opt.ipu_state_is_dirty = False

    def _write_optimizer_state_if_needed(self, sync_weights: bool) -> None:
        """Write a state loaded into the optimizer (``load_state_dict``) to the device. ``sync_weights``:
        PopTorch first reads the weights back (its write uploads weights too); not inside a run, where the
        device weights are in use."""
        opt = self._optimizer
        if not (optim.is_poptorch_optimizer(opt) and opt.ipu_state_is_dirty):
            return
        if opt.host_state_is_dirty:
            raise AssertError("Both host and ipu states cannot be dirty at the same time.")
        device = self.__dict__.get("_optimizer_device")
        if opt.has_state():
            if device is None:
                raise Error("Must be attached to a device to write the optimizer state.")
            if sync_weights:
                self.copyWeightsToHostIfNeeded()
            logger.debug("Writing optimiser state tensors from host to IPU memory.")
            device.write(opt.get_state_dict())
        opt.ipu_state_is_dirty = False

    def detachFromDevice(self) -> None:
        """Read the weights back (training) and release the device; the next call attaches again."""
        if not self._compiled:
            raise Error(NO_EXECUTABLE_ERR)
        if not self._attached:
            raise Error("Device is not attached")
        if self._training:
            self.copyWeightsToHostIfNeeded()
        self._attached = False

    def attachToDevice(self) -> None:
        """Attach again and upload the host weights (``_on_device_attach``)."""
        if not self._compiled:
            raise Error(NO_EXECUTABLE_ERR)
        if self._options.connection_type == enums.ConnectionType.Never:
            raise AssertError("Trying to attach to an offline device (ConnectionType.Never)")
        if self._attached:
            raise Error("Device is already attached")
        self._attached = True
        self._on_device_attach()

    def destroy(self) -> None:
        """Release the device and the executable; a training model's weights are read back first and the
        user's module is unwrapped (it can then be wrapped again). Does nothing before compilation, as in
        PopTorch (the module then stays wrapped)."""
        if not self._compiled:
            return
        if self._training:
            self.copyWeightsToHostIfNeeded()
        self._compiled = self._attached = False
        self._slots, self._device_params, self._device_buffers = [], {}, []
        self._executable_inputs = None
        if self._training:
            if not wrapping.is_wrapped(self._user_model):
                raise Error("model was never wrapped")
            wrapping.uninstall(self._user_model)

    def cycleCount(self) -> int:
        raise Error("Cycle count logging needs IPU hardware; the emulator has no cycle counter.")

    def __call__(self, *args, **kwargs):
        if self._options.connection_type == enums.ConnectionType.Never:
            raise AssertError("Trying to run a model on an offline device (ConnectionType.Never): use "
                              "model.compile(inputs) instead of model(inputs)")
        first = not self._compiled
        parsed = self._args_parser(args, kwargs, not first)
        if first:
            batches = self._split(parsed)
            self._compile(parsed, batches)
        if not self._attached:
            self.attachToDevice()
        if not self._training:
            # the same module trained by a trainingModel: bring its newest weights here
            copy_if_needed = getattr(self._user_model, "copyWeightsToHostIfNeeded", None)
            if callable(copy_if_needed):
                copy_if_needed()
                version = self._user_model._host_weights_version
                if self._host_weights_version != version:
                    logger.debug("Implicit copyWeightsToDevice()")
                    self.copyWeightsToDevice()
                    self._host_weights_version = version
        if not first:
            self._executable_inputs.validate(parsed)
            batches = self._split(parsed)
        out = self._run(batches)
        if self._training:
            self._dirty_host_weights = True
        return out

    # ---- emulator extras (placement and memory, for logging and tests) ------------------------------
    @property
    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        return self._optimizer

    @property
    def stages(self):
        """Forward pipeline stages found at compile time (:class:`.tracing.StageInfo`)."""
        return self.placement.stages if self.placement else []

    @property
    def block_placements(self):
        """Blocks in execution order (:class:`.tracing.BlockInfo`: block_id, ipu, stage, param_names)."""
        return self.placement.blocks if self.placement else []

    @property
    def num_ipus(self) -> int:
        """IPUs per replica (the highest IPU id used + 1)."""
        return self.placement.num_ipus if self.placement else 0

    @property
    def total_ipus(self) -> int:
        """IPUs of all replicas, rounded up to a power of 2 if ``autoRoundNumIPUs(True)``."""
        n = self.num_ipus * self._options.replication_factor
        if self._options.auto_round_num_ipus and n > 0:
            n = 1 << math.ceil(math.log2(n))
        return n

    @property
    def num_pipeline_stages(self) -> int:
        """Pipeline stages PopART builds: n forward stages, 2n - 1 when training."""
        n = self.placement.num_forward_stages if self.placement else 0
        return 2 * n - 1 if self._training and n else n

    # ---- internals -----------------------------------------------------------------------------------
    def _split(self, parsed) -> MicroBatches:
        o = self._options
        ga = o.Training.gradient_accumulation if self._training else 1
        return MicroBatches(parsed.args, parsed.kwargs, o.device_iterations, ga, o.replication_factor,
                            o.input_group_size)

    # ---- device state --------------------------------------------------------------------------------
    def _allocate_device_state(self, groups: int) -> None:
        """The device copies of the traced module's named parameters and buffers (``copyWeightsToHost`` /
        ``copyWeightsToDevice`` in PopTorch address them by these names), filled from the host."""
        params = dict(self._model.named_parameters())
        buffers = dict(self._model.named_buffers())
        self._slots = [(n, t, False) for n, t in params.items()] + [(n, t, True) for n, t in buffers.items()]
        with torch.no_grad():
            self._device_params = {n: t.detach().clone() for n, t in params.items()}
            self._device_buffers = [{n: t.detach().clone() for n, t in buffers.items()} for _ in range(groups)]

    @contextlib.contextmanager
    def _on_device(self):
        """Run the traced module on the device copies: its parameters and buffers point at them for the
        duration (a pointer swap, no copy) and the wrapper classes are off (no implicit copy on the hot
        path). Host values, host gradients and classes are restored afterwards."""
        undone = wrapping.unwrap([t for _, t, _ in self._slots] + [self._model])
        saved = []
        try:
            for name, t, is_buffer in self._slots:
                saved.append((t.data, None if is_buffer else t.grad))
                if is_buffer:
                    t.data = self._device_buffers[0][name]
                else:
                    t.grad = None
                    t.data = self._device_params[name]
            yield
        finally:
            for (name, t, is_buffer), (host, grad) in zip(self._slots, saved):
                if not is_buffer:
                    self._device_params[name] = t.data  # whatever the update left there
                    t.grad = grad
                t.data = host
            wrapping.rewrap(undone)

    def _use_replica_buffers(self, group: int) -> None:
        """Point the buffers at the copy of the replicas of input group ``group`` (inside :meth:`_on_device`)."""
        buffers = self._device_buffers[group]
        for name, t, is_buffer in self._slots:
            if is_buffer:
                t.data = buffers[name]

    def _on_device_attach(self) -> None:
        """Called on every attach: upload the weights, then the optimizer state the optimizer holds (a loaded
        checkpoint); PopTorch also writes the RNG state."""
        self.copyWeightsToDevice()
        if self._training and self._compiled:
            self._optimizer_state_on_attach()

    def _weight_objects(self) -> Dict[str, Tuple[int, int]]:
        """Identity of every named buffer and parameter (``_impl.getBufferAndParameterAddresses``)."""
        out: Dict[str, Tuple[int, int]] = {}
        for module_name, module in self._model.named_modules():
            if isinstance(module, _BUFFERS_CAN_CHANGE):
                continue
            for name, b in module.named_buffers(prefix=module_name, recurse=False):
                out["Buffer " + name] = (0, id(b))
        for name, p in self._model.named_parameters():
            out["Parameter " + name] = (1, id(p))
        return out

    def _check_weights_kept(self, before: Dict[str, Tuple[int, int]]) -> None:
        """``_impl.errorOnBufferOrParameterAddressChanges``: buffers and parameters must be updated in place."""
        after = self._weight_objects()
        for key in sorted(before, key=lambda k: before[k][0]):
            kind, name = key.split(" ", 1)
            if key not in after:
                raise Error(f"{kind} {name} is removed from the model when calling the forward method.")
            if after[key] != before[key]:
                raise Error(f"{kind} {name} is reassigned within the model when calling the forward method. "
                            f"This is not supported. Consider using self.{name}.copy_(src) to copy data from "
                            "a source tensor, where src is the name of the source tensor.")

    def _restore_weight_objects(self) -> None:
        """Put back the parameter and buffer objects a failed trace replaced (PopTorch restores the CPU
        tensors after every trace)."""
        for name, t, is_buffer in self._slots:
            module_name, _, attr = name.rpartition(".")
            module = self._model.get_submodule(module_name) if module_name else self._model
            table = module._buffers if is_buffer else module._parameters
            if table.get(attr) is not t:
                table[attr] = t

    # ---- compilation ---------------------------------------------------------------------------------
    def _compile(self, parsed, batches: MicroBatches) -> None:
        # PopTorch traces with clones of the (narrowed) inputs: the caller's tensors are not touched.
        args, kwargs = pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                                       batches.get(0, 0, 0))
        strategy = self._options._execution_strategy
        manager = strategy._make_stages_manager()
        rng = torch.get_rng_state()
        self._allocate_device_state(batches.groups)
        before = self._weight_objects()
        exempt = {f"{m}.{b}" if m else b for m, module in self._model.named_modules()
                  if isinstance(module, _BUFFERS_CAN_CHANGE) for b, _ in module.named_buffers(recurse=False)}
        updated_buffers = []
        Block._stages_manager = manager
        with self._on_device():
            buffer_versions = {n: t._version for n, t, is_buffer in self._slots if is_buffer}
            trace = Trace(self._model, record_memory=self._training)
            manager.recorder = trace
            saved_hooks = (torch.autograd.graph.saved_tensors_hooks(trace.pack, trace.unpack)
                           if self._training else contextlib.nullcontext())
            RUNTIME.on_checkpoint = trace.checkpoint
            try:
                with running(record_losses=self._training) as losses, torch.set_grad_enabled(self._training):
                    with saved_hooks, trace:
                        out = self._model(*args, **kwargs)
                    self._check_weights_kept(before)
                    updated_buffers = [n for n, t, is_buffer in self._slots
                                       if is_buffer and n not in exempt and t._version != buffer_versions[n]]
                    if self._training:
                        self._loss_rule = _resolve_loss_rule(out, losses)
                        self._identity_count = sum(1 for _, _, k in losses if k == "identity")
            finally:
                Block._stages_manager = None
                RUNTIME.on_checkpoint = None
                torch.set_rng_state(rng)
                self._restore_weight_objects()
        del out
        o = self._options
        if updated_buffers and o.broadcast_buffers and o.input_group_size < o.replication_factor:
            raise Error(_BROADCAST_BUFFERS)
        placement = trace.placement()
        self._check_placement(placement)
        self.placement = placement
        self.memory_report = memory.estimate(self._model, self._optimizer, self._options, placement,
                                             self._training, _is_pipelined(strategy) and self._training)
        if self._options._emulator.memory_check:
            memory.check(self.memory_report, placement.num_forward_stages)
        self._executable_inputs = InputSpec(parsed)
        self._compiled = True
        # the trace ran on the device copies: attaching uploads the host values again (_compile in PopTorch
        # attaches with ConnectionType.Always, then calls _on_device_attach)
        self._attached = self._options.connection_type == enums.ConnectionType.Always
        if self._attached:
            self._on_device_attach()

    def _check_placement(self, placement: Placement) -> None:
        strategy = self._options._execution_strategy
        if not _is_pipelined(strategy):
            return
        prev = None
        for r in placement.regions:
            if prev is not None and r.stage_id < prev.stage_id:
                if not strategy._block_map and strategy.auto_stage == enums.AutoStage.SameAsIpu:
                    raise Error(
                        f"Block '{r.block_id}' runs on IPU {r.ipu} after block '{prev.block_id}' on IPU "
                        f"{prev.ipu}: with poptorch.AutoStage.SameAsIpu (the default of "
                        "poptorch.PipelinedExecution) the stage id is the IPU id, so the pipeline stages "
                        f"would go backwards ({prev.stage_id} -> {r.stage_id}). To run non-consecutive "
                        "stages on the same IPU (for example a tied MLM head back on IPU 0) use "
                        "options.setExecutionStrategy(poptorch.PipelinedExecution("
                        "poptorch.AutoStage.AutoIncrement)).")
                raise Error(f"Pipeline stages must increase along the forward pass, but block "
                            f"'{r.block_id}' (stage {r.stage_id}) runs after block '{prev.block_id}' "
                            f"(stage {prev.stage_id}).")
            prev = r if prev is None or r.stage_id >= prev.stage_id else prev
        n = placement.num_forward_stages
        if self._training:
            total = 2 * n - 1
            if self._options.Training.gradient_accumulation < total:
                raise Error("poptorch.Options().Training.gradientAccumulation must be greater than or equal "
                            f"to the number of pipeline stages ({total}) when using "
                            f"poptorch.PipelinedExecution. Please note that a model with {n} pipeline stages "
                            f"in PopTorch will have an additional {n - 1} stages when training.")
        elif self._options.device_iterations < n:
            raise Error("poptorch.Options().deviceIterations must be greater than or equal to the number of "
                        f"pipeline stages ({n}) when using PopTorch.PipelinedExecution.")

    def _pick_loss(self, leaves: List[Any], losses) -> torch.Tensor:
        kind, index = self._loss_rule
        if kind == "identity":
            identity = [t for t, _, k in losses if k == "identity"]
            if len(identity) != self._identity_count:
                raise Error("The model called poptorch.identity_loss a different number of times than when "
                            "it was compiled")
            return identity[index]
        return leaves[index]

    def _run(self, batches: MicroBatches):
        o = self._options
        di, replicas, gsize = o.device_iterations, o.replication_factor, o.input_group_size
        ga = batches.ga
        owner = [replica_data_group(r, replicas, gsize, o.input_cgt) for r in range(replicas)]
        per_batch: List[Tuple[List[Any], Any]] = []
        # replicas own their buffers: switch between the input groups' copies if there are several
        self._per_replica = batches.groups > 1 and any(is_buffer for _, _, is_buffer in self._slots)
        with self._on_device():
            if self._training:
                self._run_training(batches, owner, per_batch)
            else:
                with running(), torch.no_grad():
                    for d in range(di):
                        outs = []
                        for g in range(batches.groups):
                            if self._per_replica:
                                self._use_replica_buffers(g)
                            a, k = batches.get(d, 0, g)
                            outs.append(self._flat(self._model(*a, **k)))
                        per_batch.extend(outs[owner[r]] for r in range(replicas))
        return collect_outputs(per_batch, o.output_mode, o.output_return_period, di, ga, replicas)

    @staticmethod
    def _flat(out) -> Tuple[List[Any], Any]:
        leaves, spec = pytree.tree_flatten(out)
        return [t.detach() if isinstance(t, torch.Tensor) else t for t in leaves], spec

    def _run_training(self, batches: MicroBatches, owner: List[int], per_batch: list) -> None:
        o = self._options
        replicas, ga = o.replication_factor, batches.ga
        mean = o.Training.accumulation_and_replication_reduction_type == enums.ReductionType.Mean
        scale = 1.0 / (ga * replicas) if mean else 1.0
        copies = [owner.count(g) for g in range(batches.groups)]  # replicas reading each input slice
        loss_scaling = self._hyper["attrs"]["loss_scaling"]
        params = [p for p in dict.fromkeys(self._model.parameters()) if p.requires_grad]
        in_optimizer = {id(p) for g in self._optimizer.param_groups for p in g["params"]}
        extra = [p for p in params if id(p) not in in_optimizer]
        with running(record_losses=True) as losses:
            for d in range(o.device_iterations):
                for p in params:
                    p.grad = None
                for a in range(ga):
                    outs = []
                    for g in range(batches.groups):
                        if self._per_replica:
                            self._use_replica_buffers(g)
                        losses.clear()
                        args, kwargs = batches.get(d, a, g)
                        leaves, spec = pytree.tree_flatten(self._model(*args, **kwargs))
                        loss = self._pick_loss(leaves, losses)
                        loss = loss.sum() if loss.dim() else loss  # "none" losses: gradient of ones
                        (loss * (scale * copies[g] * loss_scaling)).backward()
                        outs.append(([t.detach() if isinstance(t, torch.Tensor) else t for t in leaves], spec))
                    per_batch.extend(outs[owner[r]] for r in range(replicas))
                self._update(params, extra, loss_scaling)

    @torch.no_grad()
    def _update(self, params: List[torch.nn.Parameter], extra: List[torch.nn.Parameter],
                loss_scaling: float) -> None:
        with_grad = [p for p in params if p.grad is not None]
        if self._options.Distributed.numProcesses > 1:  # PopDist: the other instances' replicas
            _reduce_across_instances(with_grad, self._options)
        if loss_scaling != 1.0:
            for p in with_grad:
                p.grad.div_(loss_scaling)
        max_norm = self._hyper["attrs"]["max_grad_norm"]
        if math.isfinite(max_norm) and with_grad:
            torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
        # PopTorch writes a loaded optimizer state before executing; no update has run before this one
        device = self._optimizer_state_on_attach()
        self._write_optimizer_state_if_needed(sync_weights=False)
        optim.apply_update(self._optimizer, self._hyper, extra, state=device.by_param)
        if optim.is_poptorch_optimizer(self._optimizer):
            self._optimizer.host_state_is_dirty = True  # the device state moved on
        for p in params:
            p.grad = None


def _reduce_across_instances(grads_of: List[torch.nn.Parameter], options: Options) -> None:
    """Several PopDist instances form one replica group: on the IPU the gradients are all-reduced over
    the IPU-Links; here over the host's ``torch.distributed`` group (gloo), one process per instance.
    Each instance has already reduced its own replicas (1 / (GA x local replicas) under Mean), so Mean
    divides the sum by the instance count: the mean over all replicas."""
    import torch.distributed as dist
    n = options.Distributed.numProcesses
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != n:
        raise RuntimeError(f"the emulator runs {n} PopDist instances as {n} processes and reduces their "
                           f"gradients over torch.distributed: initialise a process group of {n} ranks "
                           f"(gloo) before the first call")
    if not grads_of:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in grads_of])
    dist.all_reduce(flat)
    if options.Training.accumulation_and_replication_reduction_type == enums.ReductionType.Mean:
        flat /= n
    for p, g in zip(grads_of, flat.split([p.numel() for p in grads_of])):
        p.grad.copy_(g.view_as(p.grad))


def trainingModel(model: torch.nn.Module, options: Optional[Options] = None,
                  optimizer: Optional[torch.optim.Optimizer] = None) -> PoplarExecutor:
    """Wrap ``model`` for training on the (emulated) IPU. The executor traces a shallow copy (parameter
    objects shared) and wraps ``model`` itself (:mod:`.wrapping`); ``destroy()`` unwraps it."""
    if isinstance(model, PoplarExecutor):
        model = model._user_model
    if wrapping.is_wrapped(model):
        raise RuntimeError("Model has already been wrapped in 'poptorch.trainingModel'. Call model.destroy() "
                           "on the model to unwrap before wrapping again.")
    return PoplarExecutor(model=copy.copy(model), options=options, training=True, optimizer=optimizer,
                          user_model=model)


def inferenceModel(model: torch.nn.Module, options: Optional[Options] = None) -> PoplarExecutor:
    """Wrap ``model`` for inference on the (emulated) IPU. As in PopTorch the executor's model is a shallow
    copy (parameter objects shared; a module wrapped by a trainingModel stays wrapped in the copy, which is
    how the inference model picks up the training model's weights)."""
    if isinstance(model, PoplarExecutor):
        model = model._user_model
    return PoplarExecutor(model=copy.copy(model), options=options, training=False)
