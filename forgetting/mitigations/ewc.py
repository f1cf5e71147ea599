"""Elastic weight consolidation, online (Kirkpatrick et al. 2017; Schwarz et al. 2018).

After each task, the diagonal of the empirical Fisher information is estimated on ``fisher_examples``
of its training examples: ``F_i = mean_x (d loss(x) / d theta_i)^2`` with ``loss(x)`` the mean target-token
loss of example ``x``. Online EWC keeps one running estimate, ``F <- gamma * F + F_task``, and one anchor,
``theta*`` = the weights at the end of the last task. While a later task trains, the loss gets

    penalty = strength / 2 * sum_i F_i * (theta_i - theta*_i)^2,   d penalty / d theta = strength * F * (theta - theta*)

With ``normalize`` (the default) ``F`` is divided by its mean over all parameters, so that ``strength``
is on the scale of an L2 penalty (:mod:`forgetting.mitigations.l2`) whose weights are redistributed by
the Fisher; without it the Fisher's raw scale (tiny for a well-fitted task) sets the strength's scale.
"""

from __future__ import annotations

from typing import Any

import torch

from forgetting.hooks import TaskContext, TrainingHook
from forgetting.mitigations import register
from forgetting.mitigations.common import check_options, is_float, is_int, mean_target_loss, sample, stage_generator


class OnlineEWC(TrainingHook):
    """The penalty of the module docstring; ``fisher`` and ``anchor`` are by parameter name."""

    def __init__(self, strength: float, gamma: float = 1.0, fisher_examples: int = 64, normalize: bool = True):
        self.strength, self.gamma, self.n, self.normalize = strength, gamma, fisher_examples, normalize
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        """``strength / 2 * sum F (theta - theta*)^2`` over the parameters with a Fisher estimate."""
        params = dict(model.named_parameters())
        total = sum((self.fisher[n] * (params[n] - a) ** 2).sum() for n, a in self.anchor.items())
        return 0.5 * self.strength * total

    def before_backward(self, ctx: TaskContext, loss: torch.Tensor) -> torch.Tensor:
        if not self.anchor:
            return loss
        return loss + self.penalty(ctx.model) / ctx.grad_accum

    def after_task(self, ctx: TaskContext) -> None:
        model = ctx.accelerator.unwrap_model(ctx.model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        fisher = {n: torch.zeros_like(p) for n, p in named}
        examples = sample(ctx.data, self.n, stage_generator(ctx.stage, salt=2))
        for i in range(len(examples)):
            grads = torch.autograd.grad(mean_target_loss(model, examples.select(slice(i, i + 1))),
                                        [p for _, p in named], allow_unused=True)
            for (n, _), g in zip(named, grads):
                if g is not None:
                    fisher[n] += g.detach() ** 2 / len(examples)
        if self.normalize:
            mean = torch.cat([f.flatten() for f in fisher.values()]).mean()
            fisher = {n: f / mean.clamp_min(1e-30) for n, f in fisher.items()}
        self.fisher = {n: self.gamma * self.fisher[n] + f if n in self.fisher else f for n, f in fisher.items()}
        self.anchor = {n: p.detach().clone() for n, p in named}


@register("ewc")
def make(strength: float, options: dict[str, Any]) -> TrainingHook:
    o = check_options("ewc", options, {
        "gamma": (1.0, is_float(0.0, 1.0), "0 to 1: how much of the earlier tasks' Fisher is kept"),
        "fisher_examples": (64, is_int(1, 100_000), "1 to 100000 examples for the Fisher estimate"),
        "normalize": (True, lambda v: isinstance(v, bool), "true or false"),
    })
    return OnlineEWC(strength, o["gamma"], o["fisher_examples"], o["normalize"])
