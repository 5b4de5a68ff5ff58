r"""AdamW in PyTorch's formulation, with the "no momentum bias correction" ablation as a flag.

Paper: Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019,
https://arxiv.org/abs/1711.05101 (Adam: Kingma & Ba, https://arxiv.org/abs/1412.6980).

Agrees with ``torch.optim.AdamW`` (``pytorch/pytorch:torch/optim/adamw.py``; its single-tensor, foreach
and fused paths share one set of equations). The decay is multiplied by the lr, θ ← θ(1 − γλ), and is
applied before the moments. ε is added after √v is bias-corrected. Kosson, Messmer & Jaggi (NeurIPS 2024,
https://arxiv.org/abs/2410.23922) call this "AdamW, PyTorch variant" and use it as their Algorithm 1.
``tests/optimizers/test_adamw.py`` checks it against ``torch.optim.AdamW`` on a tiny BERT for 100 steps.

Variants:
    - ``bias_correction=False`` removes only the *momentum* bias correction: it uses m_t where torch
      uses m_t / (1 − β1^t). The second-moment correction stays. Kosson et al. name this correction
      as one of three reasons why early AdamW updates are too large (the class docstring
      gives the algebra). Its exact setup in their paper is unverified here: the PDF was not
      available, only secondary descriptions of it.

Implementations (one set of equations; ``fused`` / ``foreach`` pick one per parameter group):
    - fused: the C++ multi-tensor kernel ``groupbert::fused_adamw_`` (``custom_ops/fused_optim.py``,
      ``csrc/fused_optim.cpp``), one call per group, for dense contiguous float32/float64 CPU tensors.
      It is the default where the library is built (``GROUPBERT_CUSTOM_OPS``). It performs the
      operations of ``_single_tensor_adamw`` in the same order, so results agree with it to ~1 ulp per
      step; it is about as fast as ``torch.optim.AdamW(fused=True)`` on CPU. There is no CUDA kernel.
    - foreach: ``torch._foreach_*`` calls per (device, dtype) bucket; the default on CUDA.
    - single-tensor: a loop over the tensors, the readable reference; the CPU fallback.

Deviations from ``torch.optim.AdamW``:
    - No ``amsgrad``, ``capturable`` or ``differentiable``. ``fused`` is the project's CPU kernel above
      (torch's fused AdamW is a different kernel with the same equations). ``fused=None`` means "fused
      where possible", where torch defaults to not fused.
    - ``lr`` must be a Python number > 0. torch also accepts 0 and tensors.
    - :meth:`AdamW.load_state_dict` keeps this optimizer's ``fused`` and ``foreach`` settings instead of
      taking them from the checkpoint (the state itself is the same for every path).
    - Complex parameters are rejected.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import Tensor

from optimizers._helpers import (bucket_by_device_and_dtype, check_adam_hyperparameters, check_fused_foreach,
                                 default_foreach, init_adam_group, load_state_dict_keeping_implementation,
                                 steps_to_tensors, use_fused)

__all__ = ["AdamW", "adamw"]



class AdamW(torch.optim.Optimizer):
    r"""AdamW with decoupled, lr-scaled weight decay (torch's variant) and optional momentum bias correction.

    .. math::
        \begin{aligned}
            &\textbf{input}: \gamma \text{ (lr)},\ \beta_1, \beta_2 \text{ (betas)},\ \theta_0 \text{ (params)},
                \ f(\theta) \text{ (objective)},\ \epsilon,\ \lambda \text{ (weight decay)} \\
            &\textbf{initialize}: m_0 \leftarrow 0,\ v_0 \leftarrow 0 \\
            &\textbf{for}\ t = 1, 2, \ldots\ \textbf{do} \\
            &\quad g_t \leftarrow \nabla_\theta f_t(\theta_{t-1})
                \quad (-\nabla_\theta f_t(\theta_{t-1}) \text{ if maximize}) \\
            &\quad \theta_t \leftarrow \theta_{t-1}(1 - \gamma\lambda) \\
            &\quad m_t \leftarrow \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
            &\quad v_t \leftarrow \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
            &\quad \hat m_t \leftarrow m_t / (1 - \beta_1^t)
                \quad (\hat m_t \leftarrow m_t \text{ if not bias\_correction}) \\
            &\quad \hat v_t \leftarrow v_t / (1 - \beta_2^t) \\
            &\quad \theta_t \leftarrow \theta_t - \gamma\, \hat m_t / (\sqrt{\hat v_t} + \epsilon) \\
            &\textbf{return}\ \theta_t
        \end{aligned}

    The step counter t is kept per parameter. A parameter whose gradient is None is skipped and its t
    does not advance.

    Why ``bias_correction=False`` (Kosson, Messmer & Jaggi 2024, arXiv 2410.23922; the derivation
    follows). Take zero-mean gradient noise of variance σ² per coordinate, with
    v̂ ≈ σ². Then
    E[m̂_t²]/σ² = (1 − β1)(1 + β1^t) / ((1 + β1)(1 − β1^t)). This is 1 at t = 1 and tends to
    (1 − β1)/(1 + β1). For β1 = 0.9, the RMS update falls from 1 to 0.23: the first updates are up to
    √((1 + β1)/(1 − β1)) ≈ 4.4× larger than in steady state, even when the gradient carries no signal.
    This happens just when the weights are fresh from initialisation. Without the momentum correction,
    E[m_t²]/σ² = (1 − β1)(1 − β1^{2t})/(1 + β1). That rises from (1 − β1)² to the same limit: a
    built-in warmup of about 1/(1 − β1) steps. On the first step, |Δθ| = γ(1 − β1) per coordinate
    instead of γ. The v correction must stay. Without it √v_1 = √(1 − β2)|g_1|, and the first steps
    would be about 1/√(1 − β2) ≈ 32× too large.

    Args:
        params: parameters to optimize, or dicts defining parameter groups. A group may override any of
            the hyperparameters below.
        lr: learning rate γ (default: 1e-3).
        betas: coefficients (β1, β2) of the running averages of the gradient and its square
            (default: (0.9, 0.999)).
        eps: ε added to √v̂ for numerical stability (default: 1e-8).
        weight_decay: decoupled weight decay λ. Each step multiplies the parameters by 1 − γλ
            (default: 1e-2).
        bias_correction: divide m by 1 − β1^t. False gives the Kosson et al. ablation; v's correction
            is always applied (default: True).
        foreach: use the ``torch._foreach_*`` implementation. None picks it when every parameter is a
            CUDA tensor, as torch does (default: None).
        maximize: maximize the objective instead of minimizing it (default: False).
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
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        bias_correction: bool = True,
        foreach: Optional[bool] = None,
        maximize: bool = False,
        fused: Optional[bool] = None,
    ):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, foreach=foreach, maximize=maximize, fused=fused)
        check_adam_hyperparameters(defaults)
        check_fused_foreach(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_adam_hyperparameters(group)  # group overrides are validated too
        check_fused_foreach(group)
        # fused=True fails here, not at the first step; fused=None builds/loads the library now, not
        # inside a step that torch.compile may be tracing
        use_fused(group["fused"], group["foreach"], group["params"], type(self).__name__)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but the groups keep this optimizer's ``fused`` and ``foreach`` settings."""
        load_state_dict_keeping_implementation(self, state_dict)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("bias_correction", True)
            group.setdefault("foreach", None)
            group.setdefault("maximize", False)
            group.setdefault("fused", None)
        steps_to_tensors(self.state)

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
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, state_steps = self._group_tensors(group)
            if not params:
                continue
            beta1, beta2 = group["betas"]
            fused = use_fused(group["fused"], group["foreach"], params + grads, type(self).__name__)
            adamw(params, grads, exp_avgs, exp_avg_sqs, state_steps, foreach=group["foreach"], fused=fused,
                  lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                  weight_decay=group["weight_decay"], bias_correction=group["bias_correction"],
                  maximize=group["maximize"])
        return loss


def adamw(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    state_steps: list[Tensor],
    *,
    foreach: Optional[bool] = None,
    fused: bool = False,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    bias_correction: bool = True,
    maximize: bool = False,
) -> None:
    """Functional AdamW (see :class:`AdamW`). Updates ``params``, ``exp_avgs``, ``exp_avg_sqs`` and
    ``state_steps`` in place; ``grads`` are left untouched. ``fused=True`` calls the C++ kernel (the
    tensors must qualify; :meth:`AdamW.step` decides per group)."""
    if fused:
        from custom_ops.fused_optim import fused_adamw_
        fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2,
                     eps=eps, weight_decay=weight_decay, bias_correction=bias_correction, maximize=maximize)
        return
    if foreach is None:
        foreach = default_foreach(params)
    impl = _multi_tensor_adamw if foreach else _single_tensor_adamw
    impl(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
         weight_decay=weight_decay, bias_correction=bias_correction, maximize=maximize)


def _single_tensor_adamw(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                         exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *, lr: float, beta1: float,
                         beta2: float, eps: float, weight_decay: float, bias_correction: bool,
                         maximize: bool) -> None:
    """The readable spec: one tensor at a time, in the order of the class docstring's equations."""
    for param, grad, exp_avg, exp_avg_sq, step_t in zip(params, grads, exp_avgs, exp_avg_sqs, state_steps):
        if maximize:
            grad = -grad
        step_t += 1
        t = step_t.item()  # host tensor: no device sync
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)  # θ_t = θ_{t-1}(1 - γλ), before the moments
        exp_avg.lerp_(grad, 1 - beta1)  # m_t
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v_t
        bias_correction1 = 1 - beta1 ** t if bias_correction else 1.0
        bias_correction2 = 1 - beta2 ** t
        denom = (exp_avg_sq.sqrt() / bias_correction2 ** 0.5).add_(eps)  # √v̂_t + ε
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)  # θ_t -= γ m̂_t / (√v̂_t + ε)


def _multi_tensor_adamw(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                        exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *, lr: float, beta1: float,
                        beta2: float, eps: float, weight_decay: float, bias_correction: bool,
                        maximize: bool) -> None:
    """The same arithmetic as :func:`_single_tensor_adamw`, one ``torch._foreach_*`` call per line,
    per (device, dtype) bucket."""
    for dev_params, dev_grads, dev_exp_avgs, dev_exp_avg_sqs, dev_steps in bucket_by_device_and_dtype(
            [params, grads, exp_avgs, exp_avg_sqs, state_steps]):
        if maximize:
            dev_grads = torch._foreach_neg(dev_grads)
        torch._foreach_add_(dev_steps, 1)
        ts = [s.item() for s in dev_steps]
        if weight_decay != 0:
            torch._foreach_mul_(dev_params, 1 - lr * weight_decay)  # θ_t = θ_{t-1}(1 - γλ)
        torch._foreach_lerp_(dev_exp_avgs, dev_grads, 1 - beta1)  # m_t
        torch._foreach_mul_(dev_exp_avg_sqs, beta2)  # v_t
        torch._foreach_addcmul_(dev_exp_avg_sqs, dev_grads, dev_grads, 1 - beta2)
        step_sizes = [-lr / (1 - beta1 ** t) if bias_correction else -lr for t in ts]
        denom = torch._foreach_sqrt(dev_exp_avg_sqs)  # √v̂_t + ε
        torch._foreach_div_(denom, [(1 - beta2 ** t) ** 0.5 for t in ts])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(dev_params, dev_exp_avgs, denom, step_sizes)  # θ_t -= γ m̂_t / (√v̂_t + ε)
