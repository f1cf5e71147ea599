"""The mechanism report of a finished run: drift, gradient alignment, curvature and head disruption,
measured on the run's own snapshots and task data, stored beside it with provenance.

For every training stage ``i >= 2`` (task ``i`` trained after the earlier tasks ``j < i``) and every
earlier task ``j``, on ``j``'s eval examples, between the snapshot before stage ``i`` (end of stage
``i-1``) and after it (end of stage ``i``):

- ``drift.parquet``: linear CKA per layer of the residual stream (hidden state after each block, mean
  over the example's tokens), before vs after (:func:`forgetting.mechanisms.drift.cka_by_layer`).
  With ``nulls=True``, also before vs two nulls (a drift counts only where it stands clear of both), column ``null``: ``continue`` (task ``i-1`` trained further for as many steps as task
  ``i`` got) and ``reseed`` (task ``i-1`` re-trained from the same start with another seed); made and
  cached by :func:`forgetting.nulls.null_snapshots`; :data:`NULL_SEEDS` of each kind, told apart by
  ``null_seed``. The observed rows have ``null = ""``. Rows for ``readout`` (``mean`` over the prompt's
  tokens, ``last`` prompt token) x ``debiased`` (biased and debiased CKA) sit side by side.
- ``gradients.parquet``: alignment of task ``j``'s loss gradient with task ``i``'s, at the snapshot
  before stage ``i``, per matrix, head, layer and for the whole model
  (:func:`forgetting.mechanisms.gradients.task_alignment`); cosine < 0 is a conflict.
- ``gradient_null.parquet``: the noise floor of that alignment, the cosine between the gradients of two
  disjoint halves of task ``j``'s own examples at the same snapshot
  (:func:`forgetting.mechanisms.gradients.split_half_null`): an old-vs-new cosine in a unit whose
  split-half cosine is near 0 cannot be read.
- ``curvature.parquet``: the top and the most negative Hessian eigenvalue (``lambda_max``,
  ``lambda_min``) of task ``j``'s loss (all trainable weights, one Lanczos run) before and after, next
  to the loss itself: curvature rises with the loss, so ``lambda_max / loss`` is reported too.
- ``heads.parquet``: per-head disruption before vs after (attention JS divergence, entropy change,
  output similarity, weight change; :func:`forgetting.mechanisms.heads.head_disruption`), column
  ``null`` as in ``drift`` (with ``nulls=True`` the same measures between before and each null).
- ``head_severity.parquet`` (with ``nulls=True``; empty otherwise): every head judged against the null
  heads by :func:`forgetting.mechanisms.heads.severe_heads` (alpha 0.05, standardised per layer): a
  head is severe only where it moved more than the continue and the reseed null both let heads move.
  The combined score includes the ablation effect (``ablation_effect_*`` metric rows of ``heads``);
  ``null_rate`` is the chance rate: the fraction the same rule finds when one null snapshot is judged
  against the others.

Every table carries ``stage`` (the stage whose training is analysed), ``new_task`` and ``old_task``.
The tables are those of the registered measures (:mod:`forgetting.measures`), in registration order:
a new measure's tables join the report with its registration.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.files import atomic_write_json, atomic_write_table, provenance
from forgetting.measures import Probe, measures, report_tables
from forgetting.nulls import null_snapshots
from forgetting.runs import Run, RunLayout, code_fingerprint, stored_or_compute
from forgetting.train import with_weights

# The modules whose code determines the analysis tables (besides the run itself): a change in any
# of them makes :func:`analysis_for` recompute instead of reusing stored tables.
ANALYSIS_CODE = ("analysis/report.py", "measures.py", "mechanisms", "nulls.py")
#: Null snapshots per kind and pair. With two of each, the chance rate of a rule judges one null snapshot
#: against three others of both kinds, as the observed pair is judged against all four.
NULL_SEEDS = 2


def _all_stages(run: Run) -> list[int]:
    """Every stage with an earlier task: 2..T."""
    return list(range(2, len(run.task_names) + 1))


def analyze_run(
    run_dir: str | Path,
    *,
    stages: list[int] | None = None,
    n_examples: int = 60,
    batch_size: int = 64,
    hessian_iters: int = 20,
    nulls: bool = False,
    progress: bool = True,
) -> Path:
    """Compute the four tables for ``stages`` (default: every stage from 2 on) and write them into
    ``run_dir/analysis/`` with a ``manifest.json`` (run spec hash, arguments, provenance). Returns that
    folder. ``n_examples`` caps each old task's eval examples."""
    run = Run.open(run_dir)
    completed = run.evals["stage"].max()
    wanted = _all_stages(run) if stages is None else stages
    bad = [s for s in wanted if not 2 <= s <= completed]
    if bad:
        raise SpecError("--stages", f"{bad} not analysable; allowed: 2..{completed} (stages with an earlier task)")
    tasks = run.tasks
    registered = measures()
    tables: dict[str, list[pd.DataFrame]] = {t: [] for t in report_tables()}
    null_folders = {
        s: null_snapshots(run, before=run.stage_label(s - 1), after=run.stage_label(s), kinds=("continue", "reseed"),
                          seeds=null_seeds(run.seed), progress=progress)
        for s in wanted
    } if nulls else {}
    jobs = [(s, j) for s in wanted for j in range(s - 1)]
    bar = tqdm(jobs, desc="analyze", disable=not progress or paths.quiet())
    for stage, j in bar:
        new, old = tasks[stage - 1], tasks[j]
        bar.set_postfix(stage=stage, old=old.name, refresh=False)
        keys = {"stage": stage, "new_task": new.name, "old_task": old.name}
        examples, new_examples = old.eval.select(slice(0, n_examples)), new.train.select(slice(0, n_examples))

        def probe(ref) -> Probe:
            return Probe(run.model_at(ref), examples, new.train, new_examples, batch_size, hessian_iters, n_examples)

        at_before = probe(stage - 1)
        before = {m.name: m.record(at_before) for m in registered if m.record}
        for m in registered:
            if m.at_start:
                _extend(tables, m.at_start(at_before, keys))
        at_after = probe(stage)
        for m in registered:
            if m.report:
                _extend(tables, m.report(before[m.name], m.record(at_after), keys), **({"null": ""} if m.nulls else {}))
        for null_label, folder in null_folders.get(stage, {}).items():
            kind, null_seed = null_label.split("-seed")
            at_null = probe(folder)
            for m in registered:
                if m.report and m.nulls:
                    _extend(tables, m.report(before[m.name], m.record(at_null), keys), null=kind,
                            null_seed=int(null_seed))
    joined = {name: pd.concat(parts, ignore_index=True) if parts else pd.DataFrame() for name, parts in tables.items()}
    for m in registered:
        if m.derive:
            joined.update(m.derive(joined))
    out = run.layout.analysis
    for name, table in joined.items():
        atomic_write_table(out / f"{name}.parquet", table)
    atomic_write_json(_manifest(run.layout), {
        "run_spec_hash": run.manifest["spec_hash"], "stages": wanted, "n_examples": n_examples,
        "hessian_iters": hessian_iters, "nulls": nulls, "tables": list(report_tables()),
        "analysis_code": code_fingerprint(ANALYSIS_CODE), **provenance(),
    })
    return out


def null_seeds(seed: int, n: int = NULL_SEEDS) -> tuple[int, ...]:
    """The seeds of a run's null snapshots: ``seed + 1 .. seed + n`` (never the run's own, which a reseed
    null must differ from)."""
    return tuple(seed + k for k in range(1, n + 1))


def _extend(tables: dict[str, list[pd.DataFrame]], new: dict[str, pd.DataFrame], **columns) -> None:
    for name, df in new.items():
        tables[name].append(df.assign(**columns) if columns else df)


def _manifest(layout: RunLayout) -> Path:
    return layout.analysis_manifest


def _tables(layout: RunLayout) -> list[Path]:
    return [layout.analysis / f"{name}.parquet" for name in report_tables()]


def load_analysis(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The tables written by :func:`analyze_run`, by name."""
    layout = RunLayout(Path(run_dir))
    if not _manifest(layout).is_file():
        raise SpecError("DIR", f"{run_dir} has no analysis; run `forgetting analyze {run_dir}`")
    return {name: pd.read_parquet(path) for name, path in zip(report_tables(), _tables(layout))}


def analysis_for(
    run_dir: str | Path,
    *,
    stages: list[int] | None = None,
    n_examples: int = 60,
    hessian_iters: int = 20,
    nulls: bool = True,
    progress: bool = True,
    stored_only: bool = False,
) -> dict[str, pd.DataFrame]:
    """The analysis tables of ``run_dir``: read back when a stored analysis was made with the same
    arguments by the same mechanism code, else computed by :func:`analyze_run` (and stored);
    ``stored_only=True`` raises :class:`LookupError` instead of computing.

    A published run (tables only, :mod:`forgetting.publish`) whose tables are stale is re-run into
    the cache and analysed there (:func:`forgetting.runs.cache.stored_or_compute`). This is what chapters
    call: the first chapter that needs the report pays for it, later ones read it.
    """
    key = {"stages": _all_stages(Run.open(run_dir)) if stages is None else list(stages),
           "n_examples": n_examples, "hessian_iters": hessian_iters, "nulls": nulls,
           "tables": list(report_tables()), "analysis_code": code_fingerprint(ANALYSIS_CODE)}
    return stored_or_compute(
        run_dir, key=key, manifest=_manifest, outputs=_tables, read=load_analysis, what="analysis",
        stored_only=stored_only, weights=lambda folder: with_weights(folder, progress=progress),
        compute=lambda folder: analyze_run(folder, stages=stages, n_examples=n_examples,
                                           hessian_iters=hessian_iters, nulls=nulls, progress=progress),
    )
