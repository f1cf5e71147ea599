"""The spurious-forgetting probe: is the old task's knowledge erased, or only hidden?

Zheng et al. (2025, *Spurious Forgetting in Continual Learning of Language Models*) observe that a
model which "forgot" a task gets most of it back after a few steps on a handful of that task's
examples: the knowledge was still there, only its use was disrupted. The probe fine-tunes a copy of
``after`` (the end of stage s) on the first N *train* examples of the old task for ``steps`` steps and
reports, on the old task's *eval* examples (other people than the train ones for the fact tasks, see
:mod:`forgetting.tasks.families`),

    spurious(N) = (L(after) - L(after retrained on N)) / (L(after) - L(before))

A value near 1 means N examples bring the old loss back: hidden, not erased. Since N examples also
*teach* the task, the control (``spurious_control``) re-trains, the same way, the model at the end of
stage s-2, which never trained on the old task, and reports the same ratio with its re-trained loss:
the probe's value above the control's is what the forgotten model still knew.

Training is :func:`forgetting.train.loop.train_task` with the run's optimizer (AdamW, its learning
rate, betas, weight decay, clipping) at a constant learning rate without warmup (the run's warmup
would take up most of a probe of a few steps), batch ``min(batch_size, N)``, batch order seeded by
``seed``. The models passed in are not changed (a deep copy is trained).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from forgetting.causal.restore import LossFn, loss_value
from forgetting.tasks.encoding import EncodedExamples
from forgetting.train.loop import OptimConfig, train_task

__all__ = ["probe_optim", "retrained_loss"]


def probe_optim(optim: OptimConfig) -> OptimConfig:
    """The run's optimizer settings at a constant learning rate without warmup (module docstring)."""
    return dataclasses.replace(optim, warmup_steps=0, schedule="constant")


def retrained_loss(
    model: nn.Module,
    train: EncodedExamples,
    loss_fn: LossFn,
    *,
    n: int,
    steps: int,
    batch_size: int,
    optim: OptimConfig,
    seed: int,
    accelerator,
) -> tuple[float, int]:
    """``(loss_fn(model'), trainable entries)``: ``model'`` is a copy of ``model`` fine-tuned on the first
    ``n`` examples of ``train`` for ``steps`` steps (:func:`probe_optim` settings; ``model`` is unchanged)."""
    data = train.select(slice(0, n))
    trained = copy.deepcopy(model).to(accelerator.device)
    torch.manual_seed(seed)
    train_task(trained, data, steps=steps, batch_size=min(batch_size, len(data)), optim=probe_optim(optim),
               seed=seed, accelerator=accelerator, task_name="spurious probe")
    loss = loss_value(loss_fn, trained)
    n_trained = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    return float(loss), int(n_trained)
