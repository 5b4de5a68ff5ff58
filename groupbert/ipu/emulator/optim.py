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
decay inside :math:`u` equals torch's ``w(1 - \eta\lambda)`` then Adam step exactly. The state tensors
use torch's names (``step``, ``exp_avg``, ``exp_avg_sq``, ``momentum_buffer``, ``square_avg``) and live
in the optimizer object the user passed, so ``optimizer.state_dict()`` after a call returns the device
state (PopTorch reads it back from the IPU). Moments are kept in float32 for low-precision weights
(PopTorch's default ``*_accum_type=torch.float32``).

Deviations: PopTorch's ``state_dict()`` of its own classes adds ``ipu_state``/``ipu_param`` entries; here
it is torch's. SGD follows torch's first-step velocity ``b_1 = d`` (PopTorch documents SGD as
"mathematically identical to PyTorch"). RMSprop uses torch's equations (``use_tf_variant`` is ignored).
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from .errors import AssertError, Error

__all__ = ["SGD", "Adam", "AdamW", "RMSprop", "LAMB", "VariableAttributes", "optimizer_kind",
           "snapshot_hyperparameters", "apply_update", "state_bytes", "accumulator_bytes"]

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
    """Mixin: PopTorch's global (not per-group) attributes survive deepcopy/pickle."""
    _child_attrs: Tuple[str, ...] = ()

    def _init_poptorch(self, passed: Dict[str, Any], allowed_extra: List[str]) -> None:
        variables = [k for k, v in passed.items() if v is not None]
        self.variable_attrs = VariableAttributes(variables, list(self.defaults) + allowed_extra)

    def __getstate__(self) -> Dict[str, Any]:
        state = torch.optim.Optimizer.__getstate__(self)
        for name in self._child_attrs + ("variable_attrs",):
            state[name] = getattr(self, name)
        return state


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
    attrs = {"loss_scaling": float(getattr(optimizer, "loss_scaling", 1.0)),
             "max_grad_norm": float(getattr(optimizer, "max_grad_norm", float("inf"))),
             "bias_correction": bool(getattr(optimizer, "bias_correction", True)),
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
                 extra_params: Iterable[torch.Tensor] = ()) -> None:
    """One PopART optimizer step on every parameter with a gradient.

    Uses the hyperparameters of ``snap`` (not the live ``param_groups``) and writes the state into
    ``optimizer.state``. ``extra_params`` (trainable, not in any group) use ``snap["defaults"]``.
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
            state = optimizer.state[p]
            if kind == "sgd":
                _sgd(p, p.grad, state, h)
            elif kind == "rmsprop":
                _rmsprop(p, p.grad, state, h)
            else:
                mwn = h.get("max_weight_norm", attrs["max_weight_norm"]) if kind == "lamb" else None
                _adam_family(optimizer, p, p.grad, state, h, decay_mode=kind != "adam",
                             bias_correction=attrs["bias_correction"], max_weight_norm=mwn)


def _adam_family(optimizer, p, grad, state, h, *, decay_mode: bool, bias_correction: bool,
                 max_weight_norm: Optional[float]) -> None:
    lr, (beta1, beta2), eps, wd = float(h["lr"]), h["betas"], float(h["eps"]), float(h["weight_decay"])
    m_dtype = _moment_dtype(optimizer, p, "first_order_momentum_accum_type")
    v_dtype = _moment_dtype(optimizer, p, "second_order_momentum_accum_type")
    if len(state) == 0:
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(p, dtype=m_dtype, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=v_dtype, memory_format=torch.preserve_format)
    state["step"] += 1
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

