"""Fine-tune a model on one task: AdamW, warmup + decay, gradient accumulation, on accelerate.

The same function runs in one process or under ``accelerate launch --num_processes N`` (DDP): every
process draws the same global batch order (:func:`forgetting.train.batches.batch_indices`) and takes
its share. The loss of a step is the mean over *all target tokens of the global batch*,

    L = (1 / N_tokens) * sum_{examples in batch} sum_{target tokens t} -log p(y_t | y_<t),

so each process back-propagates ``world_size * local_sum / N_tokens`` and DDP's gradient average
gives exactly the gradient of L: N processes reproduce one process up to float summation order.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from forgetting.errors import TrainingDiverged
from forgetting.hooks import Hooks, TaskContext, TrainingHook, target_loss_sum
from forgetting.runs.health import optimizer_advice
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples
from forgetting.train.batches import batch_indices, shard

SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 10
    schedule: str = "linear"
    max_grad_norm: float | None = 1.0

    @classmethod
    def from_spec(cls, spec) -> "OptimConfig":
        """From an :class:`forgetting.spec.OptimizerSpec`."""
        return cls(spec.lr, spec.weight_decay, tuple(spec.betas), spec.warmup_steps, spec.schedule, spec.max_grad_norm)


def make_optimizer(model, config: OptimConfig, steps: int):
    """AdamW over the trainable parameters and its warmup + decay schedule (``transformers.get_scheduler``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    try:  # the fused kernel (one op for all tensors; what the HF Trainer uses by default) where supported
        optimizer = torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        optimizer = torch.optim.AdamW(params, **kwargs)
    scheduler = get_scheduler(
        SCHEDULES[config.schedule], optimizer, num_warmup_steps=min(config.warmup_steps, steps), num_training_steps=steps
    )
    return optimizer, scheduler


def train_task(
    model,
    data: EncodedExamples,
    *,
    steps: int,
    batch_size: int,
    optim: OptimConfig,
    seed: int,
    accelerator,
    grad_accum: int = 1,
    hooks: Sequence[TrainingHook] = (),
    task_name: str = "task",
    stage: int | None = None,
    earlier: dict[str, EncodedExamples] | None = None,
) -> list[float]:
    """Run ``steps`` optimizer steps on ``data`` and return the (task) loss of every step.

    ``batch_size`` is the global batch (all processes, all accumulation micro-steps); it must split
    evenly into ``grad_accum x num_processes`` shares. ``hooks`` are called at the points listed in
    :mod:`forgetting.hooks`, on every process, in order; ``stage`` and ``earlier`` (the training data of
    the earlier tasks of a sequence) are passed on to them in the :class:`~forgetting.hooks.TaskContext`.
    A non-finite loss raises :class:`~forgetting.errors.TrainingDiverged` on every process at once (the
    loss is all-reduced before the check).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    if batch_size % (grad_accum * world):
        raise ValueError(
            f"batch_size: {batch_size} does not split into grad_accum ({grad_accum}) x processes ({world}) equal shares"
        )
    device = accelerator.device
    hook = Hooks(hooks)
    ctx = TaskContext(model=model, data=data, task_name=task_name, steps=steps, grad_accum=grad_accum,
                      accelerator=accelerator, stage=stage, earlier=dict(earlier or {}))
    hook.before_task(ctx)
    data = ctx.data
    optimizer, scheduler = make_optimizer(model, optim, steps)
    ctx.optimizer = optimizer
    order = batch_indices(len(data), batch_size, steps, seed)
    tokens_per_example = (data.labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses = []
    model.train()
    for step in range(1, steps + 1):
        global_batch = order[step - 1]
        n_tokens = int(tokens_per_example[global_batch].sum())
        micro_batches = global_batch.view(grad_accum, -1)
        local_sum = torch.zeros((), device=device)
        for m, micro in enumerate(micro_batches):
            sync = contextlib.nullcontext() if m == grad_accum - 1 else accelerator.no_sync(model)
            with sync:
                ctx.micro_batch = data.select(shard(micro, rank, world))
                loss_sum = target_loss_sum(model, ctx.micro_batch, device)
                accelerator.backward(hook.before_backward(ctx, loss_sum * (world / n_tokens)))
            local_sum += loss_sum.detach()
        loss = float(accelerator.reduce(local_sum, reduction="sum")) / n_tokens
        if not math.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(f"task {task_name!r}, step {step}: the loss became {loss}; "
                                   f"{optimizer_advice(optim.lr, optim.max_grad_norm)}. Completed tasks are kept.")
        hook.after_backward(ctx)
        if optim.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, optim.max_grad_norm)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        ctx.step, ctx.loss, ctx.lr = step, loss, lr
        hook.after_step(ctx)
    model.eval()
    ctx.micro_batch = None
    hook.after_task(ctx)
    return losses
