"""LionAR: rotational Lion, whose weight matrices keep their initial norm and rotate by a set angle per step.

Paper: Kosson, Messmer & Jaggi, "Analyzing & Reducing the Need for Learning Rate Warmup in GPT Training"
(NeurIPS 2024, https://arxiv.org/abs/2410.23922). A third-party summary (liner.com review) describes LionAR
as "a rotational optimizer … [that] control[s] the angular update size by making updates proportional to
weight magnitudes and normalizing them to an equilibrium value, replacing weight decay with projections".
The Fig. 5 panel 3 caption: "In LionAR with increased momentum β = 0.98, Nesterov momentum and an inverse
bias correction for early momentum, no warmup performs best" (preset ``lion_ar_mom``). The paper's code was
not released and its update equations are not public.

The update is reconstructed from the same authors' Rotational Equilibrium work: Kosson et al., "Rotational
Equilibrium: How Weight Decay Balances Learning Across Neural Networks" (ICML 2024,
https://arxiv.org/abs/2305.17212), code ``epfml/REQ`` ``shared/optimizers/rotational_lion.py`` (RotationalLion,
including the Lion equilibrium formula below) and ``shared/optimizers/common.py`` (``perform_rotational_update``:
centering, radial projection, update-norm EMA, projection back to the initial norm). Not checked against the
warmup paper's PDF. Base optimizer: Chen et al. 2023,
"Symbolic Discovery of Optimization Algorithms", https://arxiv.org/abs/2302.06675. No code was copied.

Equilibrium angular update (REQ, Lion). Under weight decay λ, a tensor's norm settles where decay and the
random-walk growth of the updates balance; the expected angle per step there is

    η_r = √(π/2) · √(2 γ λ) · √((1-β1)² + β1² (1-β2)/(1+β2)),

where √(π/2) models sign(c) as √(2/π)·c/σ_c (the part of sign(c) uncorrelated with c is neglected) and the
last factor is σ_c²/σ_g² for white-noise gradients (each gradient's total weight in Σ_t c_t is 1). LionAR sets the angle to η_r at the *scheduled* γ every step, so
a linear lr warmup becomes a √-shaped ramp of η_r.

Choices (paper constants not public):
    * Granularity: per output row (``per_row=True``, REQ's ``per_neuron``); per whole tensor otherwise.
    * Normalisation: exact by default (``update_norm_decay=0.0``): every rotational row turns by exactly
      arctan(η_r) per step. REQ's default is an EMA with ρ = 0.9 (preset ``lion_ar_req``).
    * Centering off by default (``zero_mean=False``; REQ: on). With it on, each row is centered and rescaled to
      its norm at the first step (REQ does this at construction), and every update is centered.
    * Which tensors rotate: those with dim >= 2 in groups with ``rotational=True`` (the default; a group key,
      set it False per group for plain Lion). 1-D tensors never rotate. REQ additionally requires λ != 0;
      here a rotational group holding a matrix with λ = 0 is a ``ValueError`` (η_r would be 0, the matrix
      frozen) instead of a silent switch to plain Lion.
    * Nesterov (single β, ``betas=(β, β)``): ``m_t = β m_{t-1} + (1-β) g_t, c_t = β m_t + (1-β) g_t``
      equals Lion's ``c_t`` with (β1, β2) = (β², β), so η_r uses the formula above with β1 → β², β2 → β
      (derived here).
    * ``inverse_bias_correction``: η_r is multiplied by 1 - β1^t (t = this tensor's update count), and plain
      Lion steps of non-rotational tensors by the same factor.
    * The initial norm ‖w₀‖ is measured at the tensor's first step and stored in the optimizer state in the
      parameter's dtype. Rows whose initial norm is zero stay zero.
    * Learnable per-output gains (REQ's ``SLinear`` for GPT-2) are not part of the optimizer.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from optimizers._helpers import check_grad, group_indices_by_device_and_dtype, resolve_foreach
from optimizers._lion_common import (check_lion_args, foreach_lion_direction_, inverse_bias_correction_factor,
                                     lion_direction_)
from optimizers.lion import lion

__all__ = ["LionAR", "lion_ar", "lion_equilibrium_angular_update", "PRESETS"]

_EPS = 1e-8  # floor of the update-norm denominator (REQ's rotational_eps), only reached when u_perp ~ 0

PRESETS: dict[str, dict] = {
    # Kosson et al. 2024, Fig. 5 panel 3: "LionAR with increased momentum β = 0.98, Nesterov momentum and an
    # inverse bias correction for early momentum, no warmup performs best".
    "lion_ar_mom": {"betas": (0.98, 0.98), "nesterov": True, "inverse_bias_correction": True},
    # epfml/REQ RotationalLion defaults: update-norm EMA 0.9 and centered weights/updates.
    "lion_ar_req": {"update_norm_decay": 0.9, "zero_mean": True},
}


def lion_equilibrium_angular_update(lr: float, weight_decay: float, beta1: float, beta2: float, *,
                                    nesterov: bool = False) -> float:
    """η_r = √(π/2)·√(2γλ)·√((1-β1)² + β1²(1-β2)/(1+β2)) (REQ ``rotational_lion.py``).

    With ``nesterov`` the single β is ``beta2`` (== ``beta1``) and the formula is evaluated at
    (β1, β2) = (β², β), the Lion form of the Nesterov direction.
    """
    if nesterov:
        beta1 = beta2 * beta2
    return (math.sqrt(math.pi / 2.0) * math.sqrt(2.0 * lr * weight_decay)
            * math.sqrt((1.0 - beta1) ** 2 + beta1 ** 2 * (1.0 - beta2) / (1.0 + beta2)))


class LionAR(torch.optim.Optimizer):
    r"""Rotational Lion (Kosson et al. 2024, reconstructed from REQ's RotationalLion).

    For a rotational tensor, each row w (or the whole tensor if ``per_row=False``) with initial norm
    r = ‖w_0‖ is updated by

    .. math::
        \begin{aligned}
            &\rule{110mm}{0.4pt} \\
            &\textbf{input}: \gamma_t \text{ (scheduled lr)}, \beta_1, \beta_2 \text{ (betas)}, \lambda
                \text{ (weight\_decay)}, \rho \text{ (update\_norm\_decay)}, w_0 \text{ (row)} \\
            &\textbf{initialize}: m_0 \leftarrow 0,\: \nu_0 \leftarrow 0,\:
                r \leftarrow \lVert w_0 \rVert \;(\text{after centering if } \textit{zero\_mean}) \\
            &\rule{110mm}{0.4pt} \\
            &\textbf{for}\: t = 1 \:\textbf{to}\: \ldots \:\textbf{do} \\
            &\hspace{5mm} c_t, m_t \leftarrow \text{Lion direction and momentum (Nesterov form if }
                \textit{nesterov}) \\
            &\hspace{5mm} u_t \leftarrow \mathrm{sign}(c_t) \\
            &\hspace{5mm}\textbf{if}\: \textit{zero\_mean}: u_t \leftarrow u_t - \mathrm{mean}(u_t) \\
            &\hspace{5mm} u_\perp \leftarrow u_t - w_{t-1} \langle u_t, w_{t-1} \rangle / r^2
                \qquad (\text{radial part removed}) \\
            &\hspace{5mm}\textbf{if}\: \rho > 0: \nu_t \leftarrow \rho \nu_{t-1} + (1 - \rho)
                \lVert u_\perp \rVert^2,\: n_t \leftarrow \sqrt{\nu_t / (1 - \rho^t)}
                \:\textbf{else}\: n_t \leftarrow \lVert u_\perp \rVert \\
            &\hspace{5mm} \eta_r \leftarrow \sqrt{\pi/2}\, \sqrt{2 \gamma_t \lambda}\,
                \sqrt{(1 - \beta_1)^2 + \beta_1^2 (1 - \beta_2) / (1 + \beta_2)}
                \cdot (1 - \beta_1^t \:\text{if}\: \textit{inverse\_bias\_correction}) \\
            &\hspace{5mm} w' \leftarrow w_{t-1} - \eta_r\, r\, u_\perp / n_t \\
            &\hspace{5mm} w_t \leftarrow r\, w' / \lVert w' \rVert
                \qquad (\text{no weight decay; the norm stays } r) \\
            &\rule{110mm}{0.4pt}
        \end{aligned}

    With ρ = 0 the step is orthogonal to w_{t-1} and has length η_r r, so every row turns by exactly
    arctan(η_r). With ``nesterov`` the formula for η_r is taken at (β1, β2) = (β², β). Non-rotational tensors
    (1-D, or in groups with ``rotational=False``) take a plain `optimizers.lion.Lion` step with their group's
    weight decay.

    Args:
        params (iterable): parameters or dicts defining parameter groups; every key below can be set per
            group, and so can ``rotational`` (bool, default True: dim >= 2 tensors of the group rotate).
        lr (float, optional): learning rate γ; enters η_r as √γ (default: 1e-4).
        betas (Tuple[float, float], optional): (β1, β2) as in Lion (default: (0.9, 0.99)).
        weight_decay (float, optional): λ; for rotational tensors it only sets η_r (no decay is applied),
            for the others it is Lion's decoupled decay (default: 0.1).
        per_row (bool, optional): control the norm and angle of each output row (dim 0) separately;
            False treats the whole tensor as one vector (default: True).
        update_norm_decay (float, optional): ρ, decay of the EMA of ‖u_⊥‖²; 0 normalises every step
            exactly (default: 0.0).
        zero_mean (bool, optional): center rows (tensors) at their first step and every update
            (default: False).
        nesterov (bool, optional): single-β Nesterov look-ahead; requires betas[0] == betas[1]
            (default: False).
        inverse_bias_correction (bool, optional): multiply η_r (and plain Lion steps) by 1 - β1^t
            (default: False).
        foreach (bool, optional): use ``torch._foreach_*`` for the momentum, direction and plain Lion steps;
            None picks it when all parameters are on a device with foreach kernels (default: None).
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.1, *, per_row: bool = True, update_norm_decay: float = 0.0,
                 zero_mean: bool = False, nesterov: bool = False, inverse_bias_correction: bool = False,
                 foreach: Optional[bool] = None):
        check_lion_args(lr, betas, weight_decay, nesterov)
        if not 0.0 <= update_norm_decay < 1.0:
            raise ValueError(f"Invalid update_norm_decay: {update_norm_decay} (must be in [0, 1))")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, per_row=per_row,
                        update_norm_decay=update_norm_decay, zero_mean=zero_mean, nesterov=nesterov,
                        inverse_bias_correction=inverse_bias_correction, foreach=foreach, rotational=True)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lion_args(group["lr"], group["betas"], group["weight_decay"], group["nesterov"])
        if not 0.0 <= group["update_norm_decay"] < 1.0:
            raise ValueError(f"Invalid update_norm_decay: {group['update_norm_decay']} (must be in [0, 1))")
        if group["rotational"] and group["weight_decay"] == 0.0 and any(p.dim() >= 2 for p in group["params"]):
            raise ValueError("Invalid weight_decay: 0.0 in a rotational parameter group with matrices; LionAR's "
                             "angular step is sqrt(2*lr*weight_decay)-proportional, so they would never move. "
                             "Set weight_decay > 0 or rotational=False for that group.")

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("per_row", True)
            group.setdefault("update_norm_decay", 0.0)
            group.setdefault("zero_mean", False)
            group.setdefault("nesterov", False)
            group.setdefault("inverse_bias_correction", False)
            group.setdefault("foreach", None)
            group.setdefault("rotational", True)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            rot = dict(params=[], grads=[], exp_avgs=[], init_norms=[], update_norm_sqs=[], steps=[])
            plain = dict(params=[], grads=[], exp_avgs=[], steps=[])
            for p in group["params"]:
                if p.grad is None:
                    continue
                check_grad(p, "LionAR")
                rotational = group["rotational"] and p.dim() >= 2
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    if rotational:
                        state["init_norm"] = _initial_norm_(p, group["per_row"], group["zero_mean"])
                        state["update_norm_sq"] = torch.zeros_like(state["init_norm"])
                state["step"] += 1
                if rotational:
                    rot["init_norms"].append(state["init_norm"])
                    rot["update_norm_sqs"].append(state["update_norm_sq"])
                lists = rot if rotational else plain
                lists["params"].append(p)
                lists["grads"].append(p.grad)
                lists["exp_avgs"].append(state["exp_avg"])
                lists["steps"].append(state["step"])

            common = dict(lr=group["lr"], beta1=beta1, beta2=beta2, nesterov=group["nesterov"],
                          inverse_bias_correction=group["inverse_bias_correction"], foreach=group["foreach"])
            if plain["params"]:
                lion(plain["params"], plain["grads"], plain["exp_avgs"], plain["steps"],
                     weight_decay=group["weight_decay"], **common)
            if rot["params"]:
                lion_ar(rot["params"], rot["grads"], rot["exp_avgs"], rot["init_norms"], rot["update_norm_sqs"],
                        rot["steps"], weight_decay=group["weight_decay"], per_row=group["per_row"],
                        update_norm_decay=group["update_norm_decay"], zero_mean=group["zero_mean"], **common)
        return loss


def _row_dims(p: Tensor, per_row: bool) -> Optional[tuple[int, ...]]:
    return tuple(range(1, p.dim())) if per_row else None


def _rsum(x: Tensor, dims: Optional[tuple[int, ...]]) -> Tensor:
    """Sum over each row (keeping broadcastable dims), or over the whole tensor (0-d)."""
    return x.sum() if dims is None else x.sum(dim=dims, keepdim=True)


def _rnorm(x: Tensor, dims: Optional[tuple[int, ...]]) -> Tensor:
    return torch.linalg.vector_norm(x) if dims is None else torch.linalg.vector_norm(x, dim=dims, keepdim=True)


def _rmean(x: Tensor, dims: Optional[tuple[int, ...]]) -> Tensor:
    return x.mean() if dims is None else x.mean(dim=dims, keepdim=True)


def _initial_norm_(p: Tensor, per_row: bool, zero_mean: bool) -> Tensor:
    """r = ‖w_0‖ per row (shape [rows, 1, ...]) or per tensor (0-d); with ``zero_mean`` first center ``p``
    in place, keeping each row's norm (REQ ``center_rotational_weights``)."""
    dims = _row_dims(p, per_row)
    r = _rnorm(p, dims)
    if zero_mean:
        centered = p - _rmean(p, dims)
        p.copy_(centered * (r / _rnorm(centered, dims).clamp_min(torch.finfo(p.dtype).tiny)))
    return r.clone()


def lion_ar(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], init_norms: list[Tensor],
            update_norm_sqs: list[Tensor], steps: list[int], *, lr: float, beta1: float, beta2: float,
            weight_decay: float, per_row: bool = True, update_norm_decay: float = 0.0, zero_mean: bool = False,
            nesterov: bool = False, inverse_bias_correction: bool = False, foreach: Optional[bool] = None) -> None:
    """Functional LionAR for rotational tensors only (non-rotational ones go through `optimizers.lion.lion`).

    ``init_norms`` are the stored r = ‖w_0‖ (see `_initial_norm_`), ``update_norm_sqs`` the EMA ν of ‖u_⊥‖²
    (same shapes), ``steps`` the already-incremented update counts. See `LionAR` for the algorithm.
    """
    eta_r = lion_equilibrium_angular_update(lr, weight_decay, beta1, beta2, nesterov=nesterov)
    fn = _multi_tensor_lion_ar if resolve_foreach(foreach, params) else _single_tensor_lion_ar
    fn(params, grads, exp_avgs, init_norms, update_norm_sqs, steps, eta_r=eta_r, beta1=beta1, beta2=beta2,
       per_row=per_row, update_norm_decay=update_norm_decay, zero_mean=zero_mean, nesterov=nesterov,
       inverse_bias_correction=inverse_bias_correction)


def _rotational_step_(p: Tensor, u: Tensor, r: Tensor, nu: Tensor, t: int, *, eta_r: float, per_row: bool,
                      update_norm_decay: float, zero_mean: bool) -> None:
    """Rotate ``p`` (rows of norm ``r``) along the signed direction ``u``; updates ``p`` and ``nu`` in place.

    Per-row reductions have no ``torch._foreach`` form, so both paths share this per-tensor function.
    """
    dims = _row_dims(p, per_row)
    tiny = torch.finfo(p.dtype).tiny
    if zero_mean:
        u = u - _rmean(u, dims)                                        # u_t - mean(u_t)
    radial = _rsum(u * p, dims).div_((r * r).clamp_min(tiny))
    u_perp = torch.addcmul(u, p, radial, value=-1.0)                   # u_⊥ = u - w <u, w> / r²
    n2 = _rnorm(u_perp, dims).square_()                                # ‖u_⊥‖²
    if update_norm_decay > 0.0:
        nu.mul_(update_norm_decay).add_(n2, alpha=1.0 - update_norm_decay)   # ν_t
        n = (nu / (1.0 - update_norm_decay ** t)).sqrt_()              # n_t = √(ν_t / (1 - ρ^t))
    else:
        nu.copy_(n2)
        n = n2.sqrt_()                                                 # n_t = ‖u_⊥‖
    p.addcmul_(u_perp, r / n.clamp_min_(_EPS), value=-eta_r)           # w' = w - η_r r u_⊥ / n_t
    p.mul_(r / _rnorm(p, dims).clamp_min_(tiny))                       # w_t = r w' / ‖w'‖


def _single_tensor_lion_ar(params, grads, exp_avgs, init_norms, update_norm_sqs, steps, *, eta_r, beta1, beta2,
                           per_row, update_norm_decay, zero_mean, nesterov, inverse_bias_correction):
    for p, g, m, r, nu, t in zip(params, grads, exp_avgs, init_norms, update_norm_sqs, steps):
        u = lion_direction_(g, m, beta1, beta2, nesterov).sign_()      # u_t = sign(c_t); m_t
        eta = eta_r * inverse_bias_correction_factor(beta1, t) if inverse_bias_correction else eta_r
        _rotational_step_(p, u, r, nu, t, eta_r=eta, per_row=per_row, update_norm_decay=update_norm_decay,
                          zero_mean=zero_mean)


def _multi_tensor_lion_ar(params, grads, exp_avgs, init_norms, update_norm_sqs, steps, *, eta_r, beta1, beta2,
                          per_row, update_norm_decay, zero_mean, nesterov, inverse_bias_correction):
    for idx in group_indices_by_device_and_dtype(params).values():
        us = foreach_lion_direction_([grads[i] for i in idx], [exp_avgs[i] for i in idx], beta1, beta2, nesterov)
        torch._foreach_sign_(us)
        for i, u in zip(idx, us):
            t = steps[i]
            eta = eta_r * inverse_bias_correction_factor(beta1, t) if inverse_bias_correction else eta_r
            _rotational_step_(params[i], u, init_norms[i], update_norm_sqs[i], t, eta_r=eta, per_row=per_row,
                              update_norm_decay=update_norm_decay, zero_mean=zero_mean)
