"""Published results: the tables of finished runs in ``data/results/``, never their weights.

``make results`` (``forgetting results --profile full``) runs every seed of the profile in the user
cache, computes the mechanism report and the dynamics there, and copies the *tables* (manifest, state,
evaluations, analysis, dynamics; a few hundred kB per run) into ``data/results/<run name>/``, where
:func:`forgetting.profiles.result_dir` finds them by spec hash and code fingerprint. Weights (tens of
MB per run) stay in the cache: when a published run's tables must be recomputed (the mechanism code
changed), :func:`with_weights` re-runs its spec into the cache first, so a reader never needs the
weights of a published run and never gets a stale table.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from forgetting import paths

#: What a published run folder holds (whatever of it the run has).
TABLE_FILES = ("manifest.json", "state.json", "evals.parquet", "train_log.parquet", "reference.parquet",
               "dynamics.parquet", "dynamics.json")
TABLE_DIRS = ("analysis",)
WEIGHTS_DIR = "snapshots"


def has_weights(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds its snapshots (a run folder, not a published copy of its tables)."""
    return (Path(run_dir) / WEIGHTS_DIR).is_dir()


def cache_twin(run_dir: str | Path) -> Path:
    """Where the weights of a published run live when re-run: ``<cache>/runs/<same name>``."""
    return paths.cache_dir() / "runs" / Path(run_dir).name


def current_copy(run_dir: str | Path, is_current: Callable[[Path], bool]) -> Path | None:
    """The first of ``run_dir`` and its :func:`cache_twin` whose stored tables ``is_current`` accepts
    (a published run's tables may have been recomputed in the cache), else ``None``."""
    for folder in (Path(run_dir), cache_twin(run_dir)):
        if is_current(folder):
            return folder
    return None


def with_weights(run_dir: str | Path, *, progress: bool = True) -> Path:
    """``run_dir`` if it has its snapshots, else its spec re-run (or resumed) into :func:`cache_twin`."""
    run_dir = Path(run_dir)
    if has_weights(run_dir):
        return run_dir
    from forgetting.experiments import parse_spec
    from forgetting.profiles import load_run
    from forgetting.train.sequence import run_experiment

    spec = parse_spec(load_run(run_dir).manifest["spec"])
    return run_experiment(spec, cache_twin(run_dir), progress=progress)


def publish_run(run_dir: str | Path, results_dir: str | Path | None = None) -> Path:
    """Copy the tables of ``run_dir`` into ``results_dir/<run folder name>`` (default ``data/results``),
    replacing an earlier copy in one move: a reader sees the old folder or the new one, never a mix."""
    run_dir = Path(run_dir)
    if not (run_dir / "state.json").is_file():
        raise ValueError(f"run_dir: {run_dir} is not a finished run folder (no state.json)")
    target = Path(results_dir or paths.DATA_DIR / "results") / run_dir.name
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}-", dir=target.parent))
    for name in TABLE_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, staging / name)
    for name in TABLE_DIRS:
        if (run_dir / name).is_dir():
            shutil.copytree(run_dir / name, staging / name)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)
    return target


def make_results(profile: str = "full", *, progress: bool = True) -> list[Path]:
    """Run every seed of ``profile`` in the cache (main sequence and dynamics), compute the mechanism
    report and the dynamics, run the task-similarity sweep (first seed), and publish the tables;
    returns the published folders. Resumable: runs and tables already in the cache are reused."""
    from forgetting.analysis import analysis_for
    from forgetting.dynamics import dynamics_for, dynamics_spec
    from forgetting.profiles import experiment_spec, run_name, seeds
    from forgetting.train.sequence import run_experiment

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
    from forgetting.similarity import pairwise_sweep

    sweep = pairwise_sweep(profile=profile, seed=seeds(profile)[0], progress=progress)
    published += [publish_run(folder) for folder in sweep["run"] if has_weights(folder)]
    return published
