"""The restoration studies of a finished run, stored beside it: where does forgetting live?

For every adjacent pair of a run (stage ``s >= 2``; old task = the task of stage s-1, new task = that of
stage s; ``before`` = the snapshot at the end of stage s-1, ``after`` = the end of stage s), on the old
task's first ``n_examples`` eval examples (those the mechanism report reads) and its loss
(``forgetting.mechanisms.loss_gradients.task_loss``, the mean over target tokens, which is the
``loss`` of the run's evaluations), the studies of :mod:`forgetting.causal.studies` (layers, groups,
matrix types, the most disrupted heads against random heads of the same layers, attention + MLP and
their interaction) and the re-training probe of :mod:`forgetting.causal.spurious`, one row per
``(stage, new_task, old_task, study, part, draw)`` (columns: :data:`forgetting.causal.studies.CAUSAL_COLUMNS`).

The heads are ranked by the run's mechanism report (:func:`forgetting.analysis.report.analysis_for`, table
``head_severity``) of the folder whose weights are restored, so the ranking and the restoration read
the same weights (re-training a published run's spec need not reproduce its weights bit for bit).

:func:`causal_for` computes the table once and stores it in the run folder (``causal.parquet`` with a
manifest holding the arguments and a fingerprint of the code: :data:`CAUSAL_CODE`), and reads it back
later; a published run (tables only) is handled like :func:`~forgetting.analysis.report.analysis_for` does
(:func:`forgetting.runs.cache.stored_or_compute`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from forgetting import paths
from forgetting.analysis import analysis_for
from forgetting.analysis.report import ANALYSIS_CODE
from forgetting.causal.restore import loss_value
from forgetting.causal.spurious import retrained_loss
from forgetting.causal.studies import (
    CAUSAL_COLUMNS,
    causal_row,
    ranked_heads,
    restoration_rows,
)
from forgetting.errors import SpecError
from forgetting.files import atomic_write_json, atomic_write_table, provenance
from forgetting.mechanisms.loss_gradients import task_loss
from forgetting.runs import Run, RunLayout, code_fingerprint, stored_or_compute
from forgetting.spec import stage_seed
from forgetting.train import OptimConfig, make_accelerator, with_weights

__all__ = ["CAUSAL_CODE", "adjacent_stages", "causal_for", "causal_run", "load_causal"]

#: The code that determines the table besides the run (this package and the mechanism report that ranks
#: the heads); a change in any of them makes :func:`causal_for` recompute.
CAUSAL_CODE = ("causal", *ANALYSIS_CODE)


def adjacent_stages(run: Run) -> list[int]:
    """The stages with an adjacent old task: 2..T."""
    return list(range(2, len(run.task_names) + 1))


def causal_run(
    run_dir: str | Path,
    *,
    head_severity: pd.DataFrame | None = None,
    n_examples: int = 60,
    draws: int = 20,
    ks: Sequence[int] | None = None,
    spurious_n: Sequence[int] = (8, 32),
    spurious_steps: int = 20,
    batch_size: int = 64,
    progress: bool = True,
) -> Path:
    """Compute the table for every adjacent pair of ``run_dir`` (which must hold its snapshots) and write
    it there with its manifest; returns the table's path.

    ``head_severity``: the mechanism report's table ranking the heads (``None`` or empty: no head rows);
    ``ks``, ``draws``: see :func:`~forgetting.causal.studies.restoration_rows`; ``spurious_n``: the
    numbers of old-task train examples of the probe (``()``: no probe), ``spurious_steps`` its steps.
    """
    run = Run.open(run_dir)
    stages = adjacent_stages(run)
    missing = [s for s in stages if s not in run.stages]
    if missing:
        raise SpecError("DIR", f"{run_dir}: stages {missing} are not finished; the causal studies need every stage")
    tasks, spec = run.tasks, run.spec
    before = run.load_model()[0]  # a second model object: run.model_at shares one between its calls
    accelerator = make_accelerator() if spurious_n else None
    optim = OptimConfig.from_spec(spec.optimizer)
    severity = head_severity if head_severity is not None else pd.DataFrame()
    parts, seconds = [], {}
    for stage in tqdm(stages, desc="causal", disable=not progress or paths.quiet()):
        start = time.perf_counter()
        new, old = tasks[stage - 1], tasks[stage - 2]
        examples = old.eval.select(slice(0, n_examples))

        def loss_fn(model, examples=examples) -> float:
            return task_loss(model, examples, batch_size=batch_size)

        run.load_into(before, stage - 1)
        after = run.model_at(stage)
        losses = (loss_value(loss_fn, before), loss_value(loss_fn, after))
        rows = restoration_rows(before, after, loss_fn, ranked=ranked_heads(severity, stage, old.name), ks=ks,
                                draws=draws, seed=(run.seed, stage), losses=losses)
        probe = {"steps": spurious_steps, "batch_size": spec.batch_size, "optim": optim,
                 "seed": stage_seed(run.seed, stage), "accelerator": accelerator}
        for n in spurious_n:
            loss, count = retrained_loss(after, old.train, loss_fn, n=n, **probe)
            rows.append(causal_row("spurious", f"n={n}", count, loss, losses))
        if spurious_n:
            control = run.load_into(before, stage - 2)  # the model before the old task was trained
            for n in spurious_n:
                loss, count = retrained_loss(control, old.train, loss_fn, n=n, **probe)
                rows.append(causal_row("spurious_control", f"n={n}", count, loss, losses))
        parts.append(pd.DataFrame(rows).assign(stage=stage, new_task=new.name, old_task=old.name))
        seconds[stage] = round(time.perf_counter() - start, 2)
    table = pd.concat(parts, ignore_index=True)[list(CAUSAL_COLUMNS)]
    atomic_write_table(run.layout.causal, table)
    atomic_write_json(run.layout.causal_manifest, {
        "run_spec_hash": run.manifest["spec_hash"], **_key(run, n_examples, draws, ks, spurious_n, spurious_steps),
        "ranked_heads": not severity.empty, "seconds_per_stage": seconds, **provenance(),
    })
    return run.layout.causal


def _key(run: Run, n_examples: int, draws: int, ks: Sequence[int] | None, spurious_n: Sequence[int],
         spurious_steps: int) -> dict:
    return {"stages": adjacent_stages(run), "n_examples": n_examples, "draws": draws,
            "ks": None if ks is None else [int(k) for k in ks], "spurious_n": [int(n) for n in spurious_n],
            "spurious_steps": spurious_steps, "causal_code": code_fingerprint(CAUSAL_CODE)}


def load_causal(run_dir: str | Path) -> pd.DataFrame:
    """The table written by :func:`causal_run`."""
    layout = RunLayout(Path(run_dir))
    if not layout.causal_manifest.is_file():
        raise SpecError("DIR", f"{run_dir} has no causal studies; compute them with forgetting.causal.causal_for")
    return pd.read_parquet(layout.causal)


def causal_for(
    run_folder: str | Path,
    *,
    progress: bool = True,
    stored_only: bool = False,
    n_examples: int = 60,
    draws: int = 20,
    ks: Sequence[int] | None = None,
    spurious_n: Sequence[int] = (8, 32),
    spurious_steps: int = 20,
) -> pd.DataFrame:
    """The restoration studies of ``run_folder`` (module docstring): read back when stored with the same
    arguments by the same code (:data:`CAUSAL_CODE`), else computed by :func:`causal_run` and stored;
    ``stored_only=True`` raises :class:`LookupError` instead of computing.

    Computing needs the run's mechanism report (for the head ranking; computed and stored too when
    missing) and its weights: a published run (tables only) is re-run into the cache first, as
    :func:`~forgetting.analysis.report.analysis_for` does.
    """
    run_dir = Path(run_folder)
    key = _key(Run.open(run_dir), n_examples, draws, ks, spurious_n, spurious_steps)

    def compute(folder: Path) -> None:
        severity = analysis_for(folder, progress=progress)["head_severity"]
        causal_run(folder, head_severity=severity, n_examples=n_examples, draws=draws, ks=ks, spurious_n=spurious_n,
                   spurious_steps=spurious_steps, progress=progress)

    return stored_or_compute(
        run_dir, key=key, manifest=lambda layout: layout.causal_manifest, outputs=lambda layout: [layout.causal],
        compute=compute, read=load_causal, weights=lambda folder: with_weights(folder, progress=progress),
        stored_only=stored_only, what="causal studies",
    )
