"""How the mechanisms move together along training of a new task: the non-linear dynamics of forgetting.

The mechanism report (:mod:`forgetting.analysis`) compares the snapshots at stage ends. Here the same
measures are taken at many points *inside* one stage, so that their timing can be compared with the
timing of forgetting itself: does drift come before the old task's loss rises, or after? Does
interference fade once the old task is forgotten?

The experiment (:func:`dynamics_spec`) is the profile's spec reduced to two tasks, A then B
(``DYNAMICS_SEQUENCE``), with a snapshot every ``steps_per_task / 40`` steps and an evaluation at
each. At each analysed snapshot ``theta_s`` of stage B (``s`` = steps of B so far; ``s = 0`` is
the end of A), on A's eval examples (:func:`training_dynamics`):

- ``old_loss``: A's mean target-token cross-entropy ``L_A(theta_s)``; ``forgetting`` = ``L_A(theta_s) -
  L_A(theta_0)``;
- ``cka_<layer>`` and ``drift``: linear CKA of the residual stream (mean over tokens) at ``theta_s`` vs
  ``theta_0`` per layer, and ``drift = 1 - mean CKA`` over the intermediate layers
  (:func:`forgetting.mechanisms.drift.intermediate_layers`: every block output but the last);
- ``grad_cosine`` and ``grad_cosine_attention``: ``cos(g_A(theta_s), g_B(theta_s))`` over all weights and
  over the attention projections only (:func:`forgetting.mechanisms.gradients.gradient_alignment`);
- ``drift_last_debiased``: as ``drift`` with the last prompt token's residual stream and debiased CKA
  (n = 60 examples < d features, where biased CKA is inflated);
- ``lambda_max`` and ``lambda_max_per_loss``: the top Hessian eigenvalue of ``L_A`` at ``theta_s``
  (Lanczos) and its ratio to ``L_A`` (the curvature of cross-entropy rises with the loss itself);
  ``lambda_min``: the most negative eigenvalue (the other end of the same Lanczos run);
- ``head_js``: the mean over heads of the Jensen-Shannon divergence (bits) of A's attention patterns at
  ``theta_s`` vs ``theta_0``.

These rows have ``path = "forgetting"``. The *learning path* (``path = "learning"``) is A's own
training, stage 1: at the snapshots of stage 1 nearest to ``LEARNING_POINTS`` (``step`` = steps into
stage 1; ``s = 0`` is the base model) ``old_loss`` ``L_A``, ``lambda_max`` and ``lambda_min`` of A
(the measures with a ``learning`` entry in :mod:`forgetting.measures`). :func:`matched_loss` compares
the two paths' curvature at the same loss
(:func:`forgetting.mechanisms.matched_loss.matched_loss_curvature`): the top eigenvalue rises with the
loss, so "flatter after forgetting" is only meaningful at matched loss.

:func:`onset_steps` turns each series into the step where it first covers half of its total change
(``t50``), so that "which moves first" is one comparable number per measure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tqdm.auto import tqdm

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.files import atomic_write_json, atomic_write_table, provenance
from forgetting.measures import Probe, measures
from forgetting.mechanisms.matched_loss import matched_loss_curvature, matched_loss_summary
from forgetting.profiles import experiment_spec
from forgetting.runs import Run, RunLayout, code_fingerprint, stored_or_compute
from forgetting.runs.snapshots import snapshot_meta
from forgetting.spec import ExperimentSpec
from forgetting.train import with_weights

DYNAMICS_SEQUENCE = ("recall_city", "recall_job")
DYNAMICS_CODE = ("dynamics.py", "measures.py", "mechanisms")
#: Fractions of the stage at which snapshots are analysed (dense early, where forgetting happens).
DEFAULT_POINTS = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)
#: Fractions of stage 1 (the old task's own training) at which the learning path is measured (dense
#: early, where the loss falls).
LEARNING_POINTS = (0.0, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.65, 1.0)
#: What each measure means (for chart labels and the chapter's table).
MEASURES = {
    "forgetting": "old task's loss increase (nats/token)",
    "drift": "1 - mean CKA, intermediate layers",
    "drift_last_debiased": "1 - mean debiased CKA (last token), intermediate layers",
    "grad_cosine": "cos(g_old, g_new), all weights",
    "grad_cosine_attention": "cos(g_old, g_new), attention",
    "lambda_max": "top Hessian eigenvalue of the old loss",
    "lambda_max_per_loss": "lambda_max / old loss",
    "lambda_min": "most negative Hessian eigenvalue of the old loss",
    "head_js": "mean attention JS divergence (bits)",
}


def dynamics_spec(profile: str = "quick", *, model: str | None = None, seed: int | None = None) -> ExperimentSpec:
    """The profile's spec on ``DYNAMICS_SEQUENCE`` with a snapshot every ``steps_per_task // 40`` steps
    (at least 1) and an evaluation at each (the forgetting curve at snapshot resolution); no joint reference run."""
    base = experiment_spec(profile, model=model, seed=seed)
    if base.steps_per_task is None:
        raise SpecError("steps_per_task", f"profile {profile!r} trains by epochs; the dynamics need a step count")
    every = max(1, base.steps_per_task // 40)
    return experiment_spec(
        profile, model=model, seed=seed, sequence=list(DYNAMICS_SEQUENCE),
        snapshots={"every": every}, eval={**base.eval.model_dump(), "every": every},
        reference={"enabled": False},
    )


def _stage_points(run: Run, stage: int, points: tuple[float, ...]) -> list[tuple[int, Path]]:
    """``(steps into the stage, snapshot folder)`` nearest to each fraction of the stage, deduplicated."""
    folders = run.stage_snapshots(stage)
    steps = np.array([snapshot_meta(f)["step"] for f in folders])
    rel = steps - steps[0]
    chosen: dict[int, Path] = {}
    for fraction in points:
        i = int(np.argmin(np.abs(rel - fraction * rel[-1])))
        chosen[int(rel[i])] = folders[i]
    return sorted(chosen.items())


def training_dynamics(
    run_dir: str | Path,
    *,
    stage: int = 2,
    points: tuple[float, ...] = DEFAULT_POINTS,
    n_examples: int = 60,
    batch_size: int = 64,
    hessian_iters: int = 20,
    learning_points: tuple[float, ...] = LEARNING_POINTS,
    progress: bool = True,
) -> pd.DataFrame:
    """The measures of the module docstring at the snapshots of ``stage`` nearest to ``points``
    (fractions of the stage), for the old task = the task of stage ``stage - 1``, and its learning path
    at the snapshots of stage ``stage - 1`` nearest to ``learning_points`` (``()``: none).

    Returns a long DataFrame: ``path`` (``"forgetting"`` or ``"learning"``), ``step`` (steps into the
    stage of the path), ``snapshot``, ``measure``, ``layer`` (for ``cka``, else -1), ``value``, plus
    ``old_task`` and ``new_task``.
    """
    run = Run.open(run_dir)
    names = run.task_names
    if not 2 <= stage <= len(names):
        raise SpecError("stage", f"{stage} not allowed; allowed: 2..{len(names)}")
    chosen = _stage_points(run, stage, points)
    tasks = run.tasks
    old, new = tasks[stage - 2], tasks[stage - 1]
    traced = [m for m in measures() if m.trace]
    order = {name: i for i, name in enumerate(("old_loss", *MEASURES))}  # the table's row order per point
    examples, new_examples = old.eval.select(slice(0, n_examples)), new.train.select(slice(0, n_examples))
    rows: list[dict] = []
    start: dict | None = None
    for step, folder in tqdm(chosen, desc="dynamics", disable=not progress or paths.quiet()):
        probe = Probe(run.model_at(folder), examples, new.train, new_examples, batch_size, hessian_iters, n_examples,
                      head_ablation=None)  # the trace reads the heads' attention only
        now = {m.name: m.record(probe) if m.record else None for m in traced}
        start = now if start is None else start
        values: dict[str, float] = {}
        layer_values: list[tuple[str, int, float]] = []
        for m in traced:
            scalars, per_layer = m.trace(start[m.name], now[m.name], probe)
            values.update(scalars)
            layer_values += per_layer
        base = {"step": step, "snapshot": folder.name}
        ranked = sorted(values.items(), key=lambda kv: order.get(kv[0], len(order)))
        rows += [{**base, "measure": m, "layer": -1, "value": v} for m, v in ranked]
        rows += [{**base, "measure": m, "layer": layer, "value": v} for m, layer, v in layer_values]
    rows = [{"path": "forgetting", **r} for r in rows]
    learners = [m for m in measures() if m.learning and m.record]
    if learning_points and learners:
        for step, folder in tqdm(_stage_points(run, stage - 1, learning_points), desc="learning path",
                                 disable=not progress or paths.quiet()):
            probe = Probe(run.model_at(folder), examples, new.train, new_examples, batch_size, hessian_iters, n_examples)
            for m in learners:
                rows += [{"path": "learning", "step": step, "snapshot": folder.name, "measure": name, "layer": -1,
                          "value": v} for name, v in m.learning(m.record(probe)).items()]
    return pd.DataFrame(rows).assign(old_task=old.name, new_task=new.name)


def matched_loss(dynamics: pd.DataFrame, *, by: tuple[str, ...] = ("seed",)) -> pd.DataFrame:
    """Curvature at matched loss of each dynamics run (one row per value of the ``by`` columns present):
    ``value`` = ``D``, the mean over the forgetting path's points (``step > 0``: the point ``s = 0`` is
    the learning path's last point, ``d = 0`` by construction) of ``log lambda_max - ell(L_A)``, where
    ``ell`` interpolates the learning path's ``log lambda_max`` at the same ``L_A``
    (:func:`forgetting.mechanisms.matched_loss.matched_loss_curvature`, points outside the loss range
    both paths cover are left out); ``n_matched``, ``n_points``, ``loss_low``, ``loss_high`` and
    ``max_bracket`` (the widest loss interval of the learning path interpolated across: the loss falls
    fast early in stage 1, so at snapshot resolution the learning path can jump over most of the
    forgetting path's losses). ``value < 0``: flatter after forgetting than while learning, at the same loss.
    """
    if "path" not in dynamics.columns or not (dynamics["path"] == "learning").any():
        raise SpecError("dynamics", "no learning-path rows (path == 'learning'); recompute the dynamics")
    keys = [c for c in by if c in dynamics.columns]
    rows = []
    for key, df in (dynamics.groupby(keys, sort=True) if keys else [((), dynamics)]):
        wide = df[df["layer"] == -1].pivot_table(index=["path", "step"], columns="measure", values="value")
        learn, forget = wide.loc["learning"], wide.loc["forgetting"]
        forget = forget[forget.index > 0]
        points = matched_loss_curvature(learn["old_loss"], learn["lambda_max"], forget["old_loss"], forget["lambda_max"])
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **matched_loss_summary(points)})
    return pd.DataFrame(rows)


def _manifest(layout: RunLayout) -> Path:
    return layout.dynamics_manifest


def _read(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(RunLayout(folder).dynamics)


def dynamics_for(run_dir: str | Path, *, progress: bool = True, stored_only: bool = False, **kwargs) -> pd.DataFrame:
    """:func:`training_dynamics` of ``run_dir``, stored beside the run and read back when the arguments
    and the measuring code are unchanged (a stale published run is re-run into the cache first:
    :func:`forgetting.runs.cache.stored_or_compute`); ``stored_only=True`` raises :class:`LookupError` instead."""
    key = {"arguments": {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(kwargs.items())},
           "measures": [m.name for m in measures() if m.trace], "code": code_fingerprint(DYNAMICS_CODE)}

    def compute(folder: Path) -> None:
        layout = RunLayout(folder)
        atomic_write_table(layout.dynamics, training_dynamics(folder, progress=progress, **kwargs))
        atomic_write_json(layout.dynamics_manifest, {**key, **provenance()})

    return stored_or_compute(
        run_dir, key=key, manifest=_manifest, outputs=lambda layout: [layout.dynamics], compute=compute,
        read=_read, weights=lambda folder: with_weights(folder, progress=progress), stored_only=stored_only,
        what="dynamics",
    )


def onset_steps(dynamics: pd.DataFrame, fraction: float = 0.5) -> pd.DataFrame:
    """Per measure (and any grouping column such as ``seed``): ``t50``, the first step at which
    ``|x(s) - x(0)|`` reaches ``fraction`` of ``max_s |x(s) - x(0)|``, and ``total_change`` =
    ``x(end) - x(0)``. A measure that never moves has ``t50`` NaN. Only the forgetting path's rows
    (``path == "forgetting"`` where that column exists) count.

    Comparing ``t50`` of a mechanism with ``t50`` of ``forgetting`` says which moved first.
    """
    if not 0 < fraction <= 1:
        raise SpecError("fraction", f"must be in (0, 1], got {fraction}")
    groups = [c for c in ("seed", "measure") if c in dynamics.columns]
    df = dynamics[dynamics["layer"] == -1]
    if "path" in df.columns:  # the forgetting path only (the learning path is another stage)
        df = df[df["path"] == "forgetting"]
    rows = []
    for key, series in df.groupby(groups):
        series = series.sort_values("step")
        x, steps = series["value"].to_numpy(), series["step"].to_numpy()
        moved = np.abs(x - x[0])
        peak = moved.max()
        t50 = float(steps[np.argmax(moved >= fraction * peak)]) if peak > 0 else float("nan")
        rows.append({**dict(zip(groups, key if isinstance(key, tuple) else (key,))),
                     "t50": t50, "total_change": float(x[-1] - x[0]), "peak_change": float(peak)})
    return pd.DataFrame(rows)
