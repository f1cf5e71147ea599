"""Continual-learning metrics on the performance matrix R.

R is T x T: row i = the model after training tasks 0..i in sequence, column j = evaluated on task j,
**higher is better** (pass ``-loss`` for losses, see :func:`higher_is_better`). Indices are 0-based
below; ``b`` is the score of the model before any fine-tuning (the row "before" of the book's R
table) and ``a*`` that of a reference trained on all tasks jointly.

- ACC = (1/T) sum_j R[T-1, j]                                   (Lopez-Paz & Ranzato 2017, GEM)
- BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])               (GEM; negative = forgetting)
- FWT = 1/(T-1) sum_{j>=1} (R[j-1, j] - b_j)                    (GEM; needs the baseline b)
- f_j = max_{l<T-1} R[l, j] - R[T-1, j] for j < T-1;  forgetting = mean_j f_j   (Chaudhry et al. 2018)
- I_k = a*_k - R[k, k];  intransigence = mean_k I_k             (Chaudhry et al. 2018; needs a*)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def as_matrix(R: Any, name: str = "R") -> np.ndarray:
    """R as a float64 square array; accepts arrays, nested lists, torch tensors and DataFrames."""
    if hasattr(R, "detach"):
        R = R.detach().cpu().numpy()
    if hasattr(R, "to_numpy"):
        R = R.to_numpy()
    matrix = np.asarray(R, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 1:
        raise ValueError(f"{name}: expected a square T x T matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return matrix


def _vector(v: Any, T: int, name: str) -> np.ndarray | None:
    if v is None:
        return None
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    if hasattr(v, "to_numpy"):
        v = v.to_numpy()
    vector = np.asarray(v, dtype=np.float64).reshape(-1)
    if vector.shape != (T,):
        raise ValueError(f"{name}: expected a vector of length T={T}, got shape {vector.shape}")
    if not np.isfinite(vector).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return vector


def higher_is_better(R: Any, metric: str) -> np.ndarray:
    """R with losses negated, so that for every metric higher is better."""
    matrix = np.asarray(R, dtype=np.float64)
    return -matrix if metric == "loss" or metric.endswith("_loss") else matrix


def bwt_per_task(R: Any) -> np.ndarray:
    """R[T-1, j] - R[j, j] for j < T-1 (length T-1)."""
    M = as_matrix(R)
    T = len(M)
    return M[T - 1, : T - 1] - np.diag(M)[: T - 1]


def chaudhry_forgetting_per_task(R: Any) -> np.ndarray:
    """f_j = max_{l < T-1} R[l, j] - R[T-1, j] for j < T-1 (length T-1)."""
    M = as_matrix(R)
    T = len(M)
    if T < 2:
        return np.zeros(0)
    return M[: T - 1, : T - 1].max(axis=0) - M[T - 1, : T - 1]


def forgetting_curve(values: Any, learned_at: int = 0) -> np.ndarray:
    """Forgetting along a sequence of scores of one task: best score so far (from ``learned_at``) minus now.

    ``values`` are the task's scores at successive evaluations (higher is better); entries before
    ``learned_at`` (the evaluation at which the task was learned) are 0.
    """
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros_like(v)
    if learned_at < len(v):
        best = np.maximum.accumulate(v[learned_at:])
        out[learned_at:] = best - v[learned_at:]
    return out


def summarize(R: Any, baseline: Any = None, reference: Any = None) -> dict[str, float | None]:
    """ACC, BWT, FWT, Chaudhry forgetting and intransigence of R (see the module docstring).

    Returns a dict with keys ``acc``, ``bwt``, ``fwt``, ``forgetting``, ``intransigence``; a value is
    ``None`` where it is undefined (T = 1 for BWT/FWT/forgetting; no ``baseline`` for FWT; no
    ``reference`` for intransigence).
    """
    M = as_matrix(R)
    T = len(M)
    b = _vector(baseline, T, "baseline")
    a_star = _vector(reference, T, "reference")
    out: dict[str, float | None] = {"acc": float(M[T - 1].mean())}
    if T > 1:
        out["bwt"] = float(bwt_per_task(M).mean())
        out["forgetting"] = float(chaudhry_forgetting_per_task(M).mean())
        out["fwt"] = float(np.mean([M[j - 1, j] - b[j] for j in range(1, T)])) if b is not None else None
    else:
        out.update(bwt=None, forgetting=None, fwt=None)
    out["intransigence"] = float(np.mean(a_star - np.diag(M))) if a_star is not None else None
    return out


def summarize_frame(R_table: Any, reference: Mapping | None = None) -> dict[str, float | None]:
    """:func:`summarize` of the long R table (columns ``row`` 0..T with row 0 = before, ``col``, ``value``)."""
    pivot = R_table.pivot_table(index="row", columns="col", values="value").sort_index().sort_index(axis=1)
    values = pivot.to_numpy()
    return summarize(values[1:], baseline=values[0], reference=reference)
