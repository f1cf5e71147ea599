"""Freeze the bottom of the model: its embeddings and the lowest layers (Zheng et al. 2025, *Spurious
Forgetting in Continual Learning of Language Models*, find this the strongest simple method).

With ``strength = s`` (0 < s <= 1) and ``L`` transformer layers, layers ``0 .. ceil(s * L) - 1`` and (with
the option ``embeddings``, the default) the input embeddings are not updated: their gradients are
dropped after each backward pass (``p.grad = None``, which AdamW skips: no update, no weight decay).
With tied input and output embeddings, freezing the embeddings freezes the output layer too.
"""

from __future__ import annotations

import math
from typing import Any

from forgetting.hooks import TaskContext, TrainingHook
from forgetting.mitigations import register
from forgetting.mitigations.common import check_options, check_strength, layer_of, part_of


def frozen_names(names: list[str], num_layers: int, share: float, embeddings: bool = True) -> list[str]:
    """The parameter names frozen at ``share`` of ``num_layers`` layers (the module docstring)."""
    bottom = math.ceil(share * num_layers)
    return [n for n in names if (layer_of(n) is not None and layer_of(n) < bottom)
            or (embeddings and part_of(n) == "embedding")]


class FreezeBottom(TrainingHook):
    def __init__(self, share: float, embeddings: bool = True):
        self.share, self.embeddings = share, embeddings
        self.frozen: list = []

    def before_task(self, ctx: TaskContext) -> None:
        model = ctx.accelerator.unwrap_model(ctx.model)
        layers = model.config.get_text_config().num_hidden_layers
        named = {n: p for n, p in ctx.model.named_parameters() if p.requires_grad}
        self.frozen = [named[n] for n in frozen_names(list(named), layers, self.share, self.embeddings)]

    def after_backward(self, ctx: TaskContext) -> None:
        for p in self.frozen:
            p.grad = None


@register("freeze")
def make(strength: float, options: dict[str, Any]) -> TrainingHook:
    check_strength("freeze", strength, 1.0, "the share of the layers frozen from the bottom")
    o = check_options("freeze", options, {"embeddings": (True, lambda v: isinstance(v, bool), "true or false")})
    return FreezeBottom(strength, o["embeddings"])
