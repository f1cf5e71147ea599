"""Self-distillation on the earlier tasks' prompts (learning without forgetting, Li & Hoiem 2017, in
the form used for language models): the model at the start of a task is the teacher.

Before a task, a frozen copy of the model is kept. At every micro-batch a batch of ``memory_batch``
examples of the earlier tasks (a seeded memory of ``memory_size``) is run through both, and the loss gets

    strength * T^2 * KL( softmax(teacher / T) || softmax(student / T) )

averaged over the target positions of those examples (where the old tasks are scored), ``T`` the
``temperature``. A micro-batch costs one more forward and backward pass and one teacher forward; the
teacher doubles the model's memory.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from forgetting.hooks import TaskContext, TrainingHook
from forgetting.mitigations import register
from forgetting.mitigations.common import check_options, is_float, is_int, memory, sample, stage_generator
from forgetting.tasks.encoding import IGNORE_INDEX


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float) -> torch.Tensor:
    """``T^2 KL(teacher || student)`` per target position, averaged; logits (n, L, V), labels (n, L)
    (positions that predict a label are the scored ones, as in the task loss)."""
    mask = labels[:, 1:] != IGNORE_INDEX
    s = torch.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)[mask]
    t = torch.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)[mask]
    return temperature**2 * torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean")


class SelfDistillation(TrainingHook):
    def __init__(self, strength: float, temperature: float = 2.0, memory_size: int = 256, memory_batch: int = 16):
        self.strength, self.temperature = strength, temperature
        self.memory_size, self.memory_batch = memory_size, memory_batch
        self.teacher = self.pool = None

    def before_task(self, ctx: TaskContext) -> None:
        self.generator = stage_generator(ctx.stage, salt=4)
        self.pool = memory(ctx.earlier, size=self.memory_size, generator=self.generator)
        self.teacher = None
        if self.pool is not None:
            self.teacher = copy.deepcopy(ctx.accelerator.unwrap_model(ctx.model)).eval().requires_grad_(False)

    def before_backward(self, ctx: TaskContext, loss: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return loss
        batch = sample(self.pool, self.memory_batch, self.generator)
        device = loss.device
        inputs = {"input_ids": batch.input_ids.to(device), "attention_mask": batch.attention_mask.to(device)}
        with torch.no_grad():
            teacher = self.teacher(**inputs).logits
        kl = distillation_loss(ctx.model(**inputs).logits, teacher, batch.labels.to(device), self.temperature)
        return loss + self.strength * kl / ctx.grad_accum

    def after_task(self, ctx: TaskContext) -> None:
        self.teacher = None  # the memory back


@register("lwf")
def make(strength: float, options: dict[str, Any]) -> TrainingHook:
    o = check_options("lwf", options, {
        "temperature": (2.0, is_float(0.0, 100.0, open_low=True), "above 0, at most 100"),
        "memory_size": (256, is_int(1, 100_000), "1 to 100000 examples of the earlier tasks"),
        "memory_batch": (16, is_int(1, 4096), "1 to 4096 examples per micro-batch"),
    })
    return SelfDistillation(strength, o["temperature"], o["memory_size"], o["memory_batch"])
