"""Sharpness-aware minimisation (Foret et al. 2021) on the new task: the test of "flat minima forget less".

At every step, with ``g`` the step's gradient and ``rho = strength`` the radius, the weights are moved
to ``theta + e``, ``e = rho * g / |g|`` (the steepest ascent within the radius), the step's loss is
recomputed there on the same micro-batches, its gradient replaces ``g``, and the weights go back to
``theta`` before the optimizer steps with it. A step costs one more forward and backward pass.
"""

from __future__ import annotations

from typing import Any

import torch

from forgetting.hooks import TaskContext, TrainingHook, target_loss_sum
from forgetting.mitigations import register
from forgetting.mitigations.common import check_options, target_tokens


class SharpnessAware(TrainingHook):
    def __init__(self, radius: float):
        self.radius = radius
        self.micro_batches: list = []

    def before_backward(self, ctx: TaskContext, loss: torch.Tensor) -> torch.Tensor:
        self.micro_batches.append(ctx.micro_batch)
        return loss

    def after_backward(self, ctx: TaskContext) -> None:
        batches, self.micro_batches = self.micro_batches, []
        params = [p for p in ctx.model.parameters() if p.requires_grad and p.grad is not None]
        norm = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params))
        if not torch.isfinite(norm) or norm == 0:
            return
        with torch.no_grad():
            originals = [p.detach().clone() for p in params]  # restored by copy: theta + e - e is not theta in floats
            for p in params:
                p.add_(self.radius * p.grad / norm)
        tokens = sum(target_tokens(b) for b in batches)
        grads = [torch.zeros_like(p) for p in params]
        for batch in batches:
            loss = target_loss_sum(ctx.model, batch, params[0].device) / tokens
            for acc, g in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
                if g is not None:
                    acc += g
        with torch.no_grad():
            for p, original, g in zip(params, originals, grads):
                p.copy_(original)
                p.grad.copy_(ctx.accelerator.reduce(g, reduction="mean"))


@register("sam")
def make(strength: float, options: dict[str, Any]) -> TrainingHook:
    check_options("sam", options, {})
    return SharpnessAware(strength)
