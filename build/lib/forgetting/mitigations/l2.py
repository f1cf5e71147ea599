"""L2 towards the weights the task started from: the simplest regulariser against forgetting.

During the training of a task, the loss gets ``strength * sum_p ||theta_p - theta_p^start||^2`` over the
trainable parameters ``p``, where ``theta^start`` are the weights at the start of the task (the end of
the previous one). Its gradient is ``2 * strength * (theta - theta^start)``; it is added once per
optimizer step (``1 / grad_accum`` of it on each micro-batch).
"""

from __future__ import annotations

from typing import Any

import torch

from forgetting.errors import SpecError
from forgetting.hooks import TaskContext, TrainingHook
from forgetting.mitigations import register


class L2ToStart(TrainingHook):
    """The L2 penalty of the module docstring, with weight ``strength``."""

    def __init__(self, strength: float):
        self.strength = strength
        self.start: dict[str, torch.Tensor] = {}

    def before_task(self, ctx: TaskContext) -> None:
        self.start = {n: p.detach().clone() for n, p in ctx.model.named_parameters() if p.requires_grad}

    def before_backward(self, ctx: TaskContext, loss: torch.Tensor) -> torch.Tensor:
        params = dict(ctx.model.named_parameters())
        penalty = sum(((params[n] - start) ** 2).sum() for n, start in self.start.items())
        return loss + self.strength * penalty / ctx.grad_accum


@register("l2")
def make(strength: float, options: dict[str, Any]) -> TrainingHook:
    if options:
        raise SpecError("finetune.mitigation.options", f"l2 takes no options, got {', '.join(options)}")
    return L2ToStart(strength)
