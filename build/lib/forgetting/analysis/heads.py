"""Attention-head disruption in a run: one pair of snapshots judged against its nulls, and the
disruption at every snapshot along the training of the new task.

These read a run (:class:`forgetting.runs.run.Run`) and make null snapshots (:mod:`forgetting.nulls`); the
measures themselves are the pure functions of :mod:`forgetting.mechanisms.heads`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from forgetting.errors import SpecError
from forgetting.mechanisms.heads import (
    COMBINED_METRICS,
    NULL_KINDS,
    Ablation,
    HeadRecord,
    Positions,
    head_activity,
    head_disruption,
    severe_fractions,
    severe_heads,
)
from forgetting.nulls import null_snapshots
from forgetting.runs import Run
from forgetting.tasks.encoding import EncodedExamples


@dataclass
class HeadDisruptionResult:
    """Everything :func:`analyze_head_disruption` measured for one pair of snapshots of one run."""

    disruption: pd.DataFrame  # head_disruption(before, after)
    null_disruption: pd.DataFrame  # the same against each null snapshot (columns null, replicate)
    severe: pd.DataFrame  # severe_heads(disruption, null_disruption)
    fractions: pd.DataFrame  # severe_fractions(severe)
    loss_before: float  # old task's loss at before
    loss_after: float  # old task's loss at after
    null_loss: dict[str, float]  # old task's loss at each null snapshot
    old_task: str


def _record(run: Run, ref: str | Path, examples: EncodedExamples, **kwargs) -> HeadRecord:
    return head_activity(run.model_at(ref), examples, **kwargs)


def _available_combine(disruption: pd.DataFrame) -> tuple[str, ...]:
    present = set(disruption["metric"])
    return tuple(m for m in COMBINED_METRICS if m in present)


def analyze_head_disruption(
    run_dir: str | Path | Run,
    *,
    before: str,
    after: str,
    nulls: Sequence[str] = NULL_KINDS,
    null_seeds: Sequence[int] | None = None,
    alpha: float = 0.05,
    by: Literal["layer", "all"] = "layer",
    positions: Positions = "all",
    ablation: Ablation | None = "mean",
    batch_size: int = 64,
    progress: bool = True,
) -> HeadDisruptionResult:
    """Head disruption of ``before -> after`` in a run, on the old task's eval data, judged against nulls.

    Makes the null snapshots if needed (:func:`forgetting.nulls.null_snapshots`), records every snapshot
    with :func:`~forgetting.mechanisms.heads.head_activity`, and returns the disruption, the null
    disruption, :func:`~forgetting.mechanisms.heads.severe_heads` and its per-layer fractions. Snapshot
    labels as in :meth:`forgetting.runs.run.Run.snapshots` (e.g. ``"stage01-recall_city"``).
    """
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    old_task = run.snapshot_info(before).task
    null_folders = null_snapshots(run, before=before, after=after, kinds=nulls, seeds=null_seeds, progress=progress)
    examples = run.task(old_task).eval
    kw = dict(batch_size=batch_size, positions=positions, ablation=ablation)
    rec_before = _record(run, before, examples, **kw)
    rec_after = _record(run, after, examples, **kw)
    disruption = head_disruption(rec_before, rec_after)
    null_tables, null_loss = [], {}
    for label, folder in null_folders.items():
        kind, seed_part = label.split("-seed")
        rec = _record(run, folder, examples, **kw)
        null_loss[label] = rec.loss
        null_tables.append(head_disruption(rec_before, rec).assign(null=kind, replicate=int(seed_part)))
    null_disruption = pd.concat(null_tables, ignore_index=True)
    severe = severe_heads(disruption, null_disruption, alpha, by=by, combine=_available_combine(disruption))
    return HeadDisruptionResult(
        disruption=disruption, null_disruption=null_disruption, severe=severe, fractions=severe_fractions(severe),
        loss_before=rec_before.loss, loss_after=rec_after.loss, null_loss=null_loss, old_task=old_task,
    )


def disruption_timeline(
    run_dir: str | Path | Run,
    *,
    before: str,
    labels: Sequence[str] | None = None,
    positions: Positions = "all",
    ablation: Ablation | None = "mean",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Disruption of every snapshot after ``before`` against ``before``, with the old task's loss increase.

    ``labels``: snapshots to compare (default: every snapshot of the stage after ``before``'s, step
    snapshots included; a spec with ``snapshots.every > 0`` makes them). Returns the long table of
    :func:`~forgetting.mechanisms.heads.head_disruption` with columns ``snapshot``, ``step`` (steps since
    ``before``), ``loss_before``, ``loss``, ``loss_increase`` (= old task's loss at the snapshot - at
    ``before``, nats per target token).
    """
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    mb = run.snapshot_info(before)
    if labels is None:
        labels = [s.label for s in run.snapshots(mb.stage + 1)]
    if not labels:
        raise SpecError("labels", f"no snapshots after {before!r} in {run.folder}")
    examples = run.task(mb.task).eval
    kw = dict(batch_size=batch_size, positions=positions, ablation=ablation)
    rec_before = _record(run, before, examples, **kw)
    tables = []
    for label in labels:
        info = run.snapshot_info(label)
        rec = _record(run, label, examples, **kw)
        tables.append(head_disruption(rec_before, rec).assign(
            snapshot=label, step=info.step - mb.step, loss_before=rec_before.loss, loss=rec.loss,
            loss_increase=rec.loss - rec_before.loss,
        ))
    return pd.concat(tables, ignore_index=True)
