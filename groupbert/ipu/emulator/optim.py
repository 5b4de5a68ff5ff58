r"""``poptorch.optim``: PopTorch's optimizer classes and PopART's on-device update equations.

The classes follow graphcore/poptorch:python/optim.py (SDK 3.x): ``SGD``, ``Adam``, ``AdamW`` and
``RMSprop`` subclass the torch optimizers (the torch arguments, then PopTorch's extra keyword arguments
``loss_scaling``, ``bias_correction`` (AdamW), ``max_grad_norm`` (SGD/Adam/AdamW), accumulation types,
``velocity_scaling``, ``use_combined_accum``); ``LAMB`` subclasses ``torch.optim.Optimizer`` with
per-group ``lr, weight_decay, betas, eps, max_weight_norm`` (``None`` → 65500, the fp16 maximum) and
global ``bias_correction`` and ``loss_scaling``. On the IPU their Python ``step()`` never runs: PopART's
built-in update does. :func:`apply_update` is that update (graphcore/popart:willow/include/popart/
adam.hpp, sgd.hpp), applied by the executor once per device iteration to the *accumulated* gradient
:math:`g` (already reduced over micro-batches and replicas, loss scaling removed, clipped):

.. math::
    \begin{aligned}
    &\textbf{Adam/AdamW/LAMB:}\ g \leftarrow g + \lambda w \ \text{(Adam: L2 mode)},\quad
      m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2 \\
    &\hat m = m / (1-\beta_1^t),\ \hat v = v / (1-\beta_2^t)\ \text{(skipped if bias\_correction=False)},
      \quad u = \hat m / (\sqrt{\hat v} + \epsilon) + \lambda w\ \text{(AdamW/LAMB: decay mode)} \\
    &\textbf{Adam/AdamW:}\ w \leftarrow w - \eta u \qquad
     \textbf{LAMB:}\ \phi = \min(\lVert w\rVert, \phi_{\max}),\
      w \leftarrow w - \eta\, r\, u,\ r = \phi / \lVert u \rVert\ (r = 1\ \text{if}\ \phi = 0\ \text{or}\
      \lVert u\rVert = 0) \\
    &\textbf{SGD:}\ d = g + \lambda w,\ b \leftarrow \mu b + (1-\tau) d\ (b_1 = d),\
      w \leftarrow w - \eta\,(d + \mu b\ \text{if nesterov else}\ b)
    \end{aligned}

So ``max_weight_norm=0`` turns LAMB into AdamW for that group (the BERT app's bias group), and AdamW's
decay inside :math:`u` equals torch's ``w(1 - \eta\lambda)`` then Adam step exactly. Moments are kept
in float32 for low-precision weights (PopTorch's default ``*_accum_type=torch.float32``).

**Bias correction** (B6; graphcore/poptorch:popart_compiler/source/CompilerImpl.cpp,
``CompilerImpl::getPopartOptimizer``; python/_optimizer_attributes.py, ``_toPoptorchOptimizer``):
``bias_correction=False`` makes ``AdamW`` the type ``ADAMW_NO_BIAS`` and ``LAMB`` ``LAMB_NO_BIAS``, but
only LAMB has a PopART mode for it (``AdamMode::LambNoBias``); ``ADAMW_NO_BIAS`` falls through to
``AdamMode::Adam``, so **AdamW always runs bias-corrected on the IPU** and so does it here. LAMB's flag is
honoured (no correction of either moment, and no ``Step___`` tensor).

**Optimizer state** (B5; python/optim.py class ``Optimizer``; python/_poplar_executor.py
``setOptimizer``, ``_get_optim_state_dict``, ``_read_optim_state_dict_if_needed``,
``_write_optim_state_dict_if_needed``, ``_on_device_attach``; python/poptorch.cpp ``readOptimizerState``,
``writeOptimizerState``): the device state lives in the executable (:class:`DeviceOptimizerState`),
never in ``optimizer.state`` (torch's Python ``step()`` does not run). A ``poptorch.optim`` optimizer's
``state_dict()`` is ``{"ipu_state", "ipu_param", "state", "param_groups"}``: ``ipu_state`` holds PopART's
optimizer variables keyed ``<prefix><weight name>`` (Adam/AdamW/LAMB: ``Accl1___`` first moment,
``Accl2___`` second moment, ``Step___`` step count, float32 scalar, absent for LAMB without bias
correction, graphcore/popart:willow/src/patterns/adamdecompose.cpp; SGD with momentum ``Accl1___``
(``Accl___`` combined); RMSprop ``Accl1___``/``Accl2___``/``Accl3___``, adaptivedecompose.cpp), and
``ipu_param`` the non-constant hyper-parameter tensors (``learningRate___specific___<w>``,
``weightDecay___specific___<w>``, ``adamBeta1/2___``, ``adamEps___``, ``maxWeightNorm___``,
``lossScaling___specific___``, ``adamGradientScaling___``, ``lossScaling_FLOAT``; SGD:
``scaledLearningRate0___`` ..., graphcore/popart:willow/include/popart/compoundscalarhelper.hpp). Both are
``None`` until the executable exists; the executor fills them lazily when the device state changed.
``load_state_dict`` accepts only that layout ("Only IPU optimizer states can be loaded onto the IPU.")
and the state is written to the device on attach, before the next run, or by ``setOptimizer``.
:func:`optimizer_to_dict` is PopTorch's ``convertOptimizerToDict`` (values and constant-ness) and
:func:`check_replacement` PopART's ``validReplacement`` checks that ``setOptimizer`` runs after compilation.

Deviations: SGD follows torch's first-step velocity ``b_1 = d`` (PopTorch documents SGD as
"mathematically identical to PyTorch") and its velocity appears in ``ipu_state`` after the first update;
RMSprop uses torch's equations (``use_tf_variant`` is ignored). ``writeOptimizerState`` copies raw bytes
in PopTorch; here a tensor of another shape or dtype is an error.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import torch

from .errors import AssertError, Error

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "LAMB", "VariableAttributes", "optimizer_kind",
           "snapshot_hyperparameters", "apply_update", "state_bytes", "accumulator_bytes",
           "is_poptorch_optimizer", "optimizer_to_dict", "check_replacement", "DeviceOptimizerState",
           "weight_names"]

logger = logging.getLogger(__name__)

_ACCUM_TYPES = (torch.float16, torch.float32)


class VariableAttributes:
    """Which attributes are compile-time constants (``opt.variable_attrs.markAsConstant("lr")``)."""

    def __init__(self, variable_attributes: List[str], allowed_attributes: List[str]) -> None:
        self._variable_attributes = list(variable_attributes)
        self._allowed_attributes = list(allowed_attributes)

    def isConstant(self, attr: str) -> bool:
        return attr not in self._variable_attributes

    def markAsConstant(self, attr: str) -> None:
        if attr not in self._allowed_attributes:
            raise AssertError(f"Unknown attribute {attr}, allowed values: {self._allowed_attributes}")
        self._variable_attributes = [a for a in self._variable_attributes if a != attr]

    def markAsVariable(self, attr: str) -> None:
        if attr not in self._allowed_attributes:
            raise AssertError(f"Unknown attribute {attr}, allowed values: {self._allowed_attributes}")
        self._variable_attributes.append(attr)


class _PoptorchOptimizer:
    """Mixin: PopTorch's ``poptorch.optim.Optimizer`` (python/optim.py): the IPU state protocol and global
    (not per-group) attributes that survive deepcopy/pickle.

    ``state_dict()`` returns ``{"ipu_state", "ipu_param"}`` (``None`` until an executable has filled them)
    merged with torch's ``state``/``param_groups``; once the optimizer is given to a training model the
    executor replaces ``state_dict`` by a method that first reads the device state when the host copy is
    stale. ``load_state_dict`` runs torch's loader (param groups and learning rates, for LR schedulers)
    and then requires the IPU layout; the loaded state is marked for upload (``ipu_state_is_dirty``)."""
    _child_attrs: Tuple[str, ...] = ()

    def _init_poptorch(self, passed: Dict[str, Any], allowed_extra: List[str]) -> None:
        variables = [k for k, v in passed.items() if v is not None]
        self.variable_attrs = VariableAttributes(variables, list(self.defaults) + allowed_extra)
        self._state_dict: Dict[str, Any] = {"ipu_state": None, "ipu_param": None}
        self.ipu_state_is_dirty = False   # the host holds state the device must receive
        self.host_state_is_dirty = False  # the device ran: the host copy is out of date

    # python/optim.py Optimizer.state_dict / load_state_dict / get_state_dict / set_state_dict / has_state
    def state_dict(self) -> Dict[str, Any]:
        return self.get_state_dict()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        torch.optim.Optimizer.load_state_dict(self, state_dict)  # so that LR schedulers work
        self.set_state_dict(state_dict)

    def get_state_dict(self) -> Dict[str, Any]:
        return {**self._state_dict, **torch.optim.Optimizer.state_dict(self)}

    def set_state_dict(self, state: Dict[str, Any]) -> None:
        if not state:
            raise RuntimeError("Cannot load optimizer state dictionary because it is empty.")
        if not ("ipu_state" in state and "ipu_param" in state):
            raise RuntimeError("Only IPU optimizer states can be loaded onto the IPU.")
        self._state_dict = state
        self.ipu_state_is_dirty = True
        self.host_state_is_dirty = False

    def has_state(self) -> bool:
        return self._state_dict.get("ipu_state") is not None and self._state_dict.get("ipu_param") is not None

    def __getstate__(self) -> Dict[str, Any]:
        state = torch.optim.Optimizer.__getstate__(self)
        for name in self._child_attrs + ("variable_attrs",):
            state[name] = getattr(self, name)
        # as PopTorch: the IPU state travels, marked dirty only if there is one
        state["_state_dict"] = self._state_dict
        state["ipu_state_is_dirty"] = self.has_state()
        state["host_state_is_dirty"] = False
        return state


def is_poptorch_optimizer(optimizer: Any) -> bool:
    """``isinstance(optimizer, poptorch.optim.Optimizer)``: the optimizers whose state PopTorch reads back."""
    return isinstance(optimizer, _PoptorchOptimizer)


def _accum(dtype: Optional[torch.dtype], name: str) -> torch.dtype:
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in _ACCUM_TYPES:
        raise AssertError("Accumulation types must be either torch.float32 or torch.float16")
    return dtype


def _parent_args(**kwargs) -> Dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v is not None}


class SGD(_PoptorchOptimizer, torch.optim.SGD):
    """SGD with optional momentum (torch's equations) plus PopTorch's ``loss_scaling``,
    ``velocity_scaling``, ``use_combined_accum``, accumulation types and ``max_grad_norm``."""
    _child_attrs = ("loss_scaling", "use_combined_accum", "accum_type", "velocity_accum_type", "max_grad_norm")

    def __init__(self, params: Iterable, lr: float, momentum: Optional[float] = None,
                 dampening: Optional[float] = None, weight_decay: Optional[float] = None,
                 nesterov: Optional[bool] = None, maximize: Optional[bool] = None,
                 foreach: Optional[bool] = None, differentiable: Optional[bool] = None,
                 loss_scaling: Optional[float] = None, velocity_scaling: Optional[float] = None,
                 use_combined_accum: Optional[bool] = None, accum_type: Optional[torch.dtype] = None,
                 velocity_accum_type: Optional[torch.dtype] = None,
                 max_grad_norm: Optional[float] = None) -> None:
        passed = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                      nesterov=nesterov, loss_scaling=loss_scaling, velocity_scaling=velocity_scaling)
        torch.optim.SGD.__init__(self, params, **_parent_args(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize, foreach=foreach, differentiable=differentiable))
        self.loss_scaling = 1.0 if loss_scaling is None else float(loss_scaling)
        self.use_combined_accum = bool(use_combined_accum)
        if use_combined_accum:
            self.defaults["velocity_scaling"] = 1.0 if velocity_scaling is None else velocity_scaling
            for group in self.param_groups:
                group.setdefault("velocity_scaling", self.defaults["velocity_scaling"])
        self.accum_type = _accum(accum_type, "accum_type")
        self.velocity_accum_type = _accum(velocity_accum_type, "velocity_accum_type")
        self.max_grad_norm = float("inf") if max_grad_norm is None else float(max_grad_norm)
        self._init_poptorch(passed, ["loss_scaling"])


class Adam(_PoptorchOptimizer, torch.optim.Adam):
    """Adam (L2 weight decay, as torch) plus PopTorch's extras. ``amsgrad`` must be False."""
    _child_attrs = ("loss_scaling", "accum_type", "first_order_momentum_accum_type",
                    "second_order_momentum_accum_type", "max_grad_norm")

    def __init__(self, params: Iterable, lr: Optional[float] = None,
                 betas: Optional[Tuple[float, float]] = None, eps: Optional[float] = None,
                 weight_decay: Optional[float] = None, amsgrad: Optional[bool] = None,
                 foreach: Optional[bool] = None, maximize: Optional[bool] = None,
                 capturable: Optional[bool] = None, differentiable: Optional[bool] = None,
                 fused: Optional[bool] = None, loss_scaling: Optional[float] = None,
                 accum_type: Optional[torch.dtype] = None,
                 first_order_momentum_accum_type: Optional[torch.dtype] = None,
                 second_order_momentum_accum_type: Optional[torch.dtype] = None,
                 max_grad_norm: Optional[float] = None) -> None:
        passed = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, loss_scaling=loss_scaling)
        torch.optim.Adam.__init__(self, params, **_parent_args(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach,
            maximize=maximize, capturable=capturable, differentiable=differentiable, fused=fused))
        _init_adam_attrs(self, loss_scaling, accum_type, first_order_momentum_accum_type,
                         second_order_momentum_accum_type, max_grad_norm)
        self._init_poptorch(passed, ["loss_scaling"])


class AdamW(_PoptorchOptimizer, torch.optim.AdamW):
    """AdamW (decoupled decay) plus ``bias_correction`` (False → PopART ``AdamNoBias``) and extras."""
    _child_attrs = Adam._child_attrs + ("bias_correction",)

    def __init__(self, params: Iterable, lr: Optional[float] = None,
                 betas: Optional[Tuple[float, float]] = None, eps: Optional[float] = None,
                 weight_decay: Optional[float] = None, amsgrad: Optional[bool] = None,
                 maximize: Optional[bool] = None, foreach: Optional[bool] = None,
                 capturable: Optional[bool] = None, differentiable: Optional[bool] = None,
                 fused: Optional[bool] = None, loss_scaling: Optional[float] = None,
                 bias_correction: Optional[bool] = None, accum_type: Optional[torch.dtype] = None,
                 first_order_momentum_accum_type: Optional[torch.dtype] = None,
                 second_order_momentum_accum_type: Optional[torch.dtype] = None,
                 max_grad_norm: Optional[float] = None) -> None:
        passed = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, loss_scaling=loss_scaling)
        torch.optim.AdamW.__init__(self, params, **_parent_args(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
            foreach=foreach, capturable=capturable, differentiable=differentiable, fused=fused))
        _init_adam_attrs(self, loss_scaling, accum_type, first_order_momentum_accum_type,
                         second_order_momentum_accum_type, max_grad_norm)
        self.bias_correction = True if bias_correction is None else bool(bias_correction)
        self._init_poptorch(passed, ["loss_scaling"])


def _init_adam_attrs(opt, loss_scaling, accum_type, first, second, max_grad_norm) -> None:
    opt.loss_scaling = 1.0 if loss_scaling is None else float(loss_scaling)
    opt.accum_type = _accum(accum_type, "accum_type")
    opt.first_order_momentum_accum_type = _accum(first, "first_order_momentum_accum_type")
    opt.second_order_momentum_accum_type = _accum(second, "second_order_momentum_accum_type")
    opt.max_grad_norm = float("inf") if max_grad_norm is None else float(max_grad_norm)


class RMSprop(_PoptorchOptimizer, torch.optim.RMSprop):
    """RMSprop (torch's equations) plus ``loss_scaling`` and accumulation types."""
    _child_attrs = ("loss_scaling", "accum_type", "first_order_momentum_accum_type",
                    "second_order_momentum_accum_type", "use_tf_variant")

    def __init__(self, params: Iterable, lr: Optional[float] = None, alpha: Optional[float] = None,
                 eps: Optional[float] = None, weight_decay: Optional[float] = None,
                 momentum: Optional[float] = None, centered: Optional[bool] = None,
                 foreach: Optional[bool] = None, maximize: Optional[bool] = None,
                 differentiable: Optional[bool] = None, loss_scaling: Optional[float] = None,
                 accum_type: Optional[torch.dtype] = None,
                 first_order_momentum_accum_type: Optional[torch.dtype] = None,
                 second_order_momentum_accum_type: Optional[torch.dtype] = None,
                 use_tf_variant: Optional[bool] = None) -> None:
        passed = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                      loss_scaling=loss_scaling)
        torch.optim.RMSprop.__init__(self, params, **_parent_args(
            lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum, centered=centered,
            foreach=foreach, maximize=maximize, differentiable=differentiable))
        _init_adam_attrs(self, loss_scaling, accum_type, first_order_momentum_accum_type,
                         second_order_momentum_accum_type, None)
        self.use_tf_variant = bool(use_tf_variant)
        self._init_poptorch(passed, ["loss_scaling"])


class LAMB(_PoptorchOptimizer, torch.optim.Optimizer):
    """LAMB (https://arxiv.org/abs/1904.00962) as PopART implements it: phi(z) = min(z, max_weight_norm).

    ``step()`` runs the same PopART equations on the host (as PopTorch's own ``LAMB.step``).
    """
    _child_attrs = ("loss_scaling", "bias_correction", "max_weight_norm", "accum_type",
                    "first_order_momentum_accum_type", "second_order_momentum_accum_type")

    def __init__(self, params: Iterable, lr: Optional[float] = None,
                 betas: Optional[Tuple[float, float]] = None, eps: Optional[float] = None,
                 weight_decay: Optional[float] = None, bias_correction: Optional[bool] = None,
                 loss_scaling: Optional[float] = None, max_weight_norm: Optional[float] = None,
                 accum_type: Optional[torch.dtype] = None,
                 first_order_momentum_accum_type: Optional[torch.dtype] = None,
                 second_order_momentum_accum_type: Optional[torch.dtype] = None) -> None:
        passed = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                      max_weight_norm=max_weight_norm, loss_scaling=loss_scaling)
        max_weight_norm = 65500.0 if max_weight_norm is None else float(max_weight_norm)  # fp16 max
        defaults = dict(lr=1e-3 if lr is None else lr, betas=(0.9, 0.999) if betas is None else betas,
                        eps=1e-8 if eps is None else eps, weight_decay=1e-2 if weight_decay is None else weight_decay,
                        max_weight_norm=max_weight_norm)
        torch.optim.Optimizer.__init__(self, params, defaults)
        self.bias_correction = True if bias_correction is None else bool(bias_correction)
        self.loss_scaling = 1.0 if loss_scaling is None else float(loss_scaling)
        self.max_weight_norm = max_weight_norm
        self.accum_type = _accum(accum_type, "accum_type")
        self.first_order_momentum_accum_type = _accum(first_order_momentum_accum_type, "first")
        self.second_order_momentum_accum_type = _accum(second_order_momentum_accum_type, "second")
        self._init_poptorch(passed, ["loss_scaling"])

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        apply_update(self, snapshot_hyperparameters(self))
        return loss


# ---- the on-device update ---------------------------------------------------------------------------------
def optimizer_kind(optimizer: torch.optim.Optimizer) -> str:
    """Which PopART optimizer ``optimizer`` becomes: sgd, adam, adamw, lamb or rmsprop."""
    if isinstance(optimizer, LAMB):
        return "lamb"
    if isinstance(optimizer, torch.optim.AdamW):
        return "adamw"
    if isinstance(optimizer, torch.optim.Adam):
        return "adamw" if optimizer.defaults.get("decoupled_weight_decay") else "adam"
    if isinstance(optimizer, torch.optim.SGD):
        return "sgd"
    if isinstance(optimizer, torch.optim.RMSprop):
        return "rmsprop"
    raise Error(f"Unsupported optimizer type {type(optimizer).__name__}: PopTorch runs PopART's built-in "
                "updates of torch.optim.SGD/Adam/AdamW/RMSprop and poptorch.optim.SGD/Adam/AdamW/RMSprop/"
                "LAMB only.")


def snapshot_hyperparameters(optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The hyperparameters the device holds (taken at ``trainingModel``/``setOptimizer`` time)."""
    kind = optimizer_kind(optimizer)
    known = (SGD, Adam, AdamW, RMSprop, LAMB, torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW,
             torch.optim.RMSprop)
    if type(optimizer) not in known:
        logger.warning("Optimizer %s is a subclass: PopTorch ignores its step() and runs PopART's %s "
                       "update", type(optimizer).__name__, kind)

    def plain(group):
        return {k: (float(v) if isinstance(v, torch.Tensor) and v.numel() == 1 else copy.deepcopy(v))
                for k, v in group.items() if k != "params"}

    groups = [plain(g) for g in optimizer.param_groups]
    for g in groups + [plain(optimizer.defaults)]:
        if g.get("amsgrad"):
            raise Error("amsgrad is not supported by PopTorch optimizers (must be False)")
        if g.get("maximize"):
            raise Error("maximize=True is not supported by PopTorch optimizers")
    # Only LAMB honours bias_correction=False on the IPU (AdamMode::LambNoBias); AdamW's ADAMW_NO_BIAS
    # type reaches PopART as AdamMode::Adam (CompilerImpl::getPopartOptimizer): always bias-corrected.
    bias_correction = bool(getattr(optimizer, "bias_correction", True)) if kind == "lamb" else True
    attrs = {"loss_scaling": float(getattr(optimizer, "loss_scaling", 1.0)),
             "max_grad_norm": float(getattr(optimizer, "max_grad_norm", float("inf"))),
             "bias_correction": bias_correction,
             "max_weight_norm": float(getattr(optimizer, "max_weight_norm", 65500.0))}
    return {"kind": kind, "groups": groups, "defaults": plain(optimizer.defaults), "attrs": attrs,
            "num_params": [len(g["params"]) for g in optimizer.param_groups]}


def _moment_dtype(optimizer, p: torch.Tensor, attr: str) -> torch.dtype:
    """Float32 moments for low-precision weights (PopTorch's default accum types), else the weight's."""
    dtype = getattr(optimizer, attr, None)
    if p.dtype in (torch.float16, torch.bfloat16):
        return dtype or torch.float32
    return p.dtype if dtype in (None, torch.float32) else dtype


@torch.no_grad()
def apply_update(optimizer: torch.optim.Optimizer, snap: Dict[str, Any],
                 extra_params: Iterable[torch.Tensor] = (),
                 state: Optional[Dict[int, Dict[str, Any]]] = None) -> None:
    """One PopART optimizer step on every parameter with a gradient.

    Uses the hyperparameters of ``snap`` (not the live ``param_groups``). The per-parameter state (torch's
    names: ``step``, ``exp_avg`` ...) is ``state[id(param)]`` when ``state`` is given (the executable's,
    :class:`DeviceOptimizerState`), else ``optimizer.state[param]`` (a host-side ``step()``).
    ``extra_params`` (trainable, not in any group) use ``snap["defaults"]``.
    """
    if [len(g["params"]) for g in optimizer.param_groups] != snap["num_params"]:
        raise Error("The optimizer's parameter groups changed since setOptimizer(): call "
                    "setOptimizer() again")
    kind, attrs = snap["kind"], snap["attrs"]
    work = [(g["params"], h) for g, h in zip(optimizer.param_groups, snap["groups"])]
    extra = [p for p in extra_params]
    if extra:
        work.append((extra, snap["defaults"]))
    for params, h in work:
        for p in params:
            if p.grad is None:
                continue
            pstate = optimizer.state[p] if state is None else state.setdefault(id(p), {})
            if kind == "sgd":
                _sgd(p, p.grad, pstate, h)
            elif kind == "rmsprop":
                _rmsprop(p, p.grad, pstate, h)
            else:
                mwn = h.get("max_weight_norm", attrs["max_weight_norm"]) if kind == "lamb" else None
                _adam_family(optimizer, p, p.grad, pstate, h, decay_mode=kind != "adam",
                             bias_correction=attrs["bias_correction"], max_weight_norm=mwn)


def _initial_state(kind: str, optimizer, p: torch.Tensor, h: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The zero state PopART allocates for weight ``p`` (torch's names), or {} where it starts lazily."""
    if kind in ("adam", "adamw", "lamb"):
        return {"step": torch.tensor(0.0),
                "exp_avg": torch.zeros(p.shape, dtype=_moment_dtype(optimizer, p, "first_order_momentum_accum_type")),
                "exp_avg_sq": torch.zeros(p.shape,
                                          dtype=_moment_dtype(optimizer, p, "second_order_momentum_accum_type"))}
    if kind == "rmsprop":
        out = {"step": torch.tensor(0.0), "square_avg": torch.zeros(p.shape, dtype=p.dtype)}
        if float(h.get("momentum", 0.0)) > 0:
            out["momentum_buffer"] = torch.zeros(p.shape, dtype=p.dtype)
        if h.get("centered", False):
            out["grad_avg"] = torch.zeros(p.shape, dtype=p.dtype)
        return out
    return {}  # SGD: torch's first velocity is the first gradient (module docstring)


def _adam_family(optimizer, p, grad, state, h, *, decay_mode: bool, bias_correction: bool,
                 max_weight_norm: Optional[float]) -> None:
    lr, (beta1, beta2), eps, wd = float(h["lr"]), h["betas"], float(h["eps"]), float(h["weight_decay"])
    m_dtype = _moment_dtype(optimizer, p, "first_order_momentum_accum_type")
    v_dtype = _moment_dtype(optimizer, p, "second_order_momentum_accum_type")
    if len(state) == 0:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p, dtype=m_dtype, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=v_dtype, memory_format=torch.preserve_format)
    state["step"] += 1  # PopART's Step___ counts every update (only read when bias-correcting)
    t = float(state["step"])
    compute = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
    w = p.to(compute)
    g = grad.to(compute)
    if not decay_mode and wd != 0.0:
        g = g + wd * w  # Adam: L2 regularisation
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(beta1).add_(g.to(m.dtype), alpha=1 - beta1)  # m_t
    v.mul_(beta2).addcmul_(g.to(v.dtype), g.to(v.dtype), value=1 - beta2)  # v_t
    mc, vc = m.to(compute), v.to(compute)
    if bias_correction:
        mc = mc / (1 - beta1 ** t)
        vc = vc / (1 - beta2 ** t)
    u = mc / (vc.sqrt() + eps)
    if decay_mode and wd != 0.0:
        u = u + wd * w  # AdamW/LAMB: decay inside the update
    scale = lr
    if max_weight_norm is not None:  # LAMB trust ratio
        phi = min(float(w.norm()), max_weight_norm)
        r2 = float(u.norm())
        scale = lr * (1.0 if phi == 0.0 or r2 == 0.0 else phi / r2)
    p.copy_((w - scale * u).to(p.dtype))


def _sgd(p, grad, state, h) -> None:
    lr, wd = float(h["lr"]), float(h.get("weight_decay", 0.0))
    momentum, dampening = float(h.get("momentum", 0.0)), float(h.get("dampening", 0.0))
    d = grad if wd == 0.0 else grad + wd * p
    if momentum != 0.0:
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = d.clone()
        else:
            buf.mul_(momentum).add_(d, alpha=1 - dampening)
        d = d + momentum * buf if h.get("nesterov", False) else buf
    p.add_(d, alpha=-lr)


def _rmsprop(p, grad, state, h) -> None:
    lr, alpha, eps = float(h["lr"]), float(h["alpha"]), float(h["eps"])
    wd, momentum = float(h.get("weight_decay", 0.0)), float(h.get("momentum", 0.0))
    if len(state) == 0:
        state["step"] = torch.tensor(0.0)
        state["square_avg"] = torch.zeros_like(p)
        if momentum > 0:
            state["momentum_buffer"] = torch.zeros_like(p)
        if h.get("centered", False):
            state["grad_avg"] = torch.zeros_like(p)
    state["step"] += 1
    g = grad if wd == 0.0 else grad + wd * p
    sq = state["square_avg"].mul_(alpha).addcmul_(g, g, value=1 - alpha)
    if h.get("centered", False):
        ga = state["grad_avg"].lerp_(g, 1 - alpha)
        avg = sq.addcmul(ga, ga, value=-1).sqrt_().add_(eps)
    else:
        avg = sq.sqrt().add_(eps)
    if momentum > 0:
        buf = state["momentum_buffer"].mul_(momentum).addcdiv_(g, avg)
        p.add_(buf, alpha=-lr)
    else:
        p.addcdiv_(g, avg, value=-lr)


# ---- the executable's view: constant/variable hyper-parameters, replacement checks, device state -------------
def weight_names(model: torch.nn.Module) -> Dict[int, str]:
    """``id(parameter) -> name`` as ``model.named_parameters()`` (first name of a tied parameter), the ids
    PopART gives the weights. Reads the modules' tables only: a wrapped parameter is never touched (that
    would copy weights back from the device)."""
    names: Dict[int, str] = {}
    for module_name, module in model.named_modules():
        for name, p in module._parameters.items():
            if p is not None and id(p) not in names:
                names[id(p)] = f"{module_name}.{name}" if module_name else name
    return names


# python/_optimizer_attributes.py: _toPoptorchOptimizer, and each class's _group_vars
_GROUP_VARS = {"sgd": ("lr", "momentum", "dampening", "weight_decay", "nesterov", "velocity_scaling"),
               "adam": ("lr", "betas", "eps", "weight_decay"), "adamw": ("lr", "betas", "eps", "weight_decay"),
               "rmsprop": ("lr", "momentum", "weight_decay", "alpha", "eps"),
               "lamb": ("lr", "weight_decay", "betas", "eps", "max_weight_norm")}
_GROUP_DEFAULTS = {"velocity_scaling": 1.0}  # _GroupGetter(1.0); the others must be in the group


def _optimizer_type(optimizer, kind: str) -> str:
    """``_toPoptorchOptimizer``: SGD1/SGD2, ADAM, ADAMW/ADAMW_NO_BIAS, RMSPROP(_CENTERED), LAMB(_NO_BIAS)."""
    if kind == "sgd":
        return "SGD1" if getattr(optimizer, "use_combined_accum", False) else "SGD2"
    if kind == "adamw":
        no_bias = isinstance(optimizer, AdamW) and not getattr(optimizer, "bias_correction", True)
        return "ADAMW_NO_BIAS" if no_bias else "ADAMW"
    if kind == "lamb":
        return "LAMB" if getattr(optimizer, "bias_correction", True) else "LAMB_NO_BIAS"
    if kind == "rmsprop":
        centered = optimizer.param_groups[0].get("centered", False)
        for i, group in enumerate(optimizer.param_groups):
            if group.get("centered", False) != centered:
                raise AssertError("All parameter groups must have the same value for the 'centered' attribute "
                                  f"(Group 0: {centered} / Group {i}: {group.get('centered', False)})")
        return "RMSPROP_CENTERED" if centered else "RMSPROP"
    return "ADAM"


def _is_const(optimizer, name: str, value: Any, kind: str, auto_loss_scaling: bool) -> bool:
    """``_ValueConstPairFormatter``: a ``poptorch.optim`` optimizer's ``variable_attrs`` decide (arguments
    passed explicitly are variable); for a ``torch.optim`` one a value equal to its default is constant."""
    variable_attrs = getattr(optimizer, "variable_attrs", None)
    if variable_attrs is not None:
        return variable_attrs.isConstant(name)
    if name in ("alpha", "nesterov", "betas"):
        return True
    if name == "lr":
        return False
    if name == "loss_scaling":
        return value == 1.0 and not auto_loss_scaling
    reference = {"weight_decay": 1e-2 if kind == "adamw" else 0.0, "momentum": 0.0, "velocity_scaling": 1.0,
                 "dampening": 0.0, "eps": 1e-08, "max_weight_norm": 65500.0}[name]
    return value == reference


def _accum_type(optimizer, name: str) -> torch.dtype:
    dtype = getattr(optimizer, name, torch.float32)
    if dtype not in _ACCUM_TYPES:
        raise ValueError(f"{name} must be set to either torch.float16 or torch.float32 not {dtype}")
    return dtype


def optimizer_to_dict(optimizer: torch.optim.Optimizer, options, is_compiled: bool) -> Dict[str, Any]:
    """What PopTorch sends PopART for ``optimizer`` (python/_optimizer_attributes.py,
    ``convertOptimizerToDict``): the type, the global attributes (accumulation types, ``max_grad_norm``)
    and every group variable as ``(value, is_const)``, with ``loss_scaling`` among the defaults.

    An ``accum_type`` of float16 needs ``MeanReductionStrategy.Running``: before compilation PopTorch
    switches the (frozen) options to it; afterwards it is a ValueError unless they already say so."""
    kind = optimizer_kind(optimizer)
    opt_type = _optimizer_type(optimizer, kind)
    training = options.Training
    if getattr(optimizer, "accum_type", torch.float32) == torch.float16 and \
            not getattr(optimizer, "use_combined_accum", False):
        from .enums import MeanReductionStrategy
        if not is_compiled:
            options._unfreeze()
            training.setMeanAccumulationAndReplicationReductionStrategy(MeanReductionStrategy.Running)
            options._freeze()
        elif training.meanAccumulationAndReplicationReductionStrategy != MeanReductionStrategy.Running:
            raise ValueError("Invalid optimizer: the new optimizer would require changing options.Training."
                             "meanAccumulationAndReplicationReductionStrategy to poptorch.MeanReductionStrategy."
                             "Running but the executable is already compiled.")
    auto_ls = bool(options._Popart.options.get("automaticLossScalingSettings.enabled", False))
    if auto_ls and getattr(optimizer, "variable_attrs", None) is not None:
        optimizer.variable_attrs.markAsVariable("loss_scaling")  # automatic loss scaling needs it variable

    def read(group: Dict[str, Any]) -> Dict[str, Tuple[Any, bool]]:
        out = {}
        for name in _GROUP_VARS[kind]:
            value = group.get(name, _GROUP_DEFAULTS.get(name))
            if value is None:
                raise AssertError(f"Mandatory attribute {name} not found in optimizer group")
            value = float(value) if isinstance(value, torch.Tensor) else value
            const = _is_const(optimizer, name, value, kind, auto_ls)
            if name == "betas":
                out["beta1"], out["beta2"] = (float(value[0]), const), (float(value[1]), const)
            else:
                out[name] = (value, const)
        return out

    max_grad_norm = float(getattr(optimizer, "max_grad_norm", float("inf")))
    if math.isnan(max_grad_norm):
        raise Error("Maximum norm of gradients cannot be NaN")
    loss_scaling = float(getattr(optimizer, "loss_scaling", 1.0))
    defaults = read(optimizer.defaults)
    defaults["loss_scaling"] = (loss_scaling, _is_const(optimizer, "loss_scaling", loss_scaling, kind, auto_ls))
    attrs = {name: _accum_type(optimizer, name) for name in
             ("accum_type", "first_order_momentum_accum_type", "second_order_momentum_accum_type",
              "velocity_accum_type") if hasattr(optimizer, name)}
    return {"optimizer_type": opt_type, "kind": kind, "max_grad_norm": max_grad_norm, **attrs,
            "defaults": defaults, "groups": [read(g) for g in optimizer.param_groups]}


def _popart_optimizer(desc: Dict[str, Any]) -> Tuple[str, str, str]:
    """(PopART class, mode, weight decay mode) that ``CompilerImpl::getPopartOptimizer`` builds."""
    t = desc["optimizer_type"]
    if t in ("SGD1", "SGD2"):
        return "SGD", "Combined" if t == "SGD1" else "Separate", "L2Regularization"
    if t in ("RMSPROP", "RMSPROP_CENTERED"):
        return "Adaptive", "CenteredRMSProp" if t == "RMSPROP_CENTERED" else "RMSProp", "L2Regularization"
    mode = {"LAMB": "Lamb", "LAMB_NO_BIAS": "LambNoBias"}.get(t, "Adam")  # ADAMW_NO_BIAS: no branch
    return "Adam", mode, "L2Regularization" if t == "ADAM" else "Decay"


# PopART's optimizer values checked by validReplacement, in its order (adam.cpp, sgd.cpp, adaptive.cpp)
_REPLACEMENT_VALUES = {
    "Adam": (("learning rates", "lr"), ("weight decays", "weight_decay"), ("beta1s", "beta1"),
             ("beta2s", "beta2"), ("eps", "eps"), ("mwn", "max_weight_norm")),
    "SGD": (("learning rates", "lr"), ("weight decays", "weight_decay"), ("momentums", "momentum"),
            ("velocity scalings", "velocity_scaling"), ("nesterov", "nesterov")),
    "Adaptive": (("learning rates", "lr"), ("weight decays", "weight_decay"), ("alphas", "alpha"),
                 ("momentums", "momentum"), ("eps", "eps")),
}


def _f32(value: Any) -> float:
    return float(torch.tensor(float(value), dtype=torch.float64).to(torch.float32))


def _value_problem(old: Tuple[Any, bool], new: Tuple[Any, bool]) -> Optional[str]:
    """``OptimizerValue::validReplacement`` (graphcore/popart:willow/src/optimizervalue.cpp)."""
    if old[1] != new[1]:
        return "Can not replace a constant value with a non constant value."
    if old[1] and _f32(old[0]) - _f32(new[0]) != 0.0:
        return "Values are constant but do not match."
    return None


def check_replacement(old: Dict[str, Any], new: Dict[str, Any],
                      group_weights: Callable[[], List[List[str]]]) -> None:
    """PopART's ``Optimizer::validReplacement`` and its subclasses' (graphcore/popart:willow/src/
    optimizer.cpp, adam.cpp, sgd.cpp, adaptive.cpp, optimizervaluemap.cpp), run by ``Ir::updateOptimizer``
    when ``setOptimizer`` uploads a changed optimizer to a compiled executable: clipping, the optimizer
    class and mode, and every constant value must stay as compiled. ``group_weights()[i]`` are the PopART
    names of group ``i``'s weights (PopTorch gives every weight its group's values as a specific value),
    asked for only to name an offending weight."""
    def fail(message: str):
        raise Error(message)

    old_clip, new_clip = old["max_grad_norm"], new["max_grad_norm"]
    if math.isinf(old_clip) != math.isinf(new_clip):
        fail("Clip norm settings do not match.")
    if not math.isinf(old_clip) and _f32(old_clip) != _f32(new_clip):
        fail("Clip norm settings at index 0 do not match.")
    (old_cls, old_mode, old_decay), (new_cls, new_mode, new_decay) = _popart_optimizer(old), _popart_optimizer(new)
    if old_cls != new_cls:
        fail(f"Can not replace optimizer of type {old_cls} with new optimizer of type {new_cls}")
    if old_cls in ("Adam", "Adaptive") and old_mode != new_mode:
        fail(f"{old_cls} modes do not match")
    if old_decay != new_decay:
        fail("Weight decay modes do not match")
    problem = _value_problem(old["defaults"]["loss_scaling"], new["defaults"]["loss_scaling"])
    if problem:
        fail(f"Problem with loss scaling. {problem}")
    for label, name in _REPLACEMENT_VALUES[old_cls]:
        if name not in old["defaults"] and name not in new["defaults"]:
            continue  # not an attribute of this PopTorch class: PopART's own default on both sides
        missing = (None, True)
        problem = _value_problem(old["defaults"].get(name, missing), new["defaults"].get(name, missing))
        if problem:
            fail(f"Problem with {label}. Default value is not a valid replacement. {problem}")
        offending = []
        for i, (g_old, g_new) in enumerate(zip(old["groups"], new["groups"])):
            problem = _value_problem(g_old.get(name, missing), g_new.get(name, missing))
            if problem:
                offending += [(w, problem) for w in group_weights()[i]]
        if offending:
            weight, problem = min(offending)  # PopART walks its specifics in id order (a std::map)
            fail(f"Problem with {label}. OptimizerValue for tensor {weight} is not a valid replacement."
                 f"{problem}")
    if old_cls == "SGD":
        def velocity(d):  # SGD::validReplacement: hasVelocityTensor
            value, const = d["defaults"]["momentum"]
            return not const or value != 0.0
        if velocity(old) != velocity(new):
            fail("this does not require a velocity tensor, but other does.")


# PopART optimizer state tensors of one weight: (prefix, torch's state name)
def _state_tensor_names(desc: Dict[str, Any], h: Dict[str, Tuple[Any, bool]]) -> List[Tuple[str, str]]:
    kind, t = desc["kind"], desc["optimizer_type"]
    if kind in ("adam", "adamw", "lamb"):
        names = [("Accl1___", "exp_avg"), ("Accl2___", "exp_avg_sq")]
        return names if t == "LAMB_NO_BIAS" else names + [("Step___", "step")]
    if kind == "sgd":
        momentum, const = h["momentum"]
        if const and momentum == 0.0:
            return []  # SGD0: no velocity
        return [("Accl___" if t == "SGD1" else "Accl1___", "momentum_buffer")]
    names = [("Accl1___", "square_avg")]
    if t == "RMSPROP_CENTERED":
        names.append(("Accl2___", "grad_avg"))
    momentum, const = h["momentum"]
    if not const or momentum > 0:
        names.append(("Accl3___", "momentum_buffer"))
    return names


def _hyper_tensors(desc: Dict[str, Any], weight: str, h: Dict[str, Tuple[Any, bool]],
                   factors: Tuple[float, float]) -> Dict[str, float]:
    """The non-constant optimizer tensors of one weight and their values (the compound scalars of
    graphcore/popart:willow/include/popart/compoundscalarhelper.hpp; ``getScalarIdIfNonConst``: a constant
    is folded into the graph and has no tensor). ``factors`` = (accumulation, replication) factors of
    post-mean reduction."""
    af, rf = factors
    ls, ls_const = desc["defaults"]["loss_scaling"]
    out: Dict[str, float] = {}

    def add(prefix: str, value: float, *parts: Tuple[Any, bool]) -> None:
        if not all(const for _, const in parts):
            out[prefix + weight] = float(value)

    ls_pair = (ls, ls_const)
    if desc["kind"] in ("adam", "adamw", "lamb", "rmsprop"):
        adam = desc["kind"] != "rmsprop"
        add("learningRate___specific___", h["lr"][0], h["lr"])
        add("weightDecay___specific___", h["weight_decay"][0], h["weight_decay"])
        if adam:
            add("adamBeta1___specific___", h["beta1"][0], h["beta1"])
            add("adamBeta2___specific___", h["beta2"][0], h["beta2"])
            add("adamEps___specific___", h["eps"][0], h["eps"])
            if "max_weight_norm" in h:
                add("maxWeightNorm___specific___", h["max_weight_norm"][0], h["max_weight_norm"])
        else:
            add("adaptiveMomentum___specific___", h["momentum"][0], h["momentum"])
            add("adaptiveEps___specific___", h["eps"][0], h["eps"])
        add("lossScaling___specific___", ls, ls_pair)
        add(("adamGradientScaling___specific___" if adam else "adaptiveGradientScaling___specific___"),
            1.0 / (ls * af * rf), ls_pair)
        return out
    # SGD: velocity scaling is the loss scaling in the separate variant (getPopartOptimizer's copyParam)
    lr, wd, dm, mm = h["lr"], h["weight_decay"], h["dampening"], h["momentum"]
    vs = ls_pair if desc["optimizer_type"] == "SGD2" else h["velocity_scaling"]
    if mm[1] and mm[0] == 0.0:  # SGD0
        add("scaledLearningRate0___specific___", lr[0] * (1 - dm[0]) / (ls * af * rf), lr, ls_pair, dm)
        add("weightDecayScaleFactor0___specific___", 1 - lr[0] * (1 - dm[0]) * wd[0], wd, lr, dm)
        return out
    add("scaledWeightDecay1___specific___", (1 - dm[0]) * wd[0] * vs[0], dm, wd, vs)
    if desc["optimizer_type"] == "SGD1":
        add("scaledLearningRate1___specific___", lr[0] / (vs[0] * rf), lr, vs)
        add("scaledMomentum1___specific___", mm[0] / rf, mm)
        add("dampeningScaleFactor1___specific___", (1 - dm[0]) * vs[0] * rf / (ls * af), dm, vs, ls_pair)
    else:
        add("scaledLearningRate2___specific___", lr[0] / vs[0], lr, vs)
        add("scaledMomentum2___specific___", mm[0], mm)
        add("dampeningScaleFactor2___specific___", (1 - dm[0]) * vs[0] / (ls * af * rf), dm, vs, ls_pair)
    return out


class DeviceOptimizerState:
    """The optimizer state of one executable: PopART's optimizer variables (zeros at compilation, updated
    by every device iteration) and the host buffers of its optimizer (hyper-parameter) tensors.

    ``by_param`` is what :func:`apply_update` updates (``id(param) -> {torch name: tensor}``);
    :meth:`read` and :meth:`write` are ``poptorch_core.readOptimizerState`` / ``writeOptimizerState``
    (python/poptorch.cpp; popart_compiler ``Compiler::optimizerTensorMetadataList``): ``ipu_state`` keyed
    ``<prefix><weight name>``; ``ipu_param`` written into the host buffers only (PopART streams optimizer
    tensors to the device when an optimizer is uploaded, ``TrainingSession::updateOptimizerFromHost``, so
    the values in use stay those of the last ``setOptimizer``), and read back from them."""

    def __init__(self, optimizer: torch.optim.Optimizer, snap: Dict[str, Any], desc: Dict[str, Any],
                 model: torch.nn.Module, options) -> None:
        names = weight_names(model)
        params = {id(p): p for p in model.parameters()}
        group_index = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        self.kind, self.desc = snap["kind"], desc
        self.weights: List[Tuple[str, int, Optional[int]]] = []  # (name, id(param), group or None: defaults)
        self.by_param: Dict[int, Dict[str, torch.Tensor]] = {}
        for pid, name in names.items():
            p = params.get(pid)
            if p is None or not p.requires_grad:
                continue
            group = group_index.get(pid)
            self.weights.append((name, pid, group))
            h = snap["groups"][group] if group is not None else snap["defaults"]
            self.by_param[pid] = _initial_state(self.kind, optimizer, p, h)
        o = options.Training
        from .enums import MeanReductionStrategy, ReductionType
        post_mean = (o.accumulation_and_replication_reduction_type == ReductionType.Mean and
                     o.meanAccumulationAndReplicationReductionStrategy == MeanReductionStrategy.Post)
        replicas = options.replication_factor * options.Distributed.numProcesses
        self.factors = (float(o.gradient_accumulation) if post_mean and o.gradient_accumulation > 1 else 1.0,
                        float(replicas) if post_mean and replicas > 1 else 1.0)
        self.params: Dict[str, torch.Tensor] = {}
        self.upload(desc)

    def _hyper_of(self, desc: Dict[str, Any], group: Optional[int]) -> Dict[str, Tuple[Any, bool]]:
        return desc["groups"][group] if group is not None else desc["defaults"]

    def upload(self, desc: Dict[str, Any]) -> None:
        """``updateOptimizers``: the host buffers take the new optimizer's values."""
        self.desc = desc
        params: Dict[str, float] = {}
        for name, _, group in self.weights:
            params.update(_hyper_tensors(desc, name, self._hyper_of(desc, group), self.factors))
        ls, const = desc["defaults"]["loss_scaling"]
        if not const:
            params["lossScaling_FLOAT"] = ls  # the loss scaling of the (float32) loss
        self.params = {k: torch.tensor(v, dtype=torch.float32) for k, v in sorted(params.items())}

    def _state_names(self):
        for name, pid, group in self.weights:
            for prefix, key in _state_tensor_names(self.desc, self._hyper_of(self.desc, group)):
                yield prefix + name, pid, key

    def read(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """``readOptimizerState``: fresh host copies."""
        state = {tid: self.by_param[pid][key].detach().clone() for tid, pid, key in self._state_names()
                 if key in self.by_param[pid]}
        return {"ipu_state": state, "ipu_param": {k: v.clone() for k, v in self.params.items()}}

    @torch.no_grad()
    def write(self, state_dict: Dict[str, Any]) -> None:
        """``writeOptimizerState``: every tensor of the executable found in ``state_dict`` is copied in;
        missing ones keep their values (with PopTorch's warning); unknown names are ignored."""
        ipu_state, ipu_param = state_dict["ipu_state"], state_dict["ipu_param"]
        for tid, pid, key in self._state_names():
            if tid not in ipu_state:
                logger.warning("writeOptimizerState: ignoring missing state %s", tid)
                continue
            value = ipu_state[tid]
            current = self.by_param[pid].get(key)
            if current is None:  # SGD's velocity before its first update
                self.by_param[pid][key] = value.detach().clone()
                continue
            if tuple(value.shape) != tuple(current.shape) or value.dtype != current.dtype:
                raise Error(f"writeOptimizerState: {tid} is {value.dtype} {list(value.shape)} but the executable's "
                            f"is {current.dtype} {list(current.shape)}")
            current.copy_(value)
        for tid, current in self.params.items():
            if tid not in ipu_param:
                logger.warning("writeOptimizerState: ignoring missing parameter %s", tid)
                continue
            current.copy_(torch.as_tensor(ipu_param[tid], dtype=torch.float32).reshape(()))


# ---- sizes, for the memory estimate -----------------------------------------------------------------------
def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def state_bytes(optimizer: torch.optim.Optimizer, p: torch.Tensor, group: Dict[str, Any]) -> int:
    """Bytes of optimizer state PopART keeps for weight ``p`` (moments / velocity)."""
    kind = optimizer_kind(optimizer)
    n = p.numel()
    if kind in ("adam", "adamw", "lamb"):
        return n * (_size(_moment_dtype(optimizer, p, "first_order_momentum_accum_type"))
                    + _size(_moment_dtype(optimizer, p, "second_order_momentum_accum_type")))
    if kind == "sgd":
        if float(group.get("momentum", 0.0)) == 0.0 or getattr(optimizer, "use_combined_accum", False):
            return 0
        return n * _size(_moment_dtype(optimizer, p, "velocity_accum_type"))
    count = 1 + (float(group.get("momentum", 0.0)) > 0) + bool(group.get("centered", False))
    return n * count * _size(p.dtype)


def accumulator_bytes(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> int:
    """Bytes of the gradient accumulator of ``p`` (present when gradientAccumulation > 1)."""
    return p.numel() * _size(_moment_dtype(optimizer, p, "accum_type"))


def group_of(optimizer: torch.optim.Optimizer) -> Dict[int, Dict[str, Any]]:
    """id(param) -> its param group."""
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}

