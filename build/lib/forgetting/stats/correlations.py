"""Correlation coefficients with bootstrap intervals and permutation p-values: Pearson, Spearman and
partial correlation, and the validation of their inputs. Part of :mod:`forgetting.stats` (the methods
are described in its module docstring); the public names are imported, documented and used from
there (:func:`forgetting.stats.correlation`, :func:`forgetting.stats.partial_correlation`,
:func:`forgetting.stats.pearson`, :func:`forgetting.stats.spearman`, :func:`forgetting.stats.rankdata`,
:class:`forgetting.stats.CorrelationResult`). For x, y of shape (n,)::

    r        = sum (x_i - xbar)(y_i - ybar) / sqrt(sum (x_i - xbar)^2 sum (y_i - ybar)^2)
    rho      = r of the average ranks
    r_xy.Z   = r of the residuals of x and y after least squares on [1, Z]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forgetting.stats.resampling import (
    _bootstrap,
    _group_codes,
    _p_value,
    _percentile_interval,
    _permutation_r,
    _permutation_scheme,
    _weighted_pearson,
    _weighted_ranks,
)

__all__ = ["CorrelationResult", "correlation", "partial_correlation", "pearson", "rankdata", "spearman"]

METHODS = ("pearson", "spearman")


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorrelationResult:
    """A correlation with its percentile bootstrap interval and permutation p-value.

    ``r``: the estimate on all data; ``ci_low``/``ci_high``: the ``ci`` percentile bootstrap interval
    (NaN with ``n_boot=0``); ``p_value``: two-sided permutation p-value (NaN with ``n_perm=0``);
    ``n``: observations; ``method``: ``pearson`` or ``spearman``; ``resampling``: ``observations`` or
    ``clusters`` (cluster bootstrap over ``n_clusters`` groups); ``permutation``: ``observations`` or
    ``labels`` (Mantel); ``n_boot_valid``: replicates where r was defined (constant resamples are dropped);
    ``partial_on``: number of covariates partialled out (0 for a plain correlation).
    """

    r: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    method: str
    ci: float = 0.95
    n_boot: int = 0
    n_boot_valid: int = 0
    n_perm: int = 0
    resampling: str = "observations"
    n_clusters: int | None = None
    permutation: str = "observations"
    partial_on: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for DataFrames, JSON and MyST-NB ``glue``)."""
        return asdict(self)

    def __str__(self) -> str:
        kind = "partial " if self.partial_on else ""
        boot = (f"cluster bootstrap over {self.n_clusters} groups" if self.resampling == "clusters"
                else "bootstrap over observations")
        return (f"{kind}{self.method} r = {self.r:.3f}, {self.ci:.0%} CI [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"({boot}), permutation p = {self.p_value:.4g}, n = {self.n}")


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _as_vector(values: Any, name: str, n: int | None = None) -> np.ndarray:
    """``values`` (sequence, numpy array, tensor or pandas Series) as a finite float64 (n,) array; raises
    ValueError naming ``name`` otherwise (or when it does not have ``n`` entries)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    try:
        x = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected a sequence of numbers: {error}") from None
    if x.ndim != 1:
        raise ValueError(f"{name}: expected shape (n,), got {x.shape}")
    if n is not None and len(x) != n:
        raise ValueError(f"{name}: expected {n} values (as many as x), got {len(x)}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values at {np.flatnonzero(~np.isfinite(x))[:5].tolist()}")
    return x


def _check_not_constant(x: np.ndarray, name: str) -> None:
    """Raise ValueError naming ``name`` when every value of x is the same (max - min = 0)."""
    if np.ptp(x) == 0:
        raise ValueError(f"{name}: all {len(x)} values equal {float(x[0])!r}; a correlation with a constant is undefined")


def _check_common(method: str, ci: float, n_boot: int, n_perm: int) -> None:
    """Validate the arguments shared by :func:`correlation` and :func:`partial_correlation`."""
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if not 0 < ci < 1:
        raise ValueError(f"ci: must be strictly between 0 and 1, got {ci}")
    if n_boot < 0 or n_perm < 0:
        raise ValueError(f"n_boot, n_perm: must be >= 0, got {n_boot}, {n_perm}")



# ----------------------------------------------------------------------------------------------
# Ranks and correlation coefficients
# ----------------------------------------------------------------------------------------------


def rankdata(values: Any) -> np.ndarray:
    """Average ranks (1..n) of ``values``, shape (n,); ties share the mean of their ranks.

    ``rank_i = #{k: x_k < x_i} + (#{k: x_k == x_i} + 1) / 2`` (as ``scipy.stats.rankdata(method="average")``).
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    lo = np.searchsorted(sorted_x, x, side="left")
    hi = np.searchsorted(sorted_x, x, side="right")
    return (lo + hi + 1) / 2.0


def pearson(x: Any, y: Any) -> float:
    """Pearson r = sum (x_i - mean x)(y_i - mean y) / sqrt(sum (x_i - mean x)^2 sum (y_i - mean y)^2)."""
    x, y = _as_vector(x, "x"), _as_vector(y, "y")
    y = _as_vector(y, "y", len(x))
    _check_not_constant(x, "x")
    _check_not_constant(y, "y")
    return float(_weighted_pearson(x, y, np.ones_like(x)))


def spearman(x: Any, y: Any) -> float:
    """Spearman rho = Pearson r of the average ranks (:func:`rankdata`) of x and y (ties averaged)."""
    x, y = _as_vector(x, "x"), _as_vector(y, "y")
    y = _as_vector(y, "y", len(x))
    _check_not_constant(x, "x")
    _check_not_constant(y, "y")
    return float(_weighted_pearson(rankdata(x), rankdata(y), np.ones_like(x)))


def _standardize(v: np.ndarray) -> np.ndarray:
    """(v - mean v) / std v (population std): Pearson r of two such vectors is their mean product."""
    return (v - v.mean()) / v.std()


# ----------------------------------------------------------------------------------------------
# Public statistics
# ----------------------------------------------------------------------------------------------


def _correlation_result(
    r: float, interval: tuple[np.ndarray, np.ndarray, int], r_perm: np.ndarray, codes: np.ndarray | None,
    scheme: bool | None, **fields: Any,
) -> CorrelationResult:
    """A :class:`CorrelationResult` from the estimate r, the bootstrap ``interval`` (low, high, number of
    valid replicates), the permuted correlations and the resampling scheme; ``fields``: n, method, ci,
    n_boot, n_perm (and partial_on)."""
    low, high, n_valid = interval
    return CorrelationResult(
        r=r, ci_low=float(low), ci_high=float(high), p_value=_p_value(r, r_perm), n_boot_valid=n_valid,
        resampling="clusters" if codes is not None else "observations",
        n_clusters=int(codes.max()) + 1 if codes is not None else None,
        permutation=("observations" if scheme is None else "labels") if fields["n_perm"] else "none",
        **fields,
    )


def correlation(
    x: Any,
    y: Any,
    method: str = "pearson",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    groups: Any = None,
    n_perm: int = 5000,
) -> CorrelationResult:
    """Correlation of x and y (shape (n,) each) with a percentile bootstrap CI and a permutation p-value.

    ``method="pearson"``: r = sum (x_i - xbar)(y_i - ybar) / sqrt(sum (x_i - xbar)^2 sum (y_i - ybar)^2).
    ``method="spearman"``: Pearson r of the average ranks; each bootstrap resample is re-ranked.

    ``groups`` (shape (n,) or (n, m); for a pairwise task sweep the pair ``(task_a, task_b)`` of each
    observation) switches to the cluster bootstrap over groups and the label-permutation (Mantel) test,
    because pairs that share a task are not independent (see the module docstring); without it
    observations are resampled and permuted as if independent.

    Raises ``ValueError`` naming the argument for mismatched lengths, non-finite values, fewer than 3
    observations, a constant x or y, an unknown method, or ``ci`` outside (0, 1).
    """
    _check_common(method, ci, n_boot, n_perm)
    x = _as_vector(x, "x")
    y = _as_vector(y, "y", len(x))
    n = len(x)
    if n < 3:
        raise ValueError(f"x, y: need at least 3 observations for a correlation, got {n}")
    _check_not_constant(x, "x")
    _check_not_constant(y, "y")
    codes = _group_codes(groups, n)
    rng = np.random.default_rng(seed)

    if method == "spearman":
        rx, ry = rankdata(x), rankdata(y)
        r = float(_weighted_pearson(rx, ry, np.ones(n)))

        def statistic(w: np.ndarray) -> np.ndarray:
            return _weighted_pearson(_weighted_ranks(x, w), _weighted_ranks(y, w), w)
    else:
        rx, ry = x, y
        r = float(_weighted_pearson(x, y, np.ones(n)))

        def statistic(w: np.ndarray) -> np.ndarray:
            return _weighted_pearson(x[None, :], y[None, :], w)

    replicates = _bootstrap(rng, n, n_boot, codes, statistic)
    interval = _percentile_interval(replicates, ci, f"{method} correlation")
    scheme = _permutation_scheme(codes) if n_perm else None
    r_perm = _permutation_r(rng, _standardize(rx), _standardize(ry), n_perm, codes, scheme)
    return _correlation_result(r, interval, r_perm, codes, scheme, n=n, method=method, ci=ci, n_boot=n_boot,
                               n_perm=n_perm)


def _as_covariates(covariates: Any, n: int) -> np.ndarray:
    """Covariates as shape (n, k), k >= 1; accepts (n,), (n, k), a DataFrame, or a list of (n,) vectors."""
    if hasattr(covariates, "to_numpy"):
        covariates = covariates.to_numpy()
    if isinstance(covariates, (list, tuple)) and covariates and np.ndim(covariates[0]) == 1 and len(covariates[0]) == n \
            and len(covariates) != n:
        covariates = np.column_stack(covariates)
    try:
        Z = np.asarray(covariates, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"covariates: expected numbers of shape (n,) or (n, k): {error}") from None
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2 or Z.shape[0] != n or Z.shape[1] < 1:
        raise ValueError(f"covariates: expected shape ({n},) or ({n}, k), got {Z.shape}")
    if not np.isfinite(Z).all():
        raise ValueError("covariates: contains NaN or infinite values")
    for k in range(Z.shape[1]):
        if np.ptp(Z[:, k]) == 0:
            raise ValueError(f"covariates: column {k} is constant; it carries nothing to partial out")
    return Z


def _residualize(v: np.ndarray, Z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Residuals of v (n,) after weighted least squares on [1, Z] (Z: (n, k)); w: (n,) weights."""
    design = np.column_stack([np.ones(len(v)), Z])
    sw = np.sqrt(w)
    beta, *_ = np.linalg.lstsq(design * sw[:, None], v * sw, rcond=None)
    return v - design @ beta


def _partial_r(x: np.ndarray, y: np.ndarray, Z: np.ndarray, w: np.ndarray, ranks: bool) -> float:
    """Partial correlation of x and y given Z within one (weighted) resample."""
    if ranks:
        wb = w[None, :]
        x, y = _weighted_ranks(x, wb)[0], _weighted_ranks(y, wb)[0]
        Z = np.column_stack([_weighted_ranks(Z[:, k], wb)[0] for k in range(Z.shape[1])])
    keep = w > 0
    if keep.sum() < Z.shape[1] + 3:
        return math.nan
    x, y, Z, w = x[keep], y[keep], Z[keep], w[keep]
    if np.linalg.matrix_rank(np.column_stack([np.ones(len(x)), Z])) < Z.shape[1] + 1:
        return math.nan
    return float(_weighted_pearson(_residualize(x, Z, w), _residualize(y, Z, w), w))


def partial_correlation(
    x: Any,
    y: Any,
    covariates: Any,
    method: str = "pearson",
    *,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
    groups: Any = None,
    n_perm: int = 5000,
) -> CorrelationResult:
    """Correlation of x and y (shape (n,)) after removing what the covariates (shape (n,) or (n, k)) explain.

    r_xy.Z = corr(e_x, e_y), where e_x and e_y are the residuals of x and y after least squares on
    [1, Z]. With one covariate this equals (r_xy - r_xz r_yz) / sqrt((1 - r_xz^2)(1 - r_yz^2)).
    ``method="spearman"`` ranks x, y and every covariate first (partial Spearman).

    The bootstrap redoes the whole computation (ranking, regression, correlation) in every resample,
    over observations or, with ``groups``, over groups (see :func:`correlation`). The permutation
    p-value permutes e_y against e_x (residual permutation, ter Braak 1992), by labels with ``groups``.
    """
    _check_common(method, ci, n_boot, n_perm)
    x = _as_vector(x, "x")
    y = _as_vector(y, "y", len(x))
    n = len(x)
    Z = _as_covariates(covariates, n)
    if n < Z.shape[1] + 3:
        raise ValueError(f"x, y: need at least k + 3 = {Z.shape[1] + 3} observations for a partial correlation "
                         f"on {Z.shape[1]} covariates, got {n}")
    _check_not_constant(x, "x")
    _check_not_constant(y, "y")
    codes = _group_codes(groups, n)
    rng = np.random.default_rng(seed)
    ranks = method == "spearman"
    if ranks:
        xs, ys, Zs = rankdata(x), rankdata(y), np.column_stack([rankdata(Z[:, k]) for k in range(Z.shape[1])])
    else:
        xs, ys, Zs = x, y, Z
    if np.linalg.matrix_rank(np.column_stack([np.ones(n), Zs])) < Zs.shape[1] + 1:
        raise ValueError("covariates: columns are collinear (with each other or the intercept)")
    ones = np.ones(n)
    ex, ey = _residualize(xs, Zs, ones), _residualize(ys, Zs, ones)
    if np.ptp(ex) <= 1e-12 * (np.abs(xs).max() + 1) or np.ptp(ey) <= 1e-12 * (np.abs(ys).max() + 1):
        raise ValueError("covariates: explain x or y completely; the partial correlation is undefined")
    r = float(_weighted_pearson(ex, ey, ones))

    def statistic(w: np.ndarray) -> np.ndarray:
        return np.array([_partial_r(x, y, Z, row, ranks) for row in w])

    replicates = _bootstrap(rng, n, n_boot, codes, statistic)
    interval = _percentile_interval(replicates, ci, f"partial {method} correlation")
    scheme = _permutation_scheme(codes) if n_perm else None
    r_perm = _permutation_r(rng, _standardize(ex), _standardize(ey), n_perm, codes, scheme)
    return _correlation_result(r, interval, r_perm, codes, scheme, n=n, method=method, ci=ci, n_boot=n_boot,
                               n_perm=n_perm, partial_on=Z.shape[1])
