"""Gradient alignment along the training of one stage of a run, at each of its snapshots.

Reads the run (:class:`forgetting.runs.run.Run`); the measure is
:func:`forgetting.mechanisms.gradients.snapshot_alignment`.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from forgetting.mechanisms.gradients import snapshot_alignment
from forgetting.runs import Run


def stage_alignment(
    run_dir: str | Path | Run,
    stage: int,
    *,
    old_stage: int | None = None,
    split: str = "train",
    batch_size: int = 64,
    max_examples: int | None = None,
    heads: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`~forgetting.mechanisms.gradients.snapshot_alignment` for a finished run: the task of
    ``old_stage`` (default ``stage - 1``) against the task of ``stage``, at the end of stage ``stage - 1``
    and every snapshot of ``stage`` (:meth:`forgetting.runs.run.Run.stage_snapshots`), on the ``split``
    (``"train"`` or ``"eval"``) examples. Adds ``old_task`` and ``new_task`` columns."""
    if split not in ("train", "eval"):
        raise ValueError(f"split: {split!r} is not one of train, eval")
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    old_stage = stage - 1 if old_stage is None else old_stage
    n_tasks = len(run.task_names)
    if not 1 <= old_stage < stage <= n_tasks:
        raise ValueError(f"stage, old_stage: need 1 <= old_stage < stage <= {n_tasks}, got {old_stage}, {stage}")
    snapshots = run.stage_snapshots(stage)
    model, _ = run.load_model()
    old, new = run.tasks[old_stage - 1], run.tasks[stage - 1]
    df = snapshot_alignment(
        model, snapshots, getattr(old, split), getattr(new, split), batch_size=batch_size,
        max_examples=max_examples, heads=heads, progress=progress,
    )
    return df.assign(old_task=old.name, new_task=new.name)
