"""Pieces shared by the Lion family (`Lion`, `LionA`, `LionAR`): argument checks, the momentum /
direction update in its single-tensor and ``torch._foreach`` forms, and the foreach dispatch helpers.

Direction (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2,
https://arxiv.org/abs/2302.06675):

    c_t = β1 m_{t-1} + (1 - β1) g_t        u_t = sign(c_t)        m_t = β2 m_{t-1} + (1 - β2) g_t

Nesterov form with one β (the "high momentum + Nesterov" variant of Kosson, Messmer & Jaggi 2024,
https://arxiv.org/abs/2410.23922, Fig. 5 panel 3; equations reconstructed, the paper's are not public):

    m_t = β m_{t-1} + (1 - β) g_t           c_t = β m_t + (1 - β) g_t   (= β² m_{t-1} + (1 - β²) g_t)

so the Nesterov form is exactly Lion with ``(β1, β2) = (β², β)``; `lion_ar.lion_equilibrium_angular_update`
uses that identity. Both forms are written with ``lerp`` so the single-tensor and foreach paths run the
same elementwise arithmetic.
"""
from __future__ import annotations


import torch
from torch import Tensor


def check_lion_args(lr: float, betas: tuple[float, float], weight_decay: float, nesterov: bool) -> None:
    """Raise ``ValueError`` naming the argument for invalid Lion-family hyperparameters."""
    if not lr > 0.0:
        raise ValueError(f"Invalid lr: {lr} (must be > 0)")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas} (need two values)")
    for i, b in enumerate(betas):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"Invalid betas[{i}]: {b} (must be in [0, 1))")
    if not weight_decay >= 0.0:
        raise ValueError(f"Invalid weight_decay: {weight_decay} (must be >= 0)")
    if nesterov and betas[0] != betas[1]:
        raise ValueError(f"Invalid betas for nesterov=True: {betas}; the Nesterov form uses one momentum "
                         f"coefficient, pass betas=(beta, beta)")


def inverse_bias_correction_factor(beta1: float, step: int) -> float:
    """``1 - β1^t``: the factor Adam-style bias correction divides by, here multiplied onto the step."""
    return 1.0 - beta1 ** step


def lion_direction_(grad: Tensor, exp_avg: Tensor, beta1: float, beta2: float, nesterov: bool) -> Tensor:
    """Return the interpolated direction ``c_t`` (not yet signed) and update ``exp_avg`` in place."""
    if nesterov:
        exp_avg.lerp_(grad, 1.0 - beta2)                    # m_t = β m_{t-1} + (1-β) g_t
        return torch.lerp(exp_avg, grad, 1.0 - beta1)       # c_t = β m_t + (1-β) g_t
    c = torch.lerp(exp_avg, grad, 1.0 - beta1)              # c_t = β1 m_{t-1} + (1-β1) g_t
    exp_avg.lerp_(grad, 1.0 - beta2)                        # m_t = β2 m_{t-1} + (1-β2) g_t
    return c


def foreach_lion_direction_(grads: list[Tensor], exp_avgs: list[Tensor], beta1: float, beta2: float,
                            nesterov: bool) -> list[Tensor]:
    """`lion_direction_` over tensor lists with ``torch._foreach_*`` (same arithmetic, fewer launches)."""
    if nesterov:
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta2)
        return list(torch._foreach_lerp(exp_avgs, grads, 1.0 - beta1))
    c = list(torch._foreach_lerp(exp_avgs, grads, 1.0 - beta1))
    torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta2)
    return c


def gather_lion_group(optimizer: torch.optim.Optimizer, group: dict) -> tuple[list, list, list, list]:
    """Params with a gradient in ``group``, their grads, momenta (created on first use) and step counts
    (incremented here): what ``lion`` / ``lion_a`` take."""
    from optimizers._helpers import check_grad
    params, grads, exp_avgs, steps = [], [], [], []
    for p in group["params"]:
        if p.grad is None:
            continue
        check_grad(p, type(optimizer).__name__)
        state = optimizer.state[p]
        if len(state) == 0:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        params.append(p)
        grads.append(p.grad)
        exp_avgs.append(state["exp_avg"])
        steps.append(state["step"])
    return params, grads, exp_avgs, steps
