"""Null snapshots: how far a model moves on the *old* task alone, the yardstick for every "change".

For a pair of snapshots ``before -> after`` of a run (``after`` trained a new task from ``before``), a
null snapshot knows the old task just as well as ``before`` but saw no new task:

- ``continue``: restore ``before`` and train the old task further, for as many steps as the new task got
  (``step(after) - step(before)``), with a fresh optimizer and the spec's schedule;
- ``reseed``: restore the snapshot where ``before``'s stage started and train the old task again for as
  many steps as that stage took, with batch order and RNG from another seed.

A drift, a head disruption or any other change before -> after counts only where it stands clear of
what before -> null shows. Null snapshots are stored in the run's ``nulls/`` folder (the same format as
its snapshots) and reused when present.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.hooks import TaskContext, TrainingHook
from forgetting.mechanisms.heads import NULL_KINDS
from forgetting.runs import Run
from forgetting.runs.snapshots import is_snapshot, save_snapshot
from forgetting.spec import stage_seed
from forgetting.train import OptimConfig, make_accelerator, train_task


def _stage_start(run: Run, stage: int) -> str:
    """The end-of-stage snapshot label of ``stage - 1`` (where stage ``stage`` started)."""
    for info in run.snapshots(stage - 1):
        if info.end_of_stage:
            return info.label
    raise SpecError("before", f"no end-of-stage snapshot of stage {stage - 1} in {run.folder}")


class _SaveAt(TrainingHook):
    """Saves the model after the optimizer steps in ``folders`` (``{step: folder}``), with ``meta``."""

    def __init__(self, folders: dict[int, Path], meta: dict):
        self.folders, self.meta = folders, meta

    def after_step(self, ctx: TaskContext) -> None:
        if ctx.step in self.folders:
            meta = {**self.meta, "label": f"{self.meta['label']}-step{ctx.step:06d}", "step": ctx.step}
            save_snapshot(ctx.model, self.folders[ctx.step], meta)


def null_snapshots(
    run_dir: str | Path | Run,
    *,
    before: str,
    after: str,
    kinds: Sequence[str] = NULL_KINDS,
    seeds: Sequence[int] | None = None,
    every: int = 0,
    progress: bool = True,
) -> dict[str, Path]:
    """Make (or reuse) the null snapshots of the pair ``before`` -> ``after`` of a finished run.

    The old task is the task ``before`` finished training. For each null seed (default: the run's seed
    + 1; a reseed null needs seeds other than the run's) and kind (module docstring), the null is saved
    as ``nulls/<before>__<kind>-seed<s>``; ``every > 0`` also saves ``continue`` snapshots every ``every``
    steps (``...-step<k:06d>``; nulls matched to step snapshots of the new task). Returns
    ``{label: folder}`` in creation order, label ``"{kind}-seed{s}"`` or ``"{kind}-seed{s}-step{k:06d}"``.
    """
    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    spec = run.spec
    bad = [k for k in kinds if k not in NULL_KINDS]
    if bad:
        raise SpecError("kinds", f"{', '.join(map(repr, bad))} not allowed; allowed: {', '.join(NULL_KINDS)}")
    seeds = tuple(seeds) if seeds is not None else (spec.seed + 1,)
    if "reseed" in kinds and spec.seed in seeds:
        raise SpecError("seeds", f"a reseed null needs seeds other than the run's seed {spec.seed}")
    mb, ma = run.snapshot_info(before), run.snapshot_info(after)
    if mb.task == "base":
        raise SpecError("before", "the base snapshot trained no task; pick a snapshot that ended training a task")
    if ma.step <= mb.step:
        raise SpecError("after", f"{after!r} (step {ma.step}) is not after {before!r} (step {mb.step})")
    out: dict[str, Path] = {}
    todo = []
    for s in seeds:
        for kind in kinds:
            label = f"{kind}-seed{s}"
            folder = run.null_folder(f"{before}__{label}")
            if kind == "continue":
                start, steps = before, ma.step - mb.step
            else:
                start = _stage_start(run, mb.stage)
                steps = mb.step - run.snapshot_info(start).step
            extra = {k: run.null_folder(f"{before}__{label}-step{k:06d}") for k in range(every, steps, every)} if (
                every and kind == "continue") else {}  # step -> folder
            for k, f in extra.items():
                out[f"{label}-step{k:06d}"] = f
            out[label] = folder
            if not all(is_snapshot(f) for f in [folder, *extra.values()]):
                todo.append((kind, s, label, folder, start, steps, extra))
    if not todo:
        return out
    model, _ = run.load_model()
    task = run.task(mb.task)
    accelerator = make_accelerator()
    model = model.to(accelerator.device)
    for kind, s, label, folder, start, steps, extra in tqdm(todo, desc="null snapshots", disable=not progress or paths.quiet()):
        run.load_into(model, start)
        # reseed: the batch order a run with seed s would use for that stage; continue: a stream of its own
        seed = stage_seed(s, mb.stage) if kind == "reseed" else stage_seed(s, 100 + mb.stage)
        torch.manual_seed(seed)
        meta = {"label": label, "kind": kind, "null_seed": s, "task": mb.task, "start": start, "before": before,
                "after": after, "steps": steps}
        train_task(model, task.train, steps=steps, batch_size=spec.batch_size, grad_accum=spec.grad_accum,
                   optim=OptimConfig.from_spec(spec.optimizer), seed=seed, accelerator=accelerator,
                   hooks=[_SaveAt(extra, meta)] if extra else (), task_name=f"null {label}")
        save_snapshot(model, folder, {**meta, "step": steps})
    return out
