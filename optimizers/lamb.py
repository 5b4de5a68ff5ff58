r"""LAMB: layer-wise adaptive moments for large-batch training, with NVIDIA's and Graphcore's variants as flags.

Paper: You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer & Hsieh, "Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020, https://arxiv.org/abs/1904.00962
(Algorithm "LAMB", the version with bias correction).

Reference implementations this follows:
    - NVIDIA apex ``FusedLAMB`` with ``adam_w_mode=1`` ("NVLAMB";
      ``NVIDIA/apex:apex/optimizers/fused_lamb.py``, ``csrc/multi_tensor_lamb.cu``), the optimizer of
      NVIDIA's BERT recipe. It clips the global grad norm before the moments, adds ε after bias
      correction, adds λθ inside the update u, and uses per-tensor norms.
    - Graphcore's TF ``LAMBOptimizer`` (``graphcore/examples:nlp/bert/tensorflow1/ipu_optimizer.py``),
      used for GroupBERT, and PopTorch ``poptorch.optim.LAMB`` (``graphcore/poptorch:python/optim.py``).
      PopTorch caps the weight norm with φ(z) = min(z, max_weight_norm).
    ``PRESETS`` below holds each recipe's settings. The tests compare every variant with a separate
    float64 implementation of the equations.

Deviations (numerics choices where the implementations above differ):
    - Global gradient clipping (``max_grad_norm``) divides a *copy* of the gradients by
      max(1, G/max_grad_norm), with G the norm over all parameters of all groups. ``p.grad`` is not
      modified (apex overwrites it with u). G before clipping is kept in :attr:`LAMB.last_grad_norm`.
    - Trust-ratio exclusion is a per-group ``trust_ratio`` flag. apex instead skips the ratio for every
      group with weight_decay == 0 unless ``use_nvlamb``. ``optimizers.param_groups`` sets
      ``trust_ratio=False`` and ``weight_decay=0`` together for biases and norms. That reproduces
      apex's default and Graphcore's ``exclude_from_layer_adaptation=["bias", "beta", "gamma"]``.
    - r = 1 when ‖θ‖ or ‖u‖ is 0 (apex, Graphcore, timm). So ``max_weight_norm=0`` also gives r = 1,
      the same effect as the ``max_weight_norm: 0`` of Graphcore's PyTorch bias group.
    - Norms are per tensor. The BERT/GroupBERT models here keep query, key and value as separate
      tensors, so each gets its own ratio, as in Graphcore's Q/K/V split. A fused QKV tensor would get
      one ratio.
    - The step counter t is per parameter, as in torch's Adam (apex keeps one per group). β1 always
      weights the gradient by (1 − β1) (apex ``grad_averaging=True``). There is no L2 mode
      (apex ``adam_w_mode=0``).
    - Moments are kept in the parameter dtype. Norms are reduced in float32, or float64 for float64
      tensors (the fused kernel reduces in double). There is no fp32 master copy for low-precision
      parameters.
    - :meth:`LAMB.load_state_dict` keeps this optimizer's ``fused`` and ``foreach`` settings instead of
      taking them from the checkpoint (the state itself is the same for every path).

Implementations (one set of equations; ``fused`` / ``foreach`` pick one per parameter group):
    - fused: the C++ multi-tensor kernel ``groupbert::fused_lamb_`` (``custom_ops/fused_optim.py``,
      ``csrc/fused_optim.cpp``), one call per group, for dense contiguous float32/float64 CPU tensors,
      plus ``groupbert::global_grad_norm`` for the clip when every group is fused. It is the default
      where the library is built (``GROUPBERT_CUSTOM_OPS``). Same operations and order as
      ``_single_tensor_lamb`` except the norms (summed in double), so results agree to ~1e-7 relative.
      Two passes over memory (the trust ratio needs whole-tensor norms first). No CUDA kernel.
    - foreach: ``torch._foreach_*`` calls per (device, dtype) bucket; the default on CUDA.
    - single-tensor: a loop over the tensors, the readable reference; the CPU fallback.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor

from optimizers._helpers import (bucket_by_device_and_dtype, check_adam_hyperparameters, check_fused_foreach,
                                 default_foreach, init_adam_group, load_state_dict_keeping_implementation,
                                 steps_to_tensors, use_fused)

__all__ = ["LAMB", "PRESETS", "global_grad_norm", "lamb"]

# Named recipes: constructor kwargs for LAMB (``LAMB(params, lr=..., **PRESETS[name])``). Each group's
# trust_ratio / weight_decay exclusions come from optimizers.param_groups, not from here.
PRESETS: dict[str, dict[str, Any]] = {
    # NVIDIA DeepLearningExamples BERT with apex FusedLAMB defaults: global clip to 1.0, eps 1e-6,
    # bias correction on, no φ clamp (apex fused_lamb.py; DeepLearningExamples BERT run_pretraining.py).
    "lamb_nvidia": {"max_grad_norm": 1.0, "bias_correction": True, "eps": 1e-6},
    # PopTorch poptorch.optim.LAMB defaults: φ(z) = min(z, 65500) (fp16 max), eps 1e-8, no
    # clipping (graphcore/poptorch python/optim.py).
    "lamb_poptorch": {"max_weight_norm": 65500.0, "bias_correction": True, "eps": 1e-8},
    # The same with PopTorch's bias_correction=False.
    "lamb_poptorch_nobc": {"max_weight_norm": 65500.0, "bias_correction": False, "eps": 1e-8},
    # Graphcore GroupBERT TF configs (pretrain_base_groupbert_*.json): use_debiasing true, epsilon 1e-6
    # (graphcore/examples nlp/bert/tensorflow1/configs/groupbert). Their use_mpclip global clip has clip_norm = scale_down_grads_factor *
    # num_replicas, set in loss-scaled units. Its threshold on unscaled gradients is unknown, so it is
    # left out.
    "lamb_graphcore_groupbert": {"bias_correction": True, "eps": 1e-6},
}


class LAMB(torch.optim.Optimizer):
    r"""LAMB with optional global gradient clipping (NVLAMB) and weight-norm cap (PopTorch).

    .. math::
        \begin{aligned}
            &\textbf{input}: \eta \text{ (lr)},\ \beta_1, \beta_2 \text{ (betas)},\ \theta_0 \text{ (params)},
                \ \epsilon,\ \lambda \text{ (weight decay)},\ c \text{ (max\_grad\_norm)},
                \ \phi_{\max} \text{ (max\_weight\_norm)} \\
            &\textbf{initialize}: m_0 \leftarrow 0,\ v_0 \leftarrow 0 \\
            &\textbf{for}\ t = 1, 2, \ldots\ \textbf{do} \\
            &\quad G_t \leftarrow \big(\textstyle\sum_j \lVert g_t^{(j)} \rVert^2\big)^{1/2}
                \quad \text{(all tensors of all groups)} \\
            &\quad \hat g_t \leftarrow g_t / \max(1, G_t / c)
                \quad (\hat g_t \leftarrow g_t \text{ if } c \text{ is None}) \\
            &\quad \textbf{for each tensor}\ \theta\ \textbf{do} \\
            &\qquad m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) \hat g_t \\
            &\qquad v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) \hat g_t^2 \\
            &\qquad \hat m_t \leftarrow m_t / (1 - \beta_1^t),
                \ \hat v_t \leftarrow v_t / (1 - \beta_2^t)
                \quad (\text{both uncorrected if not bias\_correction}) \\
            &\qquad u_t \leftarrow \hat m_t / (\sqrt{\hat v_t} + \epsilon) + \lambda \theta_{t-1} \\
            &\qquad \phi \leftarrow \min(\lVert \theta_{t-1} \rVert, \phi_{\max})
                \quad (\phi \leftarrow \lVert \theta_{t-1} \rVert \text{ if } \phi_{\max} \text{ is None}) \\
            &\qquad r_t \leftarrow \phi / \lVert u_t \rVert
                \quad (r_t \leftarrow 1 \text{ if } \phi = 0,\ \lVert u_t \rVert = 0
                \text{ or not trust\_ratio}) \\
            &\qquad \theta_t \leftarrow \theta_{t-1} - \eta\, r_t\, u_t \\
            &\textbf{return}\ \theta_t
        \end{aligned}

    Norms are Frobenius norms of whole tensors. ``trust_ratio``, ``weight_decay``, ``max_weight_norm``,
    ``bias_correction``, ``lr``, ``betas`` and ``eps`` can be set per parameter group. A group with
    ``trust_ratio=False`` takes a plain Adam step with λθ added to u. ``max_grad_norm`` applies to the
    whole optimizer: a group that sets a different value is rejected. Parameters whose gradient is None
    are skipped. Their step counter does not advance, and their gradients do not count in G_t.

    Args:
        params: parameters to optimize, or dicts defining parameter groups.
        lr: learning rate η (default: 1e-3).
        betas: coefficients (β1, β2) of the running averages of the gradient and its square
            (default: (0.9, 0.999)).
        eps: ε added to √v̂ after bias correction (default: 1e-6, apex and NVIDIA BERT; PopTorch uses 1e-8).
        weight_decay: λ. λθ is added to the update u inside the trust ratio (default: 0.01).
        bias_correction: divide m and v by 1 − β^t (default: True).
        max_grad_norm: clip the global gradient norm to this value before the moments, as NVLAMB does.
            None disables clipping (default: None).
        max_weight_norm: cap φ = min(‖θ‖, max_weight_norm), as PopTorch does. None leaves ‖θ‖ uncapped
            (default: None).
        trust_ratio: apply the layer-wise trust ratio. This is the default for groups that do not set
            their own ``trust_ratio`` key (default: True).
        foreach: use the ``torch._foreach_*`` implementation. None picks it when every parameter is a
            CUDA tensor, as torch does (default: None).
        fused: use the fused C++ CPU kernel (``custom_ops.fused_optim``). None picks it for a group when
            ``foreach`` is None, the library is built and enabled, and every tensor is a dense contiguous
            float32/float64 CPU tensor. True raises if that is not so; ``fused=True`` with
            ``foreach=True`` is a ValueError (default: None).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.01,
        *,
        bias_correction: bool = True,
        max_grad_norm: Optional[float] = None,
        max_weight_norm: Optional[float] = None,
        trust_ratio: bool = True,
        foreach: Optional[bool] = None,
        fused: Optional[bool] = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, max_grad_norm=max_grad_norm,
                        max_weight_norm=max_weight_norm, trust_ratio=trust_ratio, foreach=foreach, fused=fused)
        _check_lamb_hyperparameters(defaults)
        # G_t of the last step. A dict, not a plain attribute: torch.compile drops attribute stores on an
        # optimizer but replays dict updates.
        self._grad_norm: dict[str, Optional[Tensor]] = {"last": None}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_lamb_hyperparameters(group)
        if group["max_grad_norm"] != self.defaults["max_grad_norm"]:
            raise ValueError(f"Invalid max_grad_norm in a param group: {group['max_grad_norm']!r}. "
                             "Clipping uses one global norm over all groups; set max_grad_norm on the "
                             "optimizer, not per group")
        # fused=True fails here, not at the first step; fused=None builds/loads the library now, not
        # inside a step that torch.compile may be tracing
        use_fused(group["fused"], group["foreach"], group["params"], type(self).__name__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but the groups keep this optimizer's ``fused`` and ``foreach`` settings."""
        load_state_dict_keeping_implementation(self, state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_grad_norm", {"last": None})
        self.defaults.setdefault("max_grad_norm", None)
        for group in self.param_groups:
            group.setdefault("bias_correction", True)
            group.setdefault("max_grad_norm", self.defaults["max_grad_norm"])
            group.setdefault("max_weight_norm", None)
            group.setdefault("trust_ratio", True)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
        self.defaults.setdefault("fused", None)
        steps_to_tensors(self.state)

    @property
    def last_grad_norm(self) -> Optional[float]:
        """Global gradient norm G of the last step, before clipping. None if ``max_grad_norm`` is None
        or no step has run yet. Reading it waits for the device; ``step`` itself does not."""
        norm = self._grad_norm["last"]
        return None if norm is None else float(norm)

    def _group_tensors(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        # not named _init_group: torch.compile special-cases that name with torch's own signature
        return init_adam_group(self, group)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """One optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lists = [self._group_tensors(group) for group in self.param_groups]
        name = type(self).__name__
        fused = [bool(params) and use_fused(group["fused"], group["foreach"], params + grads, name)
                 for group, (params, grads, *_) in zip(self.param_groups, lists)]

        # G_t and the clip divisor max(1, G_t / c), over all groups, kept on the device.
        grad_norm = grad_divisor = None
        max_grad_norm = self.defaults["max_grad_norm"]
        all_grads = [g for group_lists in lists for g in group_lists[1]]
        if max_grad_norm is not None and all_grads:
            if all(f for f, (params, *_) in zip(fused, lists) if params):  # one fused pass over all grads
                from custom_ops.fused_optim import global_grad_norm as fused_global_grad_norm
                grad_norm = fused_global_grad_norm(all_grads)
            else:
                foreach = self.defaults["foreach"]
                if foreach is None:
                    foreach = default_foreach(all_grads)
                grad_norm = global_grad_norm(all_grads, foreach=foreach)
            grad_divisor = torch.clamp(grad_norm / max_grad_norm, min=1.0)
        self._grad_norm["last"] = grad_norm

        for group, group_fused, (params, grads, exp_avgs, exp_avg_sqs, state_steps) in zip(
                self.param_groups, fused, lists):
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lamb(params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_divisor=grad_divisor,
                 foreach=group["foreach"], fused=group_fused, lr=group["lr"], beta1=beta1, beta2=beta2,
                 eps=group["eps"], weight_decay=group["weight_decay"], bias_correction=group["bias_correction"],
                 max_weight_norm=group["max_weight_norm"], trust_ratio=group["trust_ratio"])
        return loss


def global_grad_norm(grads: list[Tensor], *, foreach: bool) -> Tensor:
    """(Σ_j ‖g_j‖²)^½ as a 0-dim tensor on the first gradient's device. Reduced in float32, or in
    float64 if any gradient is float64."""
    acc_dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    if foreach:
        norms = [n for (dev_grads,) in bucket_by_device_and_dtype([grads])
                 for n in torch._foreach_norm(dev_grads, 2, dtype=_norm_dtype(dev_grads[0]))]
    else:
        norms = [torch.linalg.vector_norm(g, dtype=_norm_dtype(g)) for g in grads]
    device = grads[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device, acc_dtype) for n in norms]))


def lamb(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    grad_divisor: Optional[Tensor] = None,
    foreach: Optional[bool] = None,
    fused: bool = False,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool = True,
    max_weight_norm: Optional[float] = None,
    trust_ratio: bool = True,
) -> None:
    """Functional LAMB for one parameter group (see :class:`LAMB`). ``grad_divisor`` is the global clip
    factor max(1, G/c) computed over *all* groups (:meth:`LAMB.step` does that). Updates ``params``,
    ``exp_avgs``, ``exp_avg_sqs`` and ``state_steps`` in place; ``grads`` are left untouched.
    ``fused=True`` calls the C++ kernel (the tensors must qualify; :meth:`LAMB.step` decides per group)."""
    if fused:
        from custom_ops.fused_optim import fused_lamb_
        fused_lamb_(params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_divisor=grad_divisor, lr=lr,
                    beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                    bias_correction=bias_correction, max_weight_norm=max_weight_norm, trust_ratio=trust_ratio)
        return
    if foreach is None:
        foreach = default_foreach(params)
    impl = _multi_tensor_lamb if foreach else _single_tensor_lamb
    impl(params, grads, exp_avgs, exp_avg_sqs, state_steps, grad_divisor=grad_divisor, lr=lr, beta1=beta1,
         beta2=beta2, eps=eps, weight_decay=weight_decay, bias_correction=bias_correction,
         max_weight_norm=max_weight_norm, trust_ratio=trust_ratio)


def _single_tensor_lamb(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *, grad_divisor: Optional[Tensor],
                        lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                        bias_correction: bool, max_weight_norm: Optional[float], trust_ratio: bool) -> None:
    """The readable spec: one tensor at a time, in the order of the class docstring's equations."""
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps):
        if grad_divisor is not None:
            grad = grad / grad_divisor.to(grad.device)  # ĝ_t = g_t / max(1, G_t/c), a copy
        step_t += 1
        t = step_t.item()  # host tensor: no device sync
        bias_correction1 = 1 - beta1 ** t if bias_correction else 1.0
        bias_correction2 = 1 - beta2 ** t if bias_correction else 1.0
        exp_avg.lerp_(grad, 1 - beta1)  # m_t
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v_t
        denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)  # √v̂_t + ε
        update = exp_avg.div(bias_correction1).div_(denom)  # m̂_t / (√v̂_t + ε)
        if weight_decay != 0:
            update.add_(param, alpha=weight_decay)  # u_t = ... + λθ_{t-1}
        if trust_ratio:
            weight_norm = torch.linalg.vector_norm(param, dtype=_norm_dtype(param))  # φ
            if max_weight_norm is not None:
                weight_norm = weight_norm.clamp(max=max_weight_norm)  # φ = min(‖θ‖, φ_max)
            update_norm = torch.linalg.vector_norm(update, dtype=_norm_dtype(update))
            ratio = torch.where((weight_norm > 0) & (update_norm > 0), weight_norm / update_norm,
                                1.0)  # r_t (trust ratio), on the device
            update.mul_(ratio)
        param.add_(update, alpha=-lr)  # θ_t = θ_{t-1} - η r_t u_t


def _multi_tensor_lamb(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                       exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *, grad_divisor: Optional[Tensor],
                       lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                       bias_correction: bool, max_weight_norm: Optional[float], trust_ratio: bool) -> None:
    """The same arithmetic as :func:`_single_tensor_lamb` with ``torch._foreach_*`` calls, per
    (device, dtype) bucket. The per-tensor ratios stay on the device (no host sync)."""
    for dev_params, dev_grads, dev_exp_avgs, dev_exp_avg_sqs, dev_steps in bucket_by_device_and_dtype(
            [params, grads, exp_avgs, exp_avg_sqs, state_steps]):
        if grad_divisor is not None:
            dev_grads = torch._foreach_div(dev_grads, grad_divisor.to(dev_params[0].device))  # ĝ_t
        torch._foreach_add_(dev_steps, 1)
        ts = [s.item() for s in dev_steps]
        torch._foreach_lerp_(dev_exp_avgs, dev_grads, 1 - beta1)  # m_t
        torch._foreach_mul_(dev_exp_avg_sqs, beta2)  # v_t
        torch._foreach_addcmul_(dev_exp_avg_sqs, dev_grads, dev_grads, 1 - beta2)
        del dev_grads
        denom = torch._foreach_sqrt(dev_exp_avg_sqs)  # √v̂_t + ε
        if bias_correction:
            torch._foreach_div_(denom, [(1 - beta2 ** t) ** 0.5 for t in ts])
            updates = torch._foreach_div(dev_exp_avgs, [1 - beta1 ** t for t in ts])  # m̂_t
        else:
            updates = torch._foreach_div(dev_exp_avgs, 1.0)  # a copy of m_t
        torch._foreach_add_(denom, eps)
        torch._foreach_div_(updates, denom)  # m̂_t / (√v̂_t + ε)
        del denom
        if weight_decay != 0:
            torch._foreach_add_(updates, dev_params, alpha=weight_decay)  # u_t = ... + λθ_{t-1}
        if trust_ratio:
            norm_dtype = _norm_dtype(dev_params[0])
            weight_norms = torch.stack(torch._foreach_norm(dev_params, 2, dtype=norm_dtype))  # φ
            if max_weight_norm is not None:
                weight_norms = weight_norms.clamp(max=max_weight_norm)  # φ = min(‖θ‖, φ_max)
            update_norms = torch.stack(torch._foreach_norm(updates, 2, dtype=norm_dtype))
            ratios = torch.where((weight_norms > 0) & (update_norms > 0), weight_norms / update_norms,
                                 1.0)  # r_t (trust ratio), one per tensor
            torch._foreach_mul_(updates, ratios.unbind())
        torch._foreach_add_(dev_params, updates, alpha=-lr)  # θ_t = θ_{t-1} - η r_t u_t


def _norm_dtype(t: Tensor) -> torch.dtype:
    """Reduce low-precision tensors in float32; float64 stays float64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_lamb_hyperparameters(hp: dict[str, Any]) -> None:
    """ValueError naming the argument for any out-of-range hyperparameter."""
    check_adam_hyperparameters(hp)
    max_grad_norm, max_weight_norm = hp["max_grad_norm"], hp["max_weight_norm"]
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"Invalid max_grad_norm: {max_grad_norm!r} (must be > 0, or None to disable)")
    if max_weight_norm is not None and not max_weight_norm >= 0:
        raise ValueError(f"Invalid max_weight_norm: {max_weight_norm!r} (must be >= 0, or None to disable)")
    if not isinstance(hp["trust_ratio"], bool):
        raise ValueError(f"Invalid trust_ratio: {hp['trust_ratio']!r} (must be True or False)")
    if not isinstance(hp["bias_correction"], bool):
        raise ValueError(f"Invalid bias_correction: {hp['bias_correction']!r} (must be True or False)")
    check_fused_foreach(hp)
