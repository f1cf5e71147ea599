"""Profiles: the one place that says how big an experiment is.

- ``quick`` (default; CI; CPU): one seed, a couple of minutes per chapter.
- ``full``: the published numbers: several seeds, so figures carry confidence intervals. Results are
  stored in ``data/results/`` with provenance by ``make results`` and reused when the spec hash matches.
- ``gpu``: a real hub model with LoRA, for Colab with a GPU (never run here: no hub access).

Chapters call :func:`experiment_spec` and :func:`run_cached`; no chapter hard-codes a size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.experiments import ExperimentSpec, load_spec

# "sweep": the task-similarity sweep of forgetting.similarity.pairwise_sweep (every ordered pair of
# "tasks", each trained for "steps" steps).
PROFILES = {
    "quick": {"spec": "quick.yaml", "seeds": (0,),
              "sweep": {"tasks": ("recall_city", "recall_job", "update_city", "sort"), "steps": 100}},
    "full": {"spec": "full.yaml", "seeds": (0, 1, 2, 3, 4),
             "sweep": {"tasks": ("recall_city", "recall_job", "recall_color", "update_city", "sort", "reverse"),
                       "steps": 200}},
    "gpu": {"spec": "gpu.yaml", "seeds": (0, 1, 2),
            "sweep": {"tasks": ("recall_city", "recall_job", "update_city", "sort", "reverse"), "steps": 300}},
}


def _check(profile: str) -> dict:
    if profile not in PROFILES:
        raise SpecError("profile", f"{profile!r} not allowed; allowed: {', '.join(PROFILES)}")
    return PROFILES[profile]


def seeds(profile: str) -> tuple[int, ...]:
    """The seeds a profile runs."""
    return _check(profile)["seeds"]


def sweep_settings(profile: str) -> dict:
    """The profile's task-similarity sweep: ``{"tasks": (...), "steps": steps per task}``."""
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
    from forgetting.experiments import parse_spec

    return parse_spec(data, source=f"profile {profile}")


# The modules whose code determines a run's numbers: a change in any of them gives new run folders,
# so a cached run is never reused with numbers the current code would not produce.
RUN_CODE = ("train", "tasks", "evaluate.py", "experiments.py", "models/embedded.py")


def code_only(source: str) -> str:
    """The source's syntax tree without docstrings (comments are not in it): what the code *does*, so
    editing a docstring or a comment does not invalidate cached runs."""
    import ast

    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def code_fingerprint(entries: tuple[str, ...] = RUN_CODE) -> str:
    """Short sha256 (8 hex digits) of the code of the package modules ``entries`` (default ``RUN_CODE``),
    docstrings and comments excluded (:func:`code_only`)."""
    import hashlib

    digest = hashlib.sha256()
    for entry in entries:
        target = paths.PACKAGE_DIR / entry
        for file in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            digest.update(file.relative_to(paths.PACKAGE_DIR).as_posix().encode())
            digest.update(code_only(file.read_text(encoding="utf-8")).encode())
    return digest.hexdigest()[:8]


def run_name(spec: ExperimentSpec) -> str:
    """``<spec name>-<spec hash>-<code fingerprint>``: the folder name of a cached run."""
    return f"{spec.name}-{spec.hash()}-{code_fingerprint()}"


def result_dir(spec: ExperimentSpec) -> Path:
    """Where a spec's run lives: ``data/results/`` when published there, else the user cache."""
    name = run_name(spec)
    published = paths.DATA_DIR / "results" / name
    if (published / "state.json").is_file():
        return published
    return paths.cache_dir() / "runs" / name


def run_cached(spec: ExperimentSpec, *, progress: bool = True, publish: bool = False) -> Path:
    """Run ``spec`` unless a complete run with the same hash exists (resuming a partial one).

    ``publish=True`` writes into ``data/results/`` (what ``make results`` does).
    """
    from forgetting.train.sequence import run_experiment

    out = paths.DATA_DIR / "results" / run_name(spec) if publish else result_dir(spec)
    return run_experiment(spec, out, progress=progress)


@dataclass
class RunResult:
    """A finished run read back from its folder."""

    folder: Path
    manifest: dict
    evals: pd.DataFrame
    train_log: pd.DataFrame
    reference: pd.DataFrame | None

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])


def load_run(folder: str | Path) -> RunResult:
    """Read a run folder written by :func:`forgetting.train.sequence.run_experiment`."""
    from forgetting.results import read_json
    from forgetting.train.sequence import EVALS, MANIFEST, REFERENCE, TRAIN_LOG

    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise SpecError("DIR", f"{folder} is not a run folder (no {MANIFEST})")
    ref = folder / REFERENCE
    return RunResult(
        folder=folder,
        manifest=read_json(folder / MANIFEST),
        evals=pd.read_parquet(folder / EVALS),
        train_log=pd.read_parquet(folder / TRAIN_LOG) if (folder / TRAIN_LOG).is_file() else pd.DataFrame(),
        reference=pd.read_parquet(ref) if ref.is_file() else None,
    )


def run_profile(profile: str = "quick", *, model: str | None = None, seed: int = 0, progress: bool = True) -> list[RunResult]:
    """Run (or reuse) the profile's spec for each of its seeds; ``quick`` runs only ``seed``.

    The result tables of all runs are returned with a ``seed`` column added, ready to concatenate.
    """
    runs = []
    for s in (seed,) if profile == "quick" else seeds(profile):
        result = load_run(run_cached(experiment_spec(profile, model=model, seed=s), progress=progress))
        for table in (result.evals, result.train_log, result.reference):
            if table is not None and not table.empty:
                table["seed"] = s
        runs.append(result)
    return runs
