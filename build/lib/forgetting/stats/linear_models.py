"""Ordinary least squares with bootstrap intervals for the coefficients. Part of :mod:`forgetting.stats`;
the public names are imported, documented and used from there (:func:`forgetting.stats.linear_model`,
:class:`forgetting.stats.LinearModelResult`). For y (n,) and features F (n, k), X = [1, F] (n, p),
p = k + 1::

    beta = argmin ||y - X beta||^2,   se_k = sqrt(sigma^2 [(X^T X)^-1]_kk),   sigma^2 = RSS / (n - p)
    R^2  = 1 - RSS / TSS,              adj R^2 = 1 - (1 - R^2)(n - 1)/(n - p)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from forgetting.stats.correlations import _as_vector
from forgetting.stats.resampling import _bootstrap, _group_codes, _percentile_interval

__all__ = ["LinearModelResult", "linear_model"]


@dataclass(frozen=True)
class LinearModelResult:
    """An ordinary least-squares fit ``y = b0 + sum_k b_k x_k + e``.

    ``table``: one row per term (``intercept`` first, then the features in order) with columns
    ``term``, ``coef``, ``se`` (classical OLS standard error), ``ci_low``, ``ci_high`` (percentile
    bootstrap); ``r2`` = 1 - RSS/TSS; ``adj_r2`` = 1 - (1 - r2)(n - 1)/(n - p); ``n``; ``standardized``:
    whether features were z-scored (then a coefficient is the change in the target per standard
    deviation of the feature).
    """

    table: Any  # pandas.DataFrame
    r2: float
    adj_r2: float
    n: int
    target: str
    features: tuple[str, ...]
    standardized: bool
    ci: float
    n_boot: int
    n_boot_valid: int
    resampling: str = "observations"

    @property
    def coef(self) -> dict[str, float]:
        """``{term: coefficient}``."""
        return dict(zip(self.table["term"], self.table["coef"]))

    @property
    def se(self) -> dict[str, float]:
        """``{term: standard error}``."""
        return dict(zip(self.table["term"], self.table["se"]))


def _ols(X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> np.ndarray:
    """Least-squares coefficients of y on X (X already has the intercept column); NaN if rank-deficient."""
    if w is not None:
        keep = w > 0
        sw = np.sqrt(w[keep])
        X, y = X[keep] * sw[:, None], y[keep] * sw
    beta, _, rank, _ = np.linalg.lstsq(X, y, rcond=None)
    return beta if rank == X.shape[1] else np.full(X.shape[1], np.nan)


def linear_model(
    df: Any,
    target: str,
    features: Sequence[str],
    *,
    standardize: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    groups: Any = None,
) -> LinearModelResult:
    """Ordinary least squares ``target ~ 1 + features`` on the DataFrame ``df`` (n rows).

    beta = argmin ||y - X beta||^2 with X = [1, x_1, ..., x_k] (shape (n, p), p = k + 1);
    se_k = sqrt(sigma^2 [(X^T X)^-1]_kk) with sigma^2 = RSS / (n - p); R^2 = 1 - RSS / TSS.
    ``standardize=True`` z-scores every feature (x - mean) / sd first, so coefficients compare across
    features measured in different units. Coefficient CIs are percentile bootstrap intervals over rows,
    or over groups with ``groups`` (an array of shape (n,) or (n, m), or column name(s) of ``df``; see
    :func:`correlation` for why pairs sharing tasks need it).
    """
    import pandas as pd  # deferred: the rest of the module needs numpy only

    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df: expected a pandas DataFrame, got {type(df).__name__}")
    if isinstance(features, str):
        features = [features]
    features = list(features)
    if not features:
        raise ValueError("features: need at least one feature column")
    missing = [c for c in [target, *features] if c not in df.columns]
    if missing:
        raise ValueError(f"df: missing columns {missing}; available: {list(df.columns)}")
    if not 0 < ci < 1:
        raise ValueError(f"ci: must be strictly between 0 and 1, got {ci}")
    if n_boot < 0:
        raise ValueError(f"n_boot: must be >= 0, got {n_boot}")
    y = _as_vector(df[target], f"df[{target!r}]")
    F = np.column_stack([_as_vector(df[c], f"df[{c!r}]") for c in features])
    n, p = len(y), len(features) + 1
    if n <= p:
        raise ValueError(f"df: need more rows than coefficients ({p}), got {n}")
    for k, name in enumerate(features):
        if np.ptp(F[:, k]) == 0:
            raise ValueError(f"features: column {name!r} is constant; it cannot be told apart from the intercept")
    if standardize:
        F = (F - F.mean(axis=0)) / F.std(axis=0)
    X = np.column_stack([np.ones(n), F])
    if np.linalg.matrix_rank(X) < p:
        raise ValueError(f"features: columns {features} are collinear; drop one")
    if isinstance(groups, str):
        if groups not in df.columns:
            raise ValueError(f"groups: column {groups!r} not in df; available: {list(df.columns)}")
        groups = df[groups].to_numpy()
    elif isinstance(groups, (list, tuple)) and groups and all(isinstance(g, str) and g in df.columns for g in groups):
        groups = df[list(groups)].to_numpy()  # column names, e.g. ["task_a", "task_b"]
    codes = _group_codes(groups, n)

    beta = _ols(X, y)
    residuals = y - X @ beta
    rss = float(residuals @ residuals)
    tss = float(((y - y.mean()) ** 2).sum())
    sigma2 = rss / (n - p)
    se = np.sqrt(sigma2 * np.diag(np.linalg.inv(X.T @ X)))
    r2 = 1 - rss / tss if tss > 0 else math.nan
    adj_r2 = 1 - (1 - r2) * (n - 1) / (n - p)

    rng = np.random.default_rng(seed)
    replicates = _bootstrap(rng, n, n_boot, codes, lambda w: np.array([_ols(X, y, row) for row in w]))
    if replicates.ndim == 1:
        replicates = replicates.reshape(0, p)
    low, high, n_valid = _percentile_interval(replicates, ci, "linear model coefficients")
    table = pd.DataFrame({"term": ["intercept", *features], "coef": beta, "se": se, "ci_low": low, "ci_high": high})
    return LinearModelResult(
        table=table, r2=r2, adj_r2=adj_r2, n=n, target=target, features=tuple(features), standardized=standardize,
        ci=ci, n_boot=n_boot, n_boot_valid=n_valid, resampling="clusters" if codes is not None else "observations",
    )
