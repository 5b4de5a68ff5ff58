"""Lion: EvoLved Sign Momentum, with the momentum options of the warmup paper.

Paper: Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", https://arxiv.org/abs/2302.06675
(Algorithm 2: sign of an interpolation of momentum and gradient, decoupled weight decay).
Related code: google/automl ``lion/lion_pytorch.py`` (the paper's reference), timm ``timm/optim/lion.py``
(same functional / ``_single_tensor`` / ``_multi_tensor`` layout as ``torch/optim/adamw.py``, which this
file follows; no code copied).

Momentum options from Kosson, Messmer & Jaggi, "Analyzing & Reducing the Need for Learning Rate Warmup
in GPT Training" (NeurIPS 2024, https://arxiv.org/abs/2410.23922), Fig. 5 panel 3: "increased momentum
β = 0.98, Nesterov momentum and an inverse bias correction for early momentum". Their equations are not
public; the forms here are reconstructed from the captions and not checked against the paper's PDF.

Choices (paper constants not public):
    * ``nesterov=True`` uses one β and requires ``betas[0] == betas[1]`` (a ``ValueError`` otherwise,
      rather than silently ignoring β2): ``m_t = β m_{t-1} + (1-β) g_t``, ``c_t = β m_t + (1-β) g_t``.
    * ``inverse_bias_correction`` multiplies the signed step (not the weight decay, not the momentum) by
      ``1 - β1^t``, where ``t`` counts this tensor's updates.

Deviations from Chen et al.: none with the default flags (``nesterov=False``,
``inverse_bias_correction=False``); the defaults lr 1e-4, betas (0.9, 0.99), weight_decay 0 are the paper's.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from optimizers._helpers import group_indices_by_device_and_dtype, resolve_foreach
from optimizers._lion_common import (check_lion_args, foreach_lion_direction_, gather_lion_group,
                                     inverse_bias_correction_factor, lion_direction_)

__all__ = ["Lion", "lion", "PRESETS"]

# Named variants as constructor keyword arguments (style guide item 25: presets are data).
PRESETS: dict[str, dict] = {
    # Kosson et al. 2024, Fig. 5 panel 3: "increased momentum β = 0.98, Nesterov momentum and an inverse
    # bias correction for early momentum" (shown there for LionAR; here on plain Lion for ablations).
    "lion_mom": {"betas": (0.98, 0.98), "nesterov": True, "inverse_bias_correction": True},
}


class Lion(torch.optim.Optimizer):
    r"""Lion (Chen et al. 2023) with decoupled weight decay and optional Nesterov momentum / inverse
    bias correction (Kosson et al. 2024).

    .. math::
        \begin{aligned}
            &\rule{110mm}{0.4pt} \\
            &\textbf{input}: \gamma \text{ (lr)}, \beta_1, \beta_2 \text{ (betas)}, \lambda
                \text{ (weight\_decay)}, \theta_0 \text{ (params)}, f(\theta) \text{ (objective)} \\
            &\textbf{initialize}: m_0 \leftarrow 0 \\
            &\rule{110mm}{0.4pt} \\
            &\textbf{for}\: t = 1 \:\textbf{to}\: \ldots \:\textbf{do} \\
            &\hspace{5mm} g_t \leftarrow \nabla_\theta f_t(\theta_{t-1}) \\
            &\hspace{5mm}\textbf{if}\: \textit{nesterov} \: (\beta = \beta_1 = \beta_2) \\
            &\hspace{10mm} m_t \leftarrow \beta m_{t-1} + (1 - \beta) g_t \\
            &\hspace{10mm} c_t \leftarrow \beta m_t + (1 - \beta) g_t \\
            &\hspace{5mm}\textbf{else} \\
            &\hspace{10mm} c_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
            &\hspace{10mm} m_t \leftarrow \beta_2 m_{t-1} + (1 - \beta_2) g_t \\
            &\hspace{5mm} u_t \leftarrow \mathrm{sign}(c_t) \\
            &\hspace{5mm} b_t \leftarrow 1 - \beta_1^t \:\textbf{if}\: \textit{inverse\_bias\_correction}
                \:\textbf{else}\: 1 \\
            &\hspace{5mm} \theta_t \leftarrow \theta_{t-1} (1 - \gamma \lambda) - \gamma b_t u_t \\
            &\rule{110mm}{0.4pt} \\
            &\textbf{return}\: \theta_t \\
            &\rule{110mm}{0.4pt}
        \end{aligned}

    Every coordinate moves by exactly ``lr`` (times ``b_t``) unless ``c_t`` is exactly zero, so
    ``‖Δθ‖ = γ b_t √(#nonzero c_t)`` apart from the decay. Chen et al. recommend an lr 3-10x smaller and a
    weight decay 3-10x larger than AdamW's.

    Args:
        params (iterable): parameters or dicts defining parameter groups; every key below can be set
            per group.
        lr (float, optional): learning rate γ (default: 1e-4).
        betas (Tuple[float, float], optional): (β1, β2): interpolation coefficient for the update
            direction and momentum decay (default: (0.9, 0.99)).
        weight_decay (float, optional): decoupled weight decay λ, applied as θ(1 - γλ) (default: 0.0).
        nesterov (bool, optional): single-β Nesterov look-ahead; requires betas[0] == betas[1]
            (default: False).
        inverse_bias_correction (bool, optional): multiply the step by 1 - β1^t (default: False).
        foreach (bool, optional): use the ``torch._foreach_*`` implementation; None picks it when all
            parameters are on a device with foreach kernels, as torch does (default: None).
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, *, nesterov: bool = False, inverse_bias_correction: bool = False,
                 foreach: Optional[bool] = None):
        check_lion_args(lr, betas, weight_decay, nesterov)
        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, nesterov=nesterov,
                        inverse_bias_correction=inverse_bias_correction, foreach=foreach)
        super().__init__(params, defaults)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
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
            lion(params, grads, exp_avgs, steps, lr=group["lr"], beta1=beta1, beta2=beta2,
                 weight_decay=group["weight_decay"], nesterov=group["nesterov"],
                 inverse_bias_correction=group["inverse_bias_correction"], foreach=group["foreach"])
        return loss


def lion(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], steps: list[int], *,
         lr: float, beta1: float, beta2: float, weight_decay: float, nesterov: bool = False,
         inverse_bias_correction: bool = False, foreach: Optional[bool] = None) -> None:
    """Functional Lion; ``steps`` are the already-incremented update counts of each tensor.

    See `Lion` for the algorithm.
    """
    fn = _multi_tensor_lion if resolve_foreach(foreach, params) else _single_tensor_lion
    fn(params, grads, exp_avgs, steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay,
       nesterov=nesterov, inverse_bias_correction=inverse_bias_correction)


def _single_tensor_lion(params, grads, exp_avgs, steps, *, lr, beta1, beta2, weight_decay, nesterov,
                        inverse_bias_correction):
    for p, g, m, t in zip(params, grads, exp_avgs, steps):
        if weight_decay != 0.0:
            p.mul_(1.0 - lr * weight_decay)                           # θ(1 - γλ)
        u = lion_direction_(g, m, beta1, beta2, nesterov).sign_()     # u_t = sign(c_t); m_t
        if inverse_bias_correction:
            u.mul_(inverse_bias_correction_factor(beta1, t))          # b_t u_t
        p.add_(u, alpha=-lr)                                          # θ_t = θ - γ b_t u_t


def _multi_tensor_lion(params, grads, exp_avgs, steps, *, lr, beta1, beta2, weight_decay, nesterov,
                       inverse_bias_correction):
    for idx in group_indices_by_device_and_dtype(params).values():
        ps = [params[i] for i in idx]
        gs = [grads[i] for i in idx]
        ms = [exp_avgs[i] for i in idx]
        if weight_decay != 0.0:
            torch._foreach_mul_(ps, 1.0 - lr * weight_decay)
        us = foreach_lion_direction_(gs, ms, beta1, beta2, nesterov)
        torch._foreach_sign_(us)
        if inverse_bias_correction:
            torch._foreach_mul_(us, [inverse_bias_correction_factor(beta1, steps[i]) for i in idx])
        torch._foreach_add_(ps, us, alpha=-lr)
