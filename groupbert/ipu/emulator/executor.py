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
outputs and torch loss-function outputs (``F.cross_entropy`` ...); several independent ones are an
error. Without any, the emulator accepts a lone tensor output or the last element of an output tuple
(PopTorch would report "Couldn't find a loss in graph!").

Weights live in the shared parameters and the optimizer state in the user's optimizer object
(``optimizer.state_dict()`` after a call is the device state), so ``copyWeightsToHost`` /
``copyWeightsToDevice`` have nothing to copy; host-side weight changes take effect at once (PopTorch
needs ``copyWeightsToDevice()``, which is still accepted).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils import _pytree as pytree

from . import enums, memory, optim
from ._runtime import RUNTIME, running
from .batching import MicroBatches, collect_outputs, replica_data_group
from .blocks import Block, PipelinedExecution, ShardedExecution
from .errors import NO_EXECUTABLE_ERR, AssertError, Error
from .options import Options
from .tracing import Placement, Trace

__all__ = ["PoplarExecutor", "trainingModel", "inferenceModel"]

logger = logging.getLogger(__name__)

_WRAPPED = "_poptorch_emulator_training_executor"
_MULTIPLE_LOSSES = ("Multiple independent losses found in graph. Graph must have one final loss. "
                    "Wrap final graph loss in poptorch.identityLoss.")


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
            raise Error("Couldn't find a loss in graph! No loss depends on a trainable parameter.")
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
    if isinstance(out, torch.Tensor):
        j = 0
    elif isinstance(out, (tuple, list)) and out and isinstance(out[-1], torch.Tensor):
        j = len(leaves) - 1
    else:
        raise Error("Couldn't find a loss in graph! Return the loss (alone or as the last element of a "
                    "tuple) or mark it with poptorch.identity_loss(loss, reduction=...).")
    if not leaves[j].requires_grad:
        raise Error("Couldn't find a loss in graph! The model's output does not depend on any trainable "
                    "parameter.")
    return "output", j


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
        self._signature = None
        self._loss_rule: Optional[Tuple[str, int]] = None
        self._identity_count = 0
        self.placement: Optional[Placement] = None
        self.memory_report: Optional[List[memory.IpuMemory]] = None
        if optimizer is not None:
            self.setOptimizer(optimizer)
        options._freeze()
        if training:
            self._user_model.__dict__[_WRAPPED] = weakref.ref(self)

    # ---- PopTorch's public API ---------------------------------------------------------------------
    def __getattr__(self, attr: str):
        if attr in ("_user_model", "_model") or attr.startswith("__"):
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
        if self._compiled:
            logger.warning("Call to compile() ignored: the executable is already compiled")
            return
        self._compile(self._split(args, kwargs))

    def copyWeightsToHost(self) -> None:
        if not self._compiled:
            raise Error(NO_EXECUTABLE_ERR)

    def copyWeightsToDevice(self) -> None:
        if not self._compiled:
            raise Error(NO_EXECUTABLE_ERR)

    def copyWeightsToHostIfNeeded(self) -> bool:
        return False

    def load_state_dict(self, state_dict: Dict[str, torch.Tensor], strict: bool = True):
        out = self._user_model.load_state_dict(state_dict, strict)
        if self._attached:
            self.copyWeightsToDevice()
        return out

    def setOptimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Upload ``optimizer``'s current hyperparameters (and state, if it has any) to the device."""
        if not self._training:
            raise Error("setOptimizer() is only available for a poptorch.trainingModel()")
        hyper = optim.snapshot_hyperparameters(optimizer)
        old = self._optimizer
        if old is not None and optimizer is not old and len(optimizer.state) == 0:
            for p, s in old.state.items():  # the device keeps its state
                optimizer.state[p] = s
        self._optimizer, self._hyper = optimizer, hyper

    def detachFromDevice(self) -> None:
        if not self._compiled:
            raise Error(NO_EXECUTABLE_ERR)
        if not self._attached:
            raise Error("Device is not attached")
        self._attached = False

    def attachToDevice(self) -> None:
        if self._options.connection_type == enums.ConnectionType.Never:
            raise AssertError("Trying to attach to an offline device (ConnectionType.Never)")
        if not self._compiled:
            raise Error(NO_EXECUTABLE_ERR)
        if self._attached:
            raise Error("Already attached to a device")
        self._attached = True

    def destroy(self) -> None:
        """Release the device and unwrap the model (it can then be wrapped again)."""
        self._compiled = self._attached = False
        ref = self._user_model.__dict__.get(_WRAPPED)
        if ref is not None and ref() is self:
            del self._user_model.__dict__[_WRAPPED]

    def cycleCount(self) -> int:
        raise Error("Cycle count logging needs IPU hardware; the emulator has no cycle counter.")

    def __call__(self, *args, **kwargs):
        if self._options.connection_type == enums.ConnectionType.Never:
            raise AssertError("Trying to run a model on an offline device (ConnectionType.Never): use "
                              "model.compile(inputs) instead of model(inputs)")
        batches = self._split(args, kwargs)
        if not self._compiled:
            self._compile(batches)
        elif batches.signature != self._signature:
            raise Error(f"Inputs differ from the ones the model was compiled with: compiled with "
                        f"{self._signature}, called with {batches.signature}. Create a new "
                        "poptorch model (or destroy() this one) to run other shapes.")
        if not self._attached:
            self.attachToDevice()
        return self._run(batches)

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
    def _split(self, args, kwargs) -> MicroBatches:
        o = self._options
        ga = o.Training.gradient_accumulation if self._training else 1
        return MicroBatches(args, kwargs, o.device_iterations, ga, o.replication_factor, o.input_group_size)

    def _compile(self, batches: MicroBatches) -> None:
        args, kwargs = batches.get(0, 0, 0)
        strategy = self._options._execution_strategy
        manager = strategy._make_stages_manager()
        trace = Trace(self._model, record_memory=self._training)
        manager.recorder = trace
        rng = torch.get_rng_state()
        buffers = [b.detach().clone() for b in self._model.buffers()]
        saved_hooks = (torch.autograd.graph.saved_tensors_hooks(trace.pack, trace.unpack)
                       if self._training else contextlib.nullcontext())
        Block._stages_manager = manager
        RUNTIME.on_checkpoint = trace.checkpoint
        try:
            with running(record_losses=self._training) as losses, torch.set_grad_enabled(self._training):
                with saved_hooks, trace:
                    out = self._model(*args, **kwargs)
                if self._training:
                    self._loss_rule = _resolve_loss_rule(out, losses)
                    self._identity_count = sum(1 for _, _, k in losses if k == "identity")
        finally:
            Block._stages_manager = None
            RUNTIME.on_checkpoint = None
            torch.set_rng_state(rng)
            with torch.no_grad():
                for b, saved in zip(self._model.buffers(), buffers):
                    b.copy_(saved)
        del out
        placement = trace.placement()
        self._check_placement(placement)
        self.placement = placement
        self.memory_report = memory.estimate(self._model, self._optimizer, self._options, placement,
                                             self._training, _is_pipelined(strategy) and self._training)
        if self._options._emulator.memory_check:
            memory.check(self.memory_report, placement.num_forward_stages)
        self._signature = batches.signature
        self._compiled = True
        self._attached = self._options.connection_type == enums.ConnectionType.Always

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
        if self._training:
            self._run_training(batches, owner, per_batch)
        else:
            with running(), torch.no_grad():
                for d in range(di):
                    outs = [self._flat(self._model(*a, **k)) for a, k in
                            (batches.get(d, 0, g) for g in range(batches.groups))]
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
        optim.apply_update(self._optimizer, self._hyper, extra)
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


def _is_wrapped(model: torch.nn.Module) -> bool:
    ref = model.__dict__.get(_WRAPPED)
    executor = ref() if ref is not None else None
    return executor is not None


def trainingModel(model: torch.nn.Module, options: Optional[Options] = None,
                  optimizer: Optional[torch.optim.Optimizer] = None) -> PoplarExecutor:
    """Wrap ``model`` for training on the (emulated) IPU. Parameters are shared with ``model``."""
    if isinstance(model, PoplarExecutor):
        model = model._user_model
    if _is_wrapped(model):
        raise RuntimeError("Model has already been wrapped in 'poptorch.trainingModel'. Call model.destroy() "
                           "on the model to unwrap before wrapping again.")
    return PoplarExecutor(model=copy.copy(model), options=options, training=True, optimizer=optimizer,
                          user_model=model)


def inferenceModel(model: torch.nn.Module, options: Optional[Options] = None) -> PoplarExecutor:
    """Wrap ``model`` for inference on the (emulated) IPU. Parameters are shared with ``model``."""
    if isinstance(model, PoplarExecutor):
        model = model._user_model
    copied = copy.copy(model)
    copied.__dict__.pop(_WRAPPED, None)
    return PoplarExecutor(model=copied, options=options, training=False, user_model=model)
