"""Did a run train a working model? Divergence read from its train log and evaluations.

A run whose optimizer diverged would still write complete tables, and its "forgetting" would then
measure a broken model. The trainer stops on a non-finite loss; :class:`BlowUpGuard` applies the
blow-up rule below *while* a stage trains and stops it at the first step that breaks it (the same
running mean, computed online: a run it stops is exactly a run :func:`run_problems` would flag);
:func:`run_problems` reads a run's tables afterwards and names everything that went wrong. For each stage with ``n`` logged steps, the loss is smoothed by a running
mean over ``k = max(3, ceil(n / 10))`` steps, ``L_before`` is the evaluated loss of the stage's task
before the stage (the end of the previous stage; the base model for stage 1) and ``ln V`` the loss of a
uniform output over the model's ``V`` logits:

- **non-finite**: a training loss or an evaluated loss (the base model's included) is NaN or infinite,
  or any evaluation value is infinite;
- **blow-up**: the smoothed loss rises above ``2 x max(L_before, ln V)``: training made the task's loss
  twice as bad as before training on it and twice as bad as guessing.

How the rule was chosen (a guard, not a finding): a first rule (a single step's loss above 3 x the
stage's first-tenth mean and above ``ln V``) flagged 12 of the 420 healthy runs published in
``data/results`` (one noisy batch is enough), so it was replaced, before use, by the smoothed rule
above, which flags none of those runs' 852 stages (their smoothed peak never exceeds their start) and
none of the test suite's runs. On the test suite's two-task spec (tiny model, 6, 20 or 60 steps per
task) it flags no run at ``optimizer.lr`` 0.003, 0.03 or 0.1, every run at the largest learning rate a
spec allows (1.0: smoothed peaks of 53 to 86 nats against a limit of 23.7), and the 6- and 20-step runs
at 0.3 (26 to 28 nats) but not the 60-step one, whose longer running mean stays under the limit. A
model that collapses to a uniform output without a blow-up on the way is not caught.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from forgetting.errors import TrainingDiverged
from forgetting.hooks import TaskContext, TrainingHook
from forgetting.models import output_vocabulary

BLOW_UP = 2.0  # x max(L_before, ln V)


def _window(n: int) -> int:
    return max(3, math.ceil(n / 10))


def stage_problems(loss: np.ndarray, vocab: int | None, loss_before: float | None = None) -> list[str]:
    """What is wrong with one stage's training losses (in step order), by the module's rules; ``[]`` if
    nothing. ``loss_before``: the task's evaluated loss before the stage (``None``: the mean of the
    stage's first ``k`` losses stands in)."""
    loss = np.asarray(loss, dtype=float)
    if loss.size == 0:
        return []
    if not np.isfinite(loss).all():
        return [f"its loss became non-finite at logged step {int(np.argmin(np.isfinite(loss)))}"]
    k = _window(loss.size)
    before = loss[:k].mean() if loss_before is None or not math.isfinite(loss_before) else loss_before
    smoothed = pd.Series(loss).rolling(k, min_periods=1).mean().to_numpy()
    limit = _limit(before, vocab)
    return [_blow_up(k, smoothed.max(), before, vocab, limit)] if smoothed.max() > limit else []


def _limit(before: float, vocab: int | None) -> float:
    """``2 x max(L_before, ln V)`` (``ln V`` taken as 0 when the vocabulary is unknown)."""
    return BLOW_UP * max(before, math.log(vocab) if vocab else 0.0)


def _blow_up(k: int, smoothed: float, before: float, vocab: int | None, limit: float) -> str:
    guess = f", ln({vocab}) = {math.log(vocab):.2f}" if vocab else ""
    return (f"its loss (a running mean over {k} steps) rose to {smoothed:.1f} nats, above "
            f"{BLOW_UP:g} x max(its loss before the stage {before:.2f}{guess}) = {limit:.1f}")


class BlowUpGuard(TrainingHook):
    """Stops a stage at the first step whose running-mean loss breaks the blow-up rule (module docstring).

    ``steps``: the stage's planned steps (the window ``k = max(3, ceil(steps / 10))``); ``vocab``: the
    model's output vocabulary; ``loss_before``: the task's evaluated loss before the stage (``None``:
    the mean of the stage's first ``k`` losses, so nothing is judged before step ``k``). Raises
    :class:`~forgetting.errors.TrainingDiverged` from ``after_step``; ``hint`` ends its message."""

    def __init__(self, steps: int, vocab: int | None, loss_before: float | None, hint: str = ""):
        self.k, self.vocab, self.before, self.hint = _window(steps), vocab, loss_before, hint
        self.losses: list[float] = []

    def after_step(self, ctx: TaskContext) -> None:
        self.losses.append(ctx.loss)
        before = self.before
        if before is None or not math.isfinite(before):
            if len(self.losses) < self.k:
                return
            before = float(np.mean(self.losses[: self.k]))
        smoothed, limit = float(np.mean(self.losses[-self.k:])), _limit(before, self.vocab)
        if smoothed > limit:
            raise TrainingDiverged(
                f"stage {ctx.stage} ({ctx.task_name}) stopped at step {ctx.step} of {ctx.steps}: "
                + _blow_up(self.k, smoothed, before, self.vocab, limit) + (f"; {self.hint}" if self.hint else ""))


def _loss_before(evals: pd.DataFrame, stage: int, task: str) -> float | None:
    rows = evals[(evals["stage"] == stage - 1) & (evals["task"] == task) & (evals["metric"] == "loss")]
    if "end_of_stage" in rows:
        rows = rows[rows["end_of_stage"].astype(bool)]
    return float(rows["value"].mean()) if len(rows) else None


def run_problems(train_log: pd.DataFrame, evals: pd.DataFrame, vocab: int | None) -> list[str]:
    """Every problem of a run's tables: ``"stage 2 (update_city): its loss ..."`` per stage, and
    non-finite evaluations (``"the evaluation of stage 0 (the base model) has non-finite values: ..."``)."""
    problems = []
    for stage, rows in train_log.sort_values("step").groupby("stage", sort=True):
        task = rows["task"].iloc[0]
        before = _loss_before(evals, int(stage), task)
        problems += [f"stage {stage} ({task}): {p}" for p in stage_problems(rows["loss"].to_numpy(), vocab, before)]
    value = evals["value"].astype(float)
    bad = evals[np.isinf(value) | (value.isna() & (evals["metric"] == "loss"))]  # a loss is never missing
    for stage, rows in bad.groupby("stage", sort=True):
        what = "the base model" if stage == 0 else f"after stage {stage}"
        metrics = ", ".join(sorted({f"{t} {m}" for t, m in zip(rows["task"], rows["metric"])}))
        problems.append(f"the evaluation of stage {stage} ({what}) has non-finite values: {metrics}")
    return problems


def check_health(run) -> list[str]:
    """:func:`run_problems` of an open :class:`~forgetting.runs.run.Run` (its train log and evaluations
    so far; ``[]`` before it has any)."""
    if not (run.layout.train_log.is_file() and run.layout.evals.is_file()):
        return []
    try:
        vocab = output_vocabulary(run.spec.model, trust_remote_code=run.spec.trust_remote_code)
    except Exception:  # noqa: BLE001 - a config that cannot be read here: judge by the loss before each stage
        vocab = None
    return run_problems(run.train_log, run.evals, vocab)


def optimizer_advice(lr: float, max_grad_norm: float | None) -> str:
    """What to change in the optimizer after a divergence: with clipping on, only the learning rate helps."""
    if max_grad_norm is not None:
        return f"gradient clipping is already on (optimizer.max_grad_norm: {max_grad_norm:g}), so lower optimizer.lr (now {lr:g})"
    return f"lower optimizer.lr (now {lr:g}) or set optimizer.max_grad_norm (e.g. 1.0)"


def hint(spec) -> str:
    """What to change in ``spec`` after a divergence, in the words of its fields."""
    return optimizer_advice(spec.optimizer.lr, spec.optimizer.max_grad_norm) + "; and check the base model's evaluation"
