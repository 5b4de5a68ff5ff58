"""LionA: Lion with an exactly controlled per-tensor ℓ2 update norm.

Paper: Kosson, Messmer & Jaggi, "Analyzing & Reducing the Need for Learning Rate Warmup in GPT Training"
(NeurIPS 2024, https://arxiv.org/abs/2410.23922). A third-party summary (liner.com review) describes LionA
as "a modified Lion optimizer that precisely controls the L2 update norm", used to separate the size of the
update from the gradient's magnitude. The finding: controlling the ℓ2 norm alone does *not* remove the need
for warmup, and the momentum recipe that helps LionAR (Fig. 5 panel 3) "does not apply to LionA" (panel 4,
caption wording). The code was not released and the update equation is not public: the form below is
reconstructed (Lion's step with its norm pinned), not checked against the paper's PDF.
Base optimizer: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms",
https://arxiv.org/abs/2302.06675. Layout follows ``torch/optim/adamw.py`` and timm ``lion.py``.

A Lion step already has ‖sign(c)‖ = √numel unless some entries of c are exactly zero (at the first step c is
the scaled gradient, so every exact zero of the gradient is one). LionA renormalises u so that
‖γ s u‖ = γ s √numel holds at every step, for any gradient magnitude.

Choices (paper constants not public):
    * ``scale`` s = 1.0 by default: with no zero entries LionA then takes exactly Lion's step, so Lion's lr
      and weight-decay recipes carry over. The preset ``lion_a_adamw_rms`` sets
      s = √((1-β1)/(1+β1)) = 0.229 (β1 = 0.9), the RMS of AdamW's update in steady state when gradients
      are noise (E[m_t²] → σ²(1-β1)/(1+β1) with v ≈ σ²), so that γ is comparable with AdamW's lr.
    * ``exact_norm=True`` by default: u is rescaled by √numel/‖u‖ every step (a no-op when no entry is
      zero). If every entry of c is zero the step is zero; no norm can be restored from nothing.
    * Weight decay is decoupled and Lion's: θ(1 - γλ), not scaled by s.
    * ``nesterov`` / ``inverse_bias_correction``: as in `optimizers.lion.Lion`; the factor 1 - β1^t
      multiplies the update, so with it on the norm is γ s (1 - β1^t) √numel.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from optimizers._helpers import group_indices_by_device_and_dtype, resolve_foreach
from optimizers._lion_common import (check_lion_args, foreach_lion_direction_, gather_lion_group,
                                     inverse_bias_correction_factor, lion_direction_)

__all__ = ["LionA", "lion_a", "PRESETS"]

PRESETS: dict[str, dict] = {
    # s = RMS of AdamW's steady-state update for noise gradients with β1 = 0.9.
    "lion_a_adamw_rms": {"scale": math.sqrt((1 - 0.9) / (1 + 0.9))},
    # Kosson et al. 2024, Fig. 5 panel 4: the LionAR momentum recipe "does not apply to LionA".
    "lion_a_mom": {"betas": (0.98, 0.98), "nesterov": True, "inverse_bias_correction": True},
}


class LionA(torch.optim.Optimizer):
    r"""Lion whose per-tensor update has ℓ2 norm exactly γ·s·√numel (Kosson et al. 2024, reconstructed).

    .. math::
        \begin{aligned}
            &\rule{110mm}{0.4pt} \\
            &\textbf{input}: \gamma \text{ (lr)}, \beta_1, \beta_2 \text{ (betas)}, \lambda
                \text{ (weight\_decay)}, s \text{ (scale)}, \theta_0 \in \mathbb{R}^n \text{ (params)},
                f(\theta) \text{ (objective)} \\
            &\textbf{initialize}: m_0 \leftarrow 0 \\
            &\rule{110mm}{0.4pt} \\
            &\textbf{for}\: t = 1 \:\textbf{to}\: \ldots \:\textbf{do} \\
            &\hspace{5mm} g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \\
            &\hspace{5mm} c_t, m_t \leftarrow \text{Lion direction and momentum (see Lion; Nesterov
                form if } \textit{nesterov}) \\
            &\hspace{5mm} u_t \leftarrow \mathrm{sign}(c_t) \\
            &\hspace{5mm}\textbf{if}\: \textit{exact\_norm} \:\textbf{and}\: u_t \neq 0:
                \: u_t \leftarrow u_t \sqrt{n} / \lVert u_t \rVert_2 \\
            &\hspace{5mm} b_t \leftarrow 1 - \beta_1^t \:\textbf{if}\: \textit{inverse\_bias\_correction}
                \:\textbf{else}\: 1 \\
            &\hspace{5mm} \theta_t \leftarrow \theta_{t-1} (1 - \gamma \lambda) - \gamma s b_t u_t
                \qquad (\lVert \gamma s b_t u_t \rVert_2 = \gamma s b_t \sqrt{n}) \\
            &\rule{110mm}{0.4pt} \\
            &\textbf{return}\: \theta_t \\
            &\rule{110mm}{0.4pt}
        \end{aligned}

    Args:
        params (iterable): parameters or dicts defining parameter groups; every key below can be set
            per group.
        lr (float, optional): learning rate γ (default: 1e-4).
        betas (Tuple[float, float], optional): (β1, β2) as in Lion (default: (0.9, 0.99)).
        weight_decay (float, optional): decoupled weight decay λ, applied as θ(1 - γλ) (default: 0.0).
        scale (float, optional): s, the per-coordinate RMS of the update in units of lr (default: 1.0).
        exact_norm (bool, optional): renormalise u to norm √numel when some entries of c are exactly zero
            (default: True).
        nesterov (bool, optional): single-β Nesterov look-ahead; requires betas[0] == betas[1]
            (default: False).
        inverse_bias_correction (bool, optional): multiply the update by 1 - β1^t (default: False).
        foreach (bool, optional): use the ``torch._foreach_*`` implementation; None picks it when all
            parameters are on a device with foreach kernels, as torch does (default: None).
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, scale: float = 1.0, exact_norm: bool = True,
                 nesterov: bool = False, inverse_bias_correction: bool = False, foreach: Optional[bool] = None):
        check_lion_args(lr, betas, weight_decay, nesterov)
        if not scale > 0.0:
            raise ValueError(f"Invalid scale: {scale} (must be > 0)")
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, scale=scale, exact_norm=exact_norm,
                        nesterov=nesterov, inverse_bias_correction=inverse_bias_correction, foreach=foreach)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("scale", 1.0)
            group.setdefault("exact_norm", True)
            group.setdefault("nesterov", False)
            group.setdefault("inverse_bias_correction", False)
            group.setdefault("foreach", None)

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, exp_avgs, steps = gather_lion_group(self, group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            lion_a(params, grads, exp_avgs, steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                   weight_decay=group["weight_decay"], scale=group["scale"], exact_norm=group["exact_norm"],
                   nesterov=group["nesterov"], inverse_bias_correction=group["inverse_bias_correction"],
                   foreach=group["foreach"])
        return loss


def lion_a(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], steps: list[int], *,
           lr: float, beta1: float, beta2: float, weight_decay: float, scale: float = 1.0,
           exact_norm: bool = True, nesterov: bool = False, inverse_bias_correction: bool = False,
           foreach: Optional[bool] = None) -> None:
    """Functional LionA; ``steps`` are the already-incremented update counts of each tensor.

    See `LionA` for the algorithm.
    """
    fn = _multi_tensor_lion_a if resolve_foreach(foreach, params) else _single_tensor_lion_a
    fn(params, grads, exp_avgs, steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, scale=scale,
       exact_norm=exact_norm, nesterov=nesterov, inverse_bias_correction=inverse_bias_correction)


def _step_scale(scale: float, beta1: float, step: int, inverse_bias_correction: bool) -> float:
    return scale * (inverse_bias_correction_factor(beta1, step) if inverse_bias_correction else 1.0)  # s b_t


def _single_tensor_lion_a(params, grads, exp_avgs, steps, *, lr, beta1, beta2, weight_decay, scale, exact_norm,
                          nesterov, inverse_bias_correction):
    for p, g, m, t in zip(params, grads, exp_avgs, steps):
        if weight_decay != 0.0:
            p.mul_(1.0 - lr * weight_decay)                           # θ(1 - γλ)
        u = lion_direction_(g, m, beta1, beta2, nesterov).sign_()     # u_t = sign(c_t); m_t
        if exact_norm:
            # u_t √n / ‖u_t‖; a nonzero sign vector has ‖u_t‖ >= 1, so the clamp only guards u_t = 0.
            factor = torch.linalg.vector_norm(u).clamp_min_(1.0).reciprocal_().mul_(math.sqrt(u.numel()))
            u.mul_(factor)
        s = _step_scale(scale, beta1, t, inverse_bias_correction)
        if s != 1.0:
            u.mul_(s)                                                 # s b_t u_t
        p.add_(u, alpha=-lr)                                          # θ_t = θ - γ s b_t u_t


def _multi_tensor_lion_a(params, grads, exp_avgs, steps, *, lr, beta1, beta2, weight_decay, scale, exact_norm,
                         nesterov, inverse_bias_correction):
    for idx in group_indices_by_device_and_dtype(params).values():
        ps = [params[i] for i in idx]
        gs = [grads[i] for i in idx]
        ms = [exp_avgs[i] for i in idx]
        if weight_decay != 0.0:
            torch._foreach_mul_(ps, 1.0 - lr * weight_decay)
        us = foreach_lion_direction_(gs, ms, beta1, beta2, nesterov)
        torch._foreach_sign_(us)
        if exact_norm:
            factors = list(torch._foreach_norm(us))
            torch._foreach_clamp_min_(factors, 1.0)
            torch._foreach_reciprocal_(factors)
            torch._foreach_mul_(factors, [math.sqrt(u.numel()) for u in us])
            torch._foreach_mul_(us, factors)
        ss = [_step_scale(scale, beta1, steps[i], inverse_bias_correction) for i in idx]
        if any(s != 1.0 for s in ss):
            torch._foreach_mul_(us, ss)
        torch._foreach_add_(ps, us, alpha=-lr)
