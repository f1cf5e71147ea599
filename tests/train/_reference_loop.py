"""The training loop as it was before training hooks existed (forgetting/train/loop.py at commit 74395ee),
kept verbatim as the oracle of tests/train/test_hooks.py: with no hooks, the loop must give the same
losses and weights bit for bit. Only the imports were adjusted to the moved modules."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import get_scheduler

from forgetting.errors import TrainingDiverged
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
        """From an :class:`forgetting.experiments.OptimizerSpec`."""
        return cls(spec.lr, spec.weight_decay, tuple(spec.betas), spec.warmup_steps, spec.schedule, spec.max_grad_norm)


def target_loss_sum(model, batch: EncodedExamples, device) -> torch.Tensor:
    """Sum of next-token cross-entropy over the target tokens of ``batch`` (a 0-d tensor)."""
    logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), batch.labels[:, 1:].to(device), ignore_index=IGNORE_INDEX, reduction="sum"
    )


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
    on_step: Callable[[int, float, float], None] | None = None,
    task_name: str = "task",
) -> list[float]:
    """Run ``steps`` optimizer steps on ``data`` and return the loss of every step.

    ``batch_size`` is the global batch (all processes, all accumulation micro-steps); it must split
    evenly into ``grad_accum x num_processes`` shares. ``on_step(step, loss, lr)`` is called after each
    optimizer step on every process (1-based ``step``). A non-finite loss raises
    :class:`~forgetting.errors.TrainingDiverged` on every process at once (the loss is all-reduced before the check).
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    if batch_size % (grad_accum * world):
        raise ValueError(
            f"batch_size: {batch_size} does not split into grad_accum ({grad_accum}) x processes ({world}) equal shares"
        )
    device = accelerator.device
    optimizer, scheduler = make_optimizer(model, optim, steps)
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
                loss_sum = target_loss_sum(model, data.select(shard(micro, rank, world)), device)
                accelerator.backward(loss_sum * (world / n_tokens))
            local_sum += loss_sum.detach()
        loss = float(accelerator.reduce(local_sum, reduction="sum")) / n_tokens
        if not math.isfinite(loss):
            optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f"task {task_name!r}, step {step}: the loss became {loss}; lower optimizer.lr "
                f"(now {optim.lr}) or set optimizer.max_grad_norm. Completed tasks are kept."
            )
        if optim.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(trainable, optim.max_grad_norm)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        if on_step is not None:
            on_step(step, loss, lr)
    model.eval()
    return losses
