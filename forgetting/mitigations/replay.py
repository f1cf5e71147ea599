"""Experience replay: train each task on its own examples mixed with a share of every earlier task's.

With ``strength = s`` (0 < s <= 1), before a task is trained its training data becomes its own examples
plus a seeded sample of ``round(s * n_j)`` (at least one) examples of each earlier task ``j``; batches
are then drawn from the mixture as from any task (epoch-wise shuffling, :mod:`forgetting.train.batches`).
At ``s = 1`` the buffer holds all earlier data, so the expected gradient of a batch is the gradient of
the mean loss over the union of the tasks: joint training on the mixture, for the steps of one task.
The batch size and the number of steps are those of the plain run, so a step costs what a plain step
costs; the buffer costs memory in proportion to ``s``.
"""

from __future__ import annotations

from typing import Any

from forgetting.hooks import TaskContext, TrainingHook
from forgetting.mitigations import register
from forgetting.mitigations.common import check_options, check_strength, memory, stage_generator
from forgetting.tasks.encoding import concat_examples


class Replay(TrainingHook):
    """The replay of the module docstring with buffer share ``share``."""

    def __init__(self, share: float):
        self.share = share

    def before_task(self, ctx: TaskContext) -> None:
        buffer = memory(ctx.earlier, share=self.share, generator=stage_generator(ctx.stage, salt=1))
        if buffer is not None:
            ctx.data = concat_examples([ctx.data, buffer])


@register("replay")
def make(strength: float, options: dict[str, Any]) -> TrainingHook:
    check_strength("replay", strength, 1.0, "the share of each earlier task's examples kept in the buffer")
    check_options("replay", options, {})
    return Replay(strength)
