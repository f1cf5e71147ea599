"""Gradient projection against the earlier tasks (A-GEM, Chaudhry et al. 2019), in a part of the model,
and its matched random control: the causal test of "gradient conflict causes forgetting".

At every step a reference gradient ``r`` is computed on ``memory_batch`` examples of the earlier tasks
(a seeded memory of ``memory_size`` of their examples), restricted to the parameters of ``parts``
(``attention``, ``mlp`` or ``all``). Where the new task's gradient ``g`` (on the same parameters)
conflicts with it, ``g . r < 0``, a share ``strength`` of the conflicting component is removed::

    g <- g - strength * (g . r / r . r) * r          (strength 1: A-GEM; then g . r = 0 afterwards)

A gradient that does not conflict is left unchanged. The **control** (``control: true``) removes the
same amount of gradient in a random direction instead: with ``c = strength * |g . r| / |r|`` the norm
the projection would have removed, and ``u`` a random unit vector over the same parameters (drawn
afresh each step), ``g <- g - c * sign(g . u) * u``, at the same steps. If conflict with the earlier
tasks' gradient is what makes a step forget, the projection must forget less than its control.

A step costs one more forward and backward pass (the reference gradient), on ``memory_batch`` examples.
"""

from __future__ import annotations

from typing import Any

import torch

from forgetting.hooks import TaskContext, TrainingHook
from forgetting.mitigations import register
from forgetting.mitigations.common import (
    check_options,
    check_strength,
    is_int,
    mean_target_loss,
    memory,
    part_of,
    sample,
    stage_generator,
)

PARTS = ("all", "attention", "mlp")


def project_out(grads: list[torch.Tensor], reference: list[torch.Tensor], strength: float) -> tuple[list[torch.Tensor], float]:
    """``(g', c)``: the gradient ``grads`` with ``strength`` of its component against ``reference``
    removed where they conflict, and the norm ``c`` removed (0 when they do not conflict)."""
    dot = sum((g * r).sum() for g, r in zip(grads, reference))
    ref_sq = sum((r * r).sum() for r in reference)
    if dot >= 0 or ref_sq == 0:
        return grads, 0.0
    coef = strength * dot / ref_sq
    return [g - coef * r for g, r in zip(grads, reference)], float(coef.abs() * ref_sq.sqrt())


def remove_random(grads: list[torch.Tensor], norm: float, generator: torch.Generator) -> list[torch.Tensor]:
    """``g - norm * sign(g . u) * u`` with ``u`` a random unit direction over the same tensors."""
    u = [torch.randn(g.shape, generator=generator, dtype=torch.float32).to(g) for g in grads]
    scale = sum((x * x).sum() for x in u).sqrt()
    u = [x / scale for x in u]
    sign = 1.0 if float(sum((g * x).sum() for g, x in zip(grads, u))) >= 0 else -1.0
    return [g - norm * sign * x for g, x in zip(grads, u)]


class GradientProjection(TrainingHook):
    """The projection (or its control) of the module docstring."""

    def __init__(self, strength: float, parts: str = "all", control: bool = False, memory_size: int = 256,
                 memory_batch: int = 16):
        self.strength, self.parts, self.control = strength, parts, control
        self.memory_size, self.memory_batch = memory_size, memory_batch
        self.pool = None
        self.removed: list[float] = []  # the norm removed at each step (0: no conflict), for inspection

    def before_task(self, ctx: TaskContext) -> None:
        self.generator = stage_generator(ctx.stage, salt=3)
        self.pool = memory(ctx.earlier, size=self.memory_size, generator=self.generator)
        self.removed = []

    def _params(self, model) -> list[torch.nn.Parameter]:
        return [p for n, p in model.named_parameters()
                if p.requires_grad and p.grad is not None and (self.parts == "all" or part_of(n) == self.parts)]

    def after_backward(self, ctx: TaskContext) -> None:
        if self.pool is None:
            return
        params = self._params(ctx.model)
        batch = sample(self.pool, self.memory_batch, self.generator)
        reference = torch.autograd.grad(mean_target_loss(ctx.model, batch), params, allow_unused=True)
        reference = [torch.zeros_like(p) if r is None else r for p, r in zip(params, reference)]
        reference = [ctx.accelerator.reduce(r, reduction="mean") for r in reference]
        grads = [p.grad for p in params]
        projected, removed = project_out(grads, reference, self.strength)
        if removed and self.control:
            projected = remove_random(grads, removed, self.generator)
        self.removed.append(removed)
        with torch.no_grad():
            for p, g in zip(params, projected):
                p.grad.copy_(g)


@register("project")
def make(strength: float, options: dict[str, Any]) -> TrainingHook:
    check_strength("project", strength, 1.0, "the share of the conflicting component removed")
    o = check_options("project", options, {
        "parts": ("all", lambda v: v in PARTS, ", ".join(PARTS)),
        "control": (False, lambda v: isinstance(v, bool), "true (remove a random component of the same norm) or false"),
        "memory_size": (256, is_int(1, 100_000), "1 to 100000 examples of the earlier tasks"),
        "memory_batch": (16, is_int(1, 4096), "1 to 4096 examples per step"),
    })
    return GradientProjection(strength, o["parts"], o["control"], o["memory_size"], o["memory_batch"])
