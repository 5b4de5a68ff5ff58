"""Update-size metrics: how far one optimizer step moves the weights and the representations.

Kosson, Messmer & Jaggi, "Analyzing & Reducing the Need for Learning Rate Warmup in GPT Training"
(NeurIPS 2024, arXiv 2410.23922) compare optimizers by three measures of an update ΔW = W_{t+1} − W_t:

    ℓ2 update norm           ‖ΔW‖₂ (per tensor; the model total is the root of the summed squares)
    angular update           θ = arccos(⟨W_t, W_{t+1}⟩ / (‖W_t‖ ‖W_{t+1}‖)), per tensor (flattened)
    relative representation  RRC = ‖ΔW X‖_F / ‖W_t X‖_F for a linear layer y = W x + b, on the inputs X
    change                   of the current batch (the layer's bias is left out: it does not scale with X)

Usage: ``m = UpdateMetrics(model, every=N)``; ``m.arm(step)`` before the step's forward passes (the
linear layers' inputs of the last micro-batch are cached), ``m.before_update()`` just before
``optimizer.step()``, ``record = m.after_update()`` after it. Between armed steps nothing is hooked or
copied, so the cost is paid every N steps only. RRC uses ``max_rows`` evenly spaced rows (tokens) of each
layer's input: the MLM decoder alone would otherwise cost as much as the forward pass.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class UpdateMetrics:
    def __init__(self, model: nn.Module, every: int, max_rows: int = 256, per_tensor: bool = True):
        if every <= 0:
            raise ValueError(f"every must be > 0, got {every}")
        self.model, self.every, self.max_rows, self.per_tensor = model, every, max_rows, per_tensor
        self._names = {}
        for name, p in model.named_parameters():
            if p.requires_grad and id(p) not in self._names:
                self._names[id(p)] = name
        self._params = {name: p for p, name in ((p, self._names.get(id(p))) for p in model.parameters()) if name}
        self._linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        self._inputs: dict[str, torch.Tensor] = {}
        self._hooks: list = []
        self._before: dict[str, torch.Tensor] | None = None

    def arm(self, step: int) -> bool:
        """Start capturing if the coming update (number ``step``, counted from 1) is measured."""
        if step % self.every:
            return False
        for name, module in self._linears.items():
            self._hooks.append(module.register_forward_hook(self._capture(name)))
        return True

    def _capture(self, name: str):
        def hook(module, inputs, output):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            if x.shape[0] > self.max_rows:  # a fixed, evenly spaced subset keeps the cost bounded
                x = x[torch.linspace(0, x.shape[0] - 1, self.max_rows, device=x.device).long()]
            self._inputs[name] = x
        return hook

    @property
    def armed(self) -> bool:
        return bool(self._hooks)

    def before_update(self) -> None:
        if not self.armed:
            return
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._before = {name: p.detach().clone() for name, p in self._params.items()}

    @torch.no_grad()
    def after_update(self) -> dict:
        if self._before is None:
            return {}
        record, total_sq, angles, rrcs = {}, 0.0, [], []
        for name, p in self._params.items():
            w0, w1 = self._before[name].float(), p.detach().float()
            delta = w1 - w0
            dn = float(delta.norm())
            total_sq += dn * dn
            if p.dim() < 2:
                continue
            n0, n1 = float(w0.norm()), float(w1.norm())
            cos = float((w0 * w1).sum()) / (n0 * n1) if n0 > 0 and n1 > 0 else 1.0
            angle = math.acos(max(-1.0, min(1.0, cos)))
            angles.append(angle)
            if self.per_tensor:
                record[f"update_norm/{name}"] = dn
                record[f"update_angle/{name}"] = angle
        for name, module in self._linears.items():
            x = self._inputs.get(name)
            wname = self._names.get(id(module.weight))
            if x is None or wname is None:
                continue
            w0 = self._before[wname].to(x.dtype)
            base = float(F.linear(x, w0).norm())
            change = float(F.linear(x, module.weight.detach().to(x.dtype) - w0).norm())
            rrc = change / base if base > 0 else 0.0
            rrcs.append(rrc)
            if self.per_tensor:
                record[f"update_rrc/{name}"] = rrc
        record["update_norm"] = math.sqrt(total_sq)
        if angles:
            record["update_angle_mean"] = sum(angles) / len(angles)
            record["update_angle_max"] = max(angles)
        if rrcs:
            record["update_rrc_mean"] = sum(rrcs) / len(rrcs)
            record["update_rrc_max"] = max(rrcs)
        self._before, self._inputs = None, {}
        return record
