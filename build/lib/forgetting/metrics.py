"""Continual-learning metrics on the performance matrix R.

R is T x T: row i = the model after training tasks 0..i in sequence, column j = evaluated on task j,
**higher is better** (for losses pass ``-loss``; :func:`higher_is_better` does the negation by metric
name). Indices are 0-based below; ``b`` (length T) is the score of the model before any fine-tuning
(the row "before" of the book's R table) and ``a*`` (length T) that of a reference model trained on
all tasks jointly (multi-task training).

- ACC = (1/T) sum_{j=0}^{T-1} R[T-1, j]                               (Lopez-Paz & Ranzato 2017, GEM)
- BWT = 1/(T-1) sum_{j=0}^{T-2} (R[T-1, j] - R[j, j])                 (GEM; negative = forgetting)
- FWT = 1/(T-1) sum_{j=1}^{T-1} (R[j-1, j] - b_j)                     (GEM; needs the baseline b)
- f_j = max_{l in 0..T-2} R[l, j] - R[T-1, j]  for j < T-1
  forgetting = 1/(T-1) sum_{j=0}^{T-2} f_j                            (Chaudhry et al. 2018, RWalk)
- I_k = a*_k - R[k, k];  intransigence = (1/T) sum_{k=0}^{T-1} I_k    (Chaudhry et al. 2018; needs a*)

Forgetting curves follow the same idea along the training sequence: the forgetting of task j at
stage i > j is ``max_{l < i} R[l, j] - R[i, j]`` (:func:`forgetting_matrix`), or, along any sequence of
evaluations of one task, "best so far minus now" (:func:`forgetting_curve`).

References: D. Lopez-Paz and M. Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017;
A. Chaudhry, P. K. Dokania, T. Ajanthan, P. H. S. Torr, "Riemannian Walk for Incremental Learning:
Understanding Forgetting and Intransigence", ECCV 2018.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "LOWER_IS_BETTER",
    "as_matrix",
    "bwt_per_task",
    "chaudhry_forgetting_per_task",
    "forgetting_curve",
    "forgetting_matrix",
    "fwt_per_task",
    "higher_is_better",
    "intransigence_per_task",
    "summarize",
    "summarize_frame",
]

#: Metric names whose raw values are better when lower; :func:`higher_is_better` negates them.
LOWER_IS_BETTER: frozenset[str] = frozenset({"loss", "nll", "perplexity", "ppl", "error", "error_rate"})


def _to_numpy(value: Any, name: str) -> np.ndarray:
    """``value`` (array, nested lists, torch tensor, pandas object) as a float64 numpy array."""
    if hasattr(value, "detach"):  # torch tensor, possibly on a GPU or requiring grad
        value = value.detach().cpu().numpy()
    if hasattr(value, "to_numpy"):  # pandas DataFrame / Series
        value = value.to_numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected numbers (an array, nested lists, a tensor or a DataFrame): {error}") from None


def as_matrix(R: Any, name: str = "R") -> np.ndarray:
    """R as a float64 array of shape (T, T), T >= 1, all values finite.

    Accepts numpy arrays, nested lists, torch tensors and DataFrames (their values; labels are ignored).
    Raises ``ValueError`` naming ``name`` and the expected shape otherwise.
    """
    matrix = _to_numpy(R, name)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"{name}: expected a square T x T matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        bad = [tuple(int(i) for i in index) for index in np.argwhere(~np.isfinite(matrix))[:3]]
        raise ValueError(f"{name}: contains NaN or infinite values (first at {bad}); every cell must be finite")
    return matrix


def _vector(v: Any, T: int, name: str) -> np.ndarray | None:
    """An optional per-task vector of length T; ``None`` (or all NaN: "not measured") gives ``None``."""
    if v is None:
        return None
    if isinstance(v, Mapping):
        raise ValueError(f"{name}: expected a vector of length T={T} in task order, got a mapping "
                         "(summarize_frame accepts a mapping {col: value})")
    vector = _to_numpy(v, name).reshape(-1)
    if vector.shape != (T,):
        raise ValueError(f"{name}: expected a vector of length T={T}, got shape {vector.shape}")
    if np.isnan(vector).all():
        return None
    if not np.isfinite(vector).all():
        raise ValueError(f"{name}: contains NaN or infinite values at tasks "
                         f"{np.flatnonzero(~np.isfinite(vector)).tolist()}; give all T values or None")
    return vector


def higher_is_better(values: Any, metric: str) -> np.ndarray:
    """``values`` (any shape) as a float64 array oriented so that higher is better.

    Metrics in :data:`LOWER_IS_BETTER` (``loss``, ``nll``, ``perplexity``, ...) and names ending in
    ``_loss`` are negated; every other metric (accuracy, exact match, ...) is returned unchanged.
    Call it before :func:`summarize` when R holds losses: ``summarize(higher_is_better(R, "loss"))``.
    """
    array = _to_numpy(values, "values")
    lower = metric in LOWER_IS_BETTER or metric.endswith("_loss")
    return -array if lower else array


def bwt_per_task(R: Any) -> np.ndarray:
    """Backward transfer of each earlier task, shape (T-1,): ``R[T-1, j] - R[j, j]`` for j < T-1.

    Negative entries are forgetting. Empty for T = 1. BWT is the mean of this vector.
    """
    M = as_matrix(R)
    T = len(M)
    return M[T - 1, : T - 1] - np.diag(M)[: T - 1]


def chaudhry_forgetting_per_task(R: Any) -> np.ndarray:
    """Chaudhry forgetting of each earlier task, shape (T-1,): ``f_j = max_{l<=T-2} R[l, j] - R[T-1, j]``.

    Unlike BWT, it compares with the *best* earlier score, which can come after the task was learned
    (positive backward transfer followed by a drop counts in full). Empty for T = 1.
    """
    M = as_matrix(R)
    T = len(M)
    if T < 2:
        return np.zeros(0)
    return M[: T - 1, : T - 1].max(axis=0) - M[T - 1, : T - 1]


def fwt_per_task(R: Any, baseline: Any) -> np.ndarray:
    """Forward transfer to each later task, shape (T-1,): ``R[j-1, j] - b_j`` for j >= 1.

    ``baseline`` b (length T) is each task's score before any fine-tuning; b_0 is not used.
    """
    M = as_matrix(R)
    b = _vector(baseline, len(M), "baseline")
    if b is None:
        raise ValueError("baseline: required for forward transfer (a vector of length T, the scores before fine-tuning)")
    T = len(M)
    return np.array([M[j - 1, j] - b[j] for j in range(1, T)], dtype=np.float64)


def intransigence_per_task(R: Any, reference: Any) -> np.ndarray:
    """Intransigence of each task, shape (T,): ``I_k = a*_k - R[k, k]`` (Chaudhry et al. 2018).

    ``reference`` a* (length T) is each task's score under joint (multi-task) training; positive
    I_k means the sequential model learned task k less well than joint training could.
    """
    M = as_matrix(R)
    a_star = _vector(reference, len(M), "reference")
    if a_star is None:
        raise ValueError("reference: required for intransigence (a vector of length T, the joint-training scores)")
    return a_star - np.diag(M)


def forgetting_matrix(R: Any) -> np.ndarray:
    """Forgetting of every task after every stage, shape (T, T); the data of forgetting curves.

    ``F[i, j] = max_{l < i} R[l, j] - R[i, j]`` for j < i (task j already learned and trained past),
    NaN for j >= i. The last row without its NaN is :func:`chaudhry_forgetting_per_task`.
    """
    M = as_matrix(R)
    T = len(M)
    F = np.full((T, T), np.nan)
    for i in range(1, T):
        F[i, :i] = M[:i, :i].max(axis=0) - M[i, :i]
    return F


def forgetting_curve(values: Sequence[float] | np.ndarray, learned_at: int = 0) -> np.ndarray:
    """Forgetting along a sequence of evaluations of one task: best score so far minus the current one.

    ``values``: shape (n,), the task's scores at successive evaluations (higher is better), for
    instance one column of R or the task's scores every k steps. ``learned_at``: the index of the
    evaluation at which the task had been learned; earlier entries are 0 (nothing to forget yet).

    ``out[t] = max_{learned_at <= s <= t} values[s] - values[t]`` for t >= learned_at, shape (n,), >= 0.
    """
    v = _to_numpy(values, "values")
    if v.ndim != 1:
        raise ValueError(f"values: expected a 1-D sequence of scores, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"values: contains NaN or infinite values at {np.flatnonzero(~np.isfinite(v)).tolist()}")
    if not 0 <= learned_at < max(len(v), 1):
        raise ValueError(f"learned_at: expected an index in 0..{len(v) - 1}, got {learned_at}")
    out = np.zeros_like(v)
    if len(v):
        best = np.maximum.accumulate(v[learned_at:])
        out[learned_at:] = best - v[learned_at:]
    return out


def summarize(R: Any, baseline: Any = None, reference: Any = None) -> dict[str, float | None]:
    """ACC, BWT, FWT, Chaudhry forgetting and intransigence of R (formulas in the module docstring).

    Args:
        R: shape (T, T), row i = after training task i, column j = task j, higher is better.
        baseline: shape (T,), scores before any fine-tuning (for FWT), or None.
        reference: shape (T,), joint-training scores a* (for intransigence), or None.

    Returns a dict with float values under ``acc``, ``bwt``, ``fwt``, ``forgetting``, ``intransigence``;
    a value is ``None`` where it is undefined: T = 1 for BWT, FWT and forgetting; no ``baseline`` for
    FWT; no ``reference`` for intransigence. A baseline or reference that is entirely NaN counts as
    absent; a partly missing one is an error.
    """
    M = as_matrix(R)
    T = len(M)
    b = _vector(baseline, T, "baseline")
    a_star = _vector(reference, T, "reference")
    out: dict[str, float | None] = {"acc": float(M[T - 1].mean())}
    if T > 1:
        out["bwt"] = float(bwt_per_task(M).mean())
        out["forgetting"] = float(chaudhry_forgetting_per_task(M).mean())
        out["fwt"] = float(fwt_per_task(M, b).mean()) if b is not None else None
    else:
        out.update(bwt=None, forgetting=None, fwt=None)
    out["intransigence"] = float(intransigence_per_task(M, a_star).mean()) if a_star is not None else None
    return out


def summarize_frame(
    R_table: Any,
    reference: Mapping[Any, float] | Sequence[float] | np.ndarray | None = None,
    *,
    row: str = "row",
    col: str = "col",
    value: str = "value",
) -> dict[str, float | None]:
    """:func:`summarize` of the long-format R table.

    ``R_table``: a DataFrame with one row per cell and columns ``row`` (0..T; row 0 = before any
    fine-tuning, row i = after task i-1), ``col`` (0..T-1) and ``value`` (higher is better already).
    Row 0 becomes the FWT baseline and rows 1..T become R. ``reference``: the joint-training scores,
    as a mapping ``{col: value}`` or a vector in column order. Every (row, col) cell must appear exactly
    once (aggregate over seeds first).
    """
    import pandas as pd

    if not isinstance(R_table, pd.DataFrame):
        raise ValueError(f"R_table: expected a pandas DataFrame, got {type(R_table).__name__}")
    missing = [c for c in (row, col, value) if c not in R_table.columns]
    if missing:
        raise ValueError(f"R_table: missing columns {missing}; expected {[row, col, value]}")
    duplicated = R_table.duplicated([row, col])
    if duplicated.any():
        first = R_table.loc[duplicated, [row, col]].iloc[0].tolist()
        raise ValueError(f"R_table: cell ({row}, {col}) = {first} appears more than once; aggregate (e.g. over seeds) first")
    pivot = R_table.pivot(index=row, columns=col, values=value).sort_index().sort_index(axis=1)
    T = pivot.shape[1]
    if list(pivot.index) != list(range(T + 1)) or list(pivot.columns) != list(range(T)):
        raise ValueError(f"R_table: expected {row} = 0..T and {col} = 0..T-1 (row 0 = before fine-tuning), got "
                         f"{row} {list(pivot.index)} and {col} {list(pivot.columns)}")
    if pivot.isna().to_numpy().any():
        cells = [(int(r), int(c)) for r, c in zip(*np.nonzero(pivot.isna().to_numpy()))][:3]
        raise ValueError(f"R_table: missing or NaN cells ({row}, {col}) {cells}; the table must be complete")
    values = pivot.to_numpy(dtype=np.float64)
    if isinstance(reference, Mapping):
        absent = [j for j in pivot.columns if j not in reference]
        if absent:
            raise ValueError(f"reference: no value for {col} {absent}; expected one for each of 0..{T - 1}")
        reference = [reference[j] for j in pivot.columns]
    return summarize(values[1:], baseline=values[0], reference=reference)
