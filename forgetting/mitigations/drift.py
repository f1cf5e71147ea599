"""A penalty on the drift of the earlier tasks' representations, in the intermediate layers or in random
layers (its matched control): the causal test of "representational drift causes forgetting".

Before a task, a seeded memory of ``memory_size`` examples of the earlier tasks is encoded once by the
model as it starts the task: for each layer ``l`` of ``layers``, the hidden state at every real token,
mean-pooled per example, ``z_l`` (n, D). At every micro-batch, on ``memory_batch`` of those examples,
the loss gets the relative squared drift of the current pooled states ``h_l``::

    strength * mean over l of  sum_x |h_l(x) - z_l(x)|^2 / sum_x |z_l(x)|^2

``layers: intermediate`` penalises the layers strictly between the first and the last (for ``L`` layers,
2 .. L-1 counted from 1; all layers when ``L < 3``); ``layers: random`` penalises as many layers drawn
at random (seeded by the run's seed and stage) from all ``L``: the control. A micro-batch costs one
more forward and backward pass on the memory batch.
"""

from __future__ import annotations

from typing import Any

import torch

from forgetting.hooks import TaskContext, TrainingHook
from forgetting.mitigations import register
from forgetting.mitigations.common import check_options, is_int, memory, stage_generator

CHOICES = ("intermediate", "random")


def intermediate_layers(num_layers: int) -> list[int]:
    """Layers 2 .. L-1 (1-based indices into ``hidden_states``; 0 is the embedding output)."""
    return list(range(2, num_layers)) if num_layers >= 3 else list(range(1, num_layers + 1))


def pooled_states(model, batch, layers: list[int]) -> list[torch.Tensor]:
    """Per layer in ``layers``, the mean over real tokens of the hidden states, (n, D) each."""
    device = next(model.parameters()).device
    mask = batch.attention_mask.to(device)
    out = model(input_ids=batch.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
    weights = mask.unsqueeze(-1).float() / mask.sum(dim=1, keepdim=True).unsqueeze(-1)
    return [(out.hidden_states[l].float() * weights).sum(dim=1) for l in layers]


class DriftPenalty(TrainingHook):
    def __init__(self, strength: float, layers: str = "intermediate", memory_size: int = 128, memory_batch: int = 16):
        self.strength, self.choice, self.memory_size, self.memory_batch = strength, layers, memory_size, memory_batch
        self.pool = None
        self.layers: list[int] = []

    def before_task(self, ctx: TaskContext) -> None:
        self.generator = stage_generator(ctx.stage, salt=5)
        self.pool = memory(ctx.earlier, size=self.memory_size, generator=self.generator)
        if self.pool is None:
            return
        model = ctx.accelerator.unwrap_model(ctx.model)
        num_layers = model.config.get_text_config().num_hidden_layers
        chosen = intermediate_layers(num_layers)
        if self.choice == "random":
            chosen = sorted((torch.randperm(num_layers, generator=self.generator)[: len(chosen)] + 1).tolist())
        self.layers = chosen
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.targets = pooled_states(model, self.pool, self.layers)
        model.train(was_training)

    def before_backward(self, ctx: TaskContext, loss: torch.Tensor) -> torch.Tensor:
        if self.pool is None:
            return loss
        rows = torch.randperm(len(self.pool), generator=self.generator)[: self.memory_batch]
        current = pooled_states(ctx.model, self.pool.select(rows), self.layers)
        drift = sum(((h - z[rows.to(z.device)]) ** 2).sum() / (z[rows.to(z.device)] ** 2).sum().clamp_min(1e-12)
                    for h, z in zip(current, self.targets)) / len(self.layers)
        return loss + self.strength * drift / ctx.grad_accum


@register("drift")
def make(strength: float, options: dict[str, Any]) -> TrainingHook:
    o = check_options("drift", options, {
        "layers": ("intermediate", lambda v: v in CHOICES, "intermediate (targeted) or random (the control)"),
        "memory_size": (128, is_int(1, 100_000), "1 to 100000 examples of the earlier tasks"),
        "memory_batch": (16, is_int(1, 4096), "1 to 4096 examples per micro-batch"),
    })
    return DriftPenalty(strength, o["layers"], o["memory_size"], o["memory_batch"])
