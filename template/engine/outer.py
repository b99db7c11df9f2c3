"""The DiLoCo outer optimizer: Nesterov SGD on the aggregated pseudo-gradient.

With Δ̄ the aggregate of the Δ_i = θ_r − θ_r,i (a *descent* direction's negative, like a gradient):

    m ← μ·m + Δ̄
    θ ← θ − lr·(Δ̄ + μ·m)        (Nesterov; plain momentum: θ ← θ − lr·m)

which is ``torch.optim.SGD(nesterov=True, dampening=0)`` applied with Δ̄ as the gradient. DiLoCo's
defaults are lr = 0.7, μ = 0.9.

Every rank applies the same step to the same θ and Δ̄ and must get the same bits, so each update
is computed in float64 from separate elementwise operations (no ``alpha=``/``addcmul`` forms, which
may be fused into an FMA on some CPUs and not on others) and cast back to the parameter's dtype. The
momentum buffers are part of the global state: checkpoint :meth:`state_dict` with the weights so a
joiner continues bit-identically.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["OuterOptimizer"]


class OuterOptimizer:
    def __init__(self, lr: float = 0.7, momentum: float = 0.9, nesterov: bool = True):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"outer lr must be a positive finite number, got {lr!r}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"outer momentum must be in [0, 1), got {momentum!r}")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.step_count = 0
        self.buffers: dict[str, torch.Tensor] = {}  # name -> momentum, same dtype/shape as the param

    @torch.no_grad()
    def step(self, params: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> None:
        """Update ``params`` (e.g. ``dict(model.named_parameters())``) in place with pseudo-gradient
        ``delta``; both must have exactly the same names and shapes. Missing buffers start at 0."""
        if set(params) != set(delta):
            missing, extra = sorted(set(params) - set(delta)), sorted(set(delta) - set(params))
            raise ValueError(f"delta names differ from params (missing {missing}, unexpected {extra})")
        for name in sorted(params):
            p, d = params[name], delta[name]
            if d.shape != p.shape:
                raise ValueError(f"{name}: delta shape {list(d.shape)} differs from param {list(p.shape)}")
            buf = self.buffers.get(name)
            if buf is not None and buf.shape != p.shape:
                raise ValueError(f"{name}: momentum shape {list(buf.shape)} differs from param {list(p.shape)}")
            d64 = d.detach().to(p.device, torch.float64)
            m64 = d64 if buf is None else buf.to(p.device, torch.float64) * self.momentum + d64
            # Store m in the param's dtype and use the stored value, so a restored buffer gives
            # the same next step as the live one.
            m = m64.to(p.dtype)
            m64 = m.to(torch.float64)
            update = d64 + m64 * self.momentum if self.nesterov else m64
            p.copy_((p.to(torch.float64) - update * self.lr).to(p.dtype))
            self.buffers[name] = m
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        """``{"lr", "momentum", "nesterov", "step", "buffers": {name: tensor}}`` (buffers on CPU)."""
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "step": self.step_count,
            "buffers": {k: v.detach().to("cpu").clone() for k, v in sorted(self.buffers.items())},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        required = {"lr", "momentum", "nesterov", "step", "buffers"}
        if set(state) != required:
            raise ValueError(f"outer optimizer state must have exactly {sorted(required)}")
        step = state["step"]
        if not (isinstance(step, int) and not isinstance(step, bool) and step >= 0):
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        fresh = OuterOptimizer(state["lr"], state["momentum"], state["nesterov"])  # validates hyperparameters
        buffers = {}
        for name, t in state["buffers"].items():
            if not isinstance(t, torch.Tensor) or not t.is_floating_point():
                raise ValueError(f"momentum buffer {name!r} must be a floating-point tensor")
            buffers[name] = t.detach().clone()
        self.lr, self.momentum, self.nesterov = fresh.lr, fresh.momentum, fresh.nesterov
        self.step_count = step
        self.buffers = buffers
