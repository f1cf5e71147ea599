"""Profiles: the one place that says how big an experiment is.

- ``quick`` (default; CI; CPU): one seed, a couple of minutes per chapter.
- ``full``: the published numbers: several seeds, so figures carry confidence intervals. Results are
  stored in ``data/results/`` with provenance by ``make results`` and reused when the spec hash matches.
- ``gpu``: a real hub model with LoRA, for Colab with a GPU (never run here: no hub access).

Chapters call :func:`experiment_spec` and :func:`run_cached` (or :func:`run_profile`), and read the
runs with :class:`forgetting.runs.run.Run`; no chapter hard-codes a size. The quick profile's runs
are published in ``data/results/`` (tables only), so a fresh machine (a Colab VM) draws a chapter's
tables without training; a cell that needs the weights asks :func:`with_snapshots`, which trains the
run then (and says whether the weights trained here are those the tables came from).
``FORGETTING_RETRAIN=1`` trains every quick run instead (:func:`forgetting.paths.retrain`).
"""

from __future__ import annotations

import warnings
from pathlib import Path

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.runs import Run
from forgetting.runs.integrity import WeightsMismatch, check_pairing
from forgetting.runs.cache import has_weights, published_dir, result_dir
from forgetting.runs.checksums import check_files, read_record, record_files
from forgetting.runs.layout import RunLayout
from forgetting.spec import ExperimentSpec, load_spec, parse_spec
from forgetting.train import run_experiment, with_weights

# "sweep": the task-similarity sweep of forgetting.sweep.sweep_table: every ordered pair of "tasks", each
# task trained for "steps" steps at learning rate "lr" (None: the profile spec's), once per seed of
# "seeds". The full sweep's (steps, lr) was chosen by the rule in forgetting.sweep.pairs (A learned after
# stage 1, forgetting graded, cost): at the spec's 200 steps and lr 2e-3 every pair forgot almost all of A.
PROFILES = {
    "quick": {"spec": "quick.yaml", "seeds": (0,),
              "sweep": {"tasks": ("recall_city", "recall_job", "update_city", "sort"), "steps": 100, "lr": None,
                        "seeds": (0,)}},
    "full": {"spec": "full.yaml", "seeds": (0, 1, 2, 3, 4),
             "sweep": {"tasks": ("recall_city", "recall_job", "recall_color", "recall_pet", "recall_food",
                                 "recall_sport", "update_city", "update_job", "copy", "reverse", "sort", "add"),
                       "steps": 50, "lr": 2.0e-3, "seeds": (0, 1, 2)}},
    "gpu": {"spec": "gpu.yaml", "seeds": (0, 1, 2),
            "sweep": {"tasks": ("recall_city", "recall_job", "update_city", "sort", "reverse"), "steps": 300, "lr": None,
                      "seeds": (0,)}},
}


def _check(profile: str) -> dict:
    if profile not in PROFILES:
        raise SpecError("profile", f"{profile!r} not allowed; allowed: {', '.join(PROFILES)}")
    return PROFILES[profile]


def seeds(profile: str) -> tuple[int, ...]:
    """The seeds a profile runs."""
    return _check(profile)["seeds"]


def sweep_settings(profile: str) -> dict:
    """The profile's task-similarity sweep: ``{"tasks": (...), "steps": steps per task, "lr": learning rate
    or None (the spec's), "seeds": (...)}``."""
    return _check(profile)["sweep"]


def experiment_spec(profile: str = "quick", *, model: str | None = None, seed: int | None = None, **overrides) -> ExperimentSpec:
    """The profile's spec (``data/specs/<profile>.yaml``), with ``model``, ``seed`` and top-level overrides."""
    base = load_spec(paths.SPECS_DIR / _check(profile)["spec"])
    data = base.model_dump(mode="json")
    if model is not None:
        data["model"] = model
    if seed is not None:
        data["seed"] = seed
    data.update(overrides)
    return parse_spec(data, source=f"profile {profile}")


def run_cached(spec: ExperimentSpec, *, progress: bool = True, publish: bool = False) -> Path:
    """Run ``spec`` unless a complete run with the same hash exists (resuming a partial one).

    ``publish=True`` writes into ``data/results/`` (what ``make results`` does). A run folder with
    weights is checked against its ``checksums.json`` before it is resumed and recorded again when it
    progressed (:mod:`forgetting.runs.checksums`).
    """
    out = published_dir(spec) if publish else result_dir(spec)
    state = RunLayout(out).state
    before = state.read_bytes() if state.is_file() else None
    if before is not None and not publish:
        check_files(out)
    run_experiment(spec, out, progress=progress)
    if not publish and has_weights(out) and (state.read_bytes() != before or read_record(out) is None):
        record_files(out)
    return out


def run_profile(profile: str = "quick", *, model: str | None = None, seed: int = 0, progress: bool = True) -> list[Run]:
    """Run (or reuse) the profile's spec for each of its seeds; ``quick`` runs only ``seed``.

    The result tables of all runs are returned with a ``seed`` column added, ready to concatenate.
    """
    runs = []
    for s in (seed,) if profile == "quick" else seeds(profile):
        result = Run.open(run_cached(experiment_spec(profile, model=model, seed=s), progress=progress))
        for table in (result.evals, result.train_log, result.reference):
            if table is not None and not table.empty:
                table["seed"] = s
        runs.append(result)
    return runs


class RetrainedWeights(UserWarning):
    """The weights a cell reads were trained here and differ from those its run's tables came from."""


def with_snapshots(run: Run, *, progress: bool = True) -> Run:
    """``run`` with its snapshots on disk: itself when it has them, else its spec trained (or resumed)
    into its cache twin (:func:`forgetting.train.sequence.with_weights`; minutes for a quick run).

    The twin's snapshots are compared with the checksums the published tables were computed from
    (:func:`forgetting.runs.integrity.check_pairing`). Where they differ (another CPU or thread count
    trains other bits), the tables already shown stay the published ones and what is computed from
    the returned run's weights is not: this is said in the cell's output and as a
    :class:`RetrainedWeights` warning, with the switch that makes both one set (``FORGETTING_RETRAIN=1``).
    """
    if run.has_weights:
        return run
    folder = with_weights(run.folder, progress=progress)
    try:
        check_pairing(run.folder, folder)
    except WeightsMismatch as mismatch:
        message = (f"Note: the weights of {run.folder.name} were trained on this machine and differ from those its "
                   f"published tables were computed from ({str(mismatch).split(': ', 1)[-1].split('.')[0]}). "
                   "The tables and charts above are the published ones; what this cell computes from the weights "
                   "is not. For one consistent set, set FORGETTING_RETRAIN=1 and run the chapter again (it then "
                   "trains every run here).")
        print(message)
        warnings.warn(message, RetrainedWeights, stacklevel=2)
    return Run.open(folder)
