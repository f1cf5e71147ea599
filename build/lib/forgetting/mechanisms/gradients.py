"""Gradient interference: per-task gradients, their cosine alignment per matrix, per attention head, per
layer and for the whole model, conflict rates, noise floors, and the first-order forgetting estimate.

Four modules; every public name of them is importable from here too:

- ``forgetting.mechanisms.loss_gradients``: the gradient of a task's mean target-token loss,
  ``g_X = dL_X / dtheta`` with ``L_X(theta) = (1 / |T_X|) sum_{t in T_X} -log p_theta(y_t | y_<t)``, one
  backward pass per batch (:func:`task_gradients`, :func:`task_loss`; LoRA: :func:`lora_task_gradients`);
- ``forgetting.mechanisms.gradient_units``: which unit (matrix, head, expert, layer, model) each slice of
  a tensor is, and the per-unit alignment table :func:`gradient_alignment`,
  ``cosine_u = <a_u, b_u> / (||a_u|| ||b_u||)`` (columns :data:`ALIGNMENT_COLUMNS`);
  :func:`update_alignment`, ``cos(delta_u, -g_u)``;
- ``forgetting.mechanisms.gradient_snapshots``: the first-order forgetting estimate
  ``L_old(theta + delta) - L_old(theta) ~ g_old . delta`` (:func:`first_order_change`,
  :func:`observed_vs_predicted`) and the alignment at each snapshot along training
  (:func:`snapshot_alignment`; for a run: :func:`forgetting.analysis.gradients.stage_alignment`);
- this module: the alignment of two tasks at the model's weights (:func:`task_alignment`), conflict
  rates and the noise floor.

Conflict. :func:`conflict_rate` is the fraction of units with ``cosine < 0`` (among units with a defined
cosine); over a sequence of points along training of a new task (:func:`snapshot_alignment`),
:func:`step_conflict_rate` gives per unit the fraction of steps with negative alignment.

Noise floor (a converged task has a tiny, noisy gradient, whose direction is mostly sampling noise). :func:`split_half_null` computes
the cosine between the gradients of two disjoint random halves of the OLD task's own data, per unit.
Writing a half's gradient as g + e with independent noise e, that cosine estimates the reliability of a
half-sample gradient, ``c = ||g||^2 / (||g||^2 + 2 s^2 / n)``; the Spearman-Brown formula gives the
reliability of the full-sample gradient, ``R = 2c / (1 + c)``, and an old-vs-new cosine is attenuated
towards 0 by ``sqrt(R_old * R_new)``. :func:`compare_with_null` puts both side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from torch import nn

from forgetting.mechanisms.gradient_snapshots import (
    first_order_change,
    observed_vs_predicted,
    snapshot_alignment,
    snapshot_delta,
)
from forgetting.mechanisms import gradient_units
from forgetting.mechanisms.gradient_units import (
    GROUPS,  # noqa: F401  (re-exported, as before the split)
    UNITS,
    _normalize_keys,
    gradient_alignment,
    update_alignment,
)
from forgetting.mechanisms.loss_gradients import (
    Gradients,  # noqa: F401  (re-exported, as before the split)
    _gradients_and_loss,
    _grad_enabled_on,  # noqa: F401  (re-exported: forgetting.mechanisms.similarity imports it from here)
    _head,
    _resolve_params,
    lora_task_gradients,
    task_gradients,
    task_loss,
)
from forgetting.models.geometry import attention_geometry
from forgetting.tasks.encoding import EncodedExamples

__all__ = [
    "ALIGNMENT_COLUMNS",
    "UNITS",
    "compare_with_null",
    "conflict_rate",
    "first_order_change",
    "gradient_alignment",
    "lora_task_gradients",
    "observed_vs_predicted",
    "snapshot_alignment",
    "snapshot_delta",
    "split_half_null",
    "step_conflict_rate",
    "task_alignment",
    "task_gradients",
    "task_loss",
    "update_alignment",
]

# defined in gradient_units; bound again here with its doc comment, which the API reference (it documents
# this module) reads from this file
#: The columns of an alignment table (:func:`gradient_alignment`), in order.
ALIGNMENT_COLUMNS = gradient_units.ALIGNMENT_COLUMNS
#: The columns that identify a unit (a matrix, head, expert, layer or the model) across steps.
UNIT_KEYS = ("unit", "name", "layer", "group", "kind", "part", "head", "head_type")


def task_alignment(
    model: nn.Module,
    examples_a: EncodedExamples,
    examples_b: EncodedExamples,
    *,
    batch_size: int,
    max_examples: int | None = None,
    params: Any = None,
    heads: bool = True,
) -> pd.DataFrame:
    """Gradients of two tasks at the model's current weights and their alignment (all units, all heads).

    Exactly ``ceil(n_a / batch_size) + ceil(n_b / batch_size)`` forward and backward passes; the head
    rows are slices of the same gradients. Arguments as :func:`task_gradients` and
    :func:`gradient_alignment` (``a`` = task A, ``b`` = task B).
    """
    geometry = attention_geometry(model)
    g_a = task_gradients(model, examples_a, batch_size=batch_size, max_examples=max_examples, params=params)
    g_b = task_gradients(model, examples_b, batch_size=batch_size, max_examples=max_examples, params=params)
    return gradient_alignment(g_a, g_b, geometry, heads=heads)



# ---------------------------------------------------------------------------------------------------
# conflict rates
# ---------------------------------------------------------------------------------------------------


def conflict_rate(alignment: pd.DataFrame, *, unit: str = "head", by: Sequence[str] | None = None,
                  threshold: float = 0.0) -> pd.DataFrame:
    """Fraction of units with negative alignment: ``#{u : cosine_u < threshold} / #{u : cosine_u defined}``.

    Args:
        alignment: rows of :func:`gradient_alignment` (possibly several points, e.g. a ``step`` column).
        unit: which rows count (``"head"``, ``"matrix"``, ``"expert"``, ``"layer"``, ``"model"``).
        by: columns to group by (e.g. ``["layer"]``, ``["kind"]``, ``["step"]``); ``None``: one row.
        threshold: count ``cosine < threshold`` (0: any negative alignment).

    Returns:
        DataFrame with the ``by`` columns, ``n_units`` (with a defined cosine), ``n_conflict`` and
        ``conflict_rate`` (NaN when ``n_units`` is 0).
    """
    if unit not in UNITS:
        raise ValueError(f"unit: {unit!r} is not one of {', '.join(UNITS)}")
    rows = alignment[(alignment["unit"] == unit) & alignment["cosine"].notna()]
    rows = rows.assign(_conflict=(rows["cosine"] < threshold).astype(int))
    by = list(by or [])
    missing = [c for c in by if c not in alignment.columns]
    if missing:
        raise ValueError(f"by: {missing} are not columns of the alignment table ({list(alignment.columns)})")
    if by:
        out = rows.groupby(by, sort=True, dropna=False)["_conflict"].agg(n_units="count", n_conflict="sum").reset_index()
    else:
        out = pd.DataFrame({"n_units": [len(rows)], "n_conflict": [int(rows["_conflict"].sum())]})
    out["conflict_rate"] = out["n_conflict"] / out["n_units"].where(out["n_units"] > 0)
    return out


def step_conflict_rate(alignment: pd.DataFrame, *, unit: str = "model", step: str = "step",
                       threshold: float = 0.0, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per unit, the fraction of steps at which it is in conflict (``cosine < threshold``).

    ``alignment`` holds one alignment table per step (a ``step`` column, as :func:`snapshot_alignment`
    returns). One row per unit (identified by :data:`UNIT_KEYS`) with ``n_steps`` (steps with a defined
    cosine), ``n_conflict`` and ``conflict_rate = n_conflict / n_steps``. ``unit="model"`` with
    ``group == "all"`` is the fraction of steps at which the whole-model gradients conflict. ``by``: more
    columns that tell tables apart (e.g. ``["old_task", "new_task"]`` when several pairs are stacked).
    """
    if step not in alignment.columns:
        raise ValueError(f"step: no column {step!r} in the alignment table")
    out = conflict_rate(alignment, unit=unit, by=[*by, *UNIT_KEYS], threshold=threshold)
    return out.rename(columns={"n_units": "n_steps"})


# ---------------------------------------------------------------------------------------------------
# nulls
# ---------------------------------------------------------------------------------------------------


def split_half_null(
    model: nn.Module,
    examples_old: EncodedExamples,
    *,
    batch_size: int,
    n_splits: int = 1,
    seed: int = 0,
    max_examples: int | None = None,
    params: Any = None,
    heads: bool = True,
) -> pd.DataFrame:
    """Noise floor of gradient alignment: the cosine between the gradients of two disjoint halves of the
    old task's own data, per unit, for ``n_splits`` random splits.

    Each split draws a permutation of the (first ``max_examples``) examples with
    ``torch.Generator().manual_seed(seed + split)`` and compares the first ``n // 2`` with the next
    ``n // 2`` (an odd last example is left out). Cost: the backward passes over all examples, per split.
    A cosine near 1 means the task's gradient direction in that unit is reproducible; near 0 means it is
    noise at this sample size, and an old-vs-new cosine there cannot be read (see the module docstring
    and :func:`compare_with_null`).

    Returns:
        :func:`gradient_alignment` rows with a ``split`` column (a = first half, b = second half).
    """
    if n_splits < 1:
        raise ValueError(f"n_splits: must be >= 1, got {n_splits}")
    examples = _head(examples_old, max_examples)
    half = len(examples) // 2
    if half < 1:
        raise ValueError(f"examples_old: need at least 2 examples for two halves, got {len(examples)}")
    geometry = attention_geometry(model)
    selected = _resolve_params(model, params)
    frames = []
    for split in range(n_splits):
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + split))
        g = [
            _gradients_and_loss(model, examples.select(idx), batch_size=batch_size, params=selected)[0]
            for idx in (order[:half], order[half: 2 * half])
        ]
        frames.append(gradient_alignment(g[0], g[1], geometry, heads=heads).assign(split=split))
    return pd.concat(frames, ignore_index=True)


def compare_with_null(alignment: pd.DataFrame, null: pd.DataFrame) -> pd.DataFrame:
    """Old-vs-new alignment next to the split-half noise floor of the old task, per unit.

    Adds to ``alignment``: ``null_cosine`` (mean split-half cosine c over splits), ``null_sd`` (its
    standard deviation; NaN for one split), ``n_splits``, ``reliability`` = Spearman-Brown
    ``R = 2c / (1 + c)`` (NaN where ``c <= 0``: no reproducible direction) and ``corrected_cosine`` =
    ``cosine / sqrt(R)``, the old-vs-new cosine corrected for the attenuation by the old task's gradient
    noise (it assumes the new task's gradient is reliable, ``R_new ~ 1``; with a noisy estimate of R it
    can leave [-1, 1]).
    """
    keys = list(UNIT_KEYS)
    summary = _normalize_keys(null).groupby(keys, dropna=False, sort=False)["cosine"].agg(
        null_cosine="mean", null_sd="std", n_splits="count"
    ).reset_index()
    out = _normalize_keys(alignment).merge(_normalize_keys(summary), on=keys, how="left")
    c = out["null_cosine"]
    out["reliability"] = (2 * c / (1 + c)).where(c > 0)
    out["corrected_cosine"] = out["cosine"] / out["reliability"].pow(0.5)
    return out
