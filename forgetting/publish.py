"""Published results: the tables of finished runs in ``data/results/``, never their weights.

``make results`` (``forgetting results --profile full``) runs every seed of the profile in the user
cache, computes the mechanism report and the dynamics there, and copies the *tables* (manifest, state,
evaluations, analysis, dynamics; a few hundred kB per run) into ``data/results/<run name>/``, where
:func:`forgetting.runs.cache.result_dir` finds them by spec hash and code fingerprint. Weights (tens of
MB per run) stay in the cache: when a published run's tables must be recomputed (the mechanism code
changed), :func:`forgetting.train.sequence.with_weights` re-runs its spec into the cache first, so a reader never
needs the weights of a published run and never gets a stale table.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from forgetting import paths
from forgetting.analysis import analysis_for
from forgetting.dynamics import dynamics_for, dynamics_spec
from forgetting.errors import SpecError
from forgetting.files import atomic_dir
from forgetting.profiles import experiment_spec, seeds
from forgetting.runs import RunLayout, cache_twin, has_weights, run_name
from forgetting.runs.layout import TABLE_DIRS, TABLE_FILES
from forgetting.sweep import pairwise_sweep
from forgetting.train import run_experiment


def publish_run(run_dir: str | Path, results_dir: str | Path | None = None) -> Path:
    """Copy the tables of ``run_dir`` into ``results_dir/<run folder name>`` (default ``data/results``),
    replacing an earlier copy in one move: a reader sees the old folder or the new one, never a mix."""
    run_dir = Path(run_dir)
    if not RunLayout(run_dir).state.is_file():
        raise SpecError("run_dir", f"{run_dir} is not a finished run folder (no state file)")
    target = Path(results_dir or paths.DATA_DIR / "results") / run_dir.name
    with atomic_dir(target) as staging:
        for name in TABLE_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, staging / name)
        for name in TABLE_DIRS:
            if (run_dir / name).is_dir():
                shutil.copytree(run_dir / name, staging / name)
    return target


def make_results(profile: str = "full", *, progress: bool = True) -> list[Path]:
    """Run every seed of ``profile`` in the cache (main sequence and dynamics), compute the mechanism
    report and the dynamics, run the task-similarity sweep (first seed), and publish the tables;
    returns the published folders. Resumable: runs and tables already in the cache are reused."""
    published = []
    for seed in seeds(profile):
        main = experiment_spec(profile, seed=seed)
        folder = run_experiment(main, cache_twin(run_name(main)), progress=progress)
        analysis_for(folder, progress=progress)
        published.append(publish_run(folder))
        dyn = dynamics_spec(profile, seed=seed)
        folder = run_experiment(dyn, cache_twin(run_name(dyn)), progress=progress)
        dynamics_for(folder, progress=progress)
        published.append(publish_run(folder))
    sweep = pairwise_sweep(profile=profile, seed=seeds(profile)[0], progress=progress)
    published += [publish_run(folder) for folder in sweep["run"] if has_weights(folder)]
    return published
