"""Statistics for the book: correlations, partial correlations and linear models with bootstrap
confidence intervals and permutation p-values; bootstrap intervals for means. numpy only.

**Percentile bootstrap** (Efron & Tibshirani 1993): draw ``n_boot`` resamples, compute the statistic
on each, and report the (1-ci)/2 and (1+ci)/2 quantiles of those values.

**Cluster bootstrap over tasks** (``groups=``). In a pairwise sweep every observation is a task pair
(A, B) and many pairs share a task: the pairs (A, B), (A, C), (A, D) all carry task A's peculiarities
(how easy it is, how far it sits from pretraining). They are not independent, so resampling pairs as if
they were makes intervals too narrow. The cluster bootstrap resamples the *tasks*: draw K tasks with
replacement from the K tasks, and keep every observation whose tasks were all drawn, with multiplicity
``prod_m c(g_m)`` where ``c(t)`` is how often task t was drawn (a task drawn twice appears in twice as
many pairs, exactly as if the sweep had been run on the resampled task set). ``groups`` is an array of
shape (n,) (one cluster label per observation: the ordinary cluster bootstrap) or (n, m) (m labels per
observation: m = 2 for pairs, e.g. ``list(zip(task_a, task_b))``).

**Permutation p-values** are two-sided: ``p = (1 + #{|r_perm| >= |r|}) / (1 + n_perm)`` (Phipson &
Smyth 2010: never exactly zero). Without groups, y is permuted against x. With groups, pairs are not
exchangeable either, so task *labels* are permuted instead (a Mantel test: ``y'_(A,B) = y_(pi(A), pi(B))``),
which keeps the dependence between pairs that share a task. That needs every relabelled pair to exist
in the sweep (a complete sweep, ordered or unordered); otherwise a warning says so and observations are
permuted.

Everything is deterministic given ``seed`` (one ``numpy.random.Generator`` per call).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "CorrelationResult",
    "LinearModelResult",
    "bootstrap_mean_ci",
    "correlation",
    "linear_model",
    "partial_correlation",
    "pearson",
    "rankdata",
    "spearman",
]

METHODS = ("pearson", "spearman")
_CHUNK = 256  # bootstrap replicates drawn and evaluated at a time (bounds memory at _CHUNK x n)


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


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def _as_vector(values: Any, name: str, n: int | None = None) -> np.ndarray:
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
    if np.ptp(x) == 0:
        raise ValueError(f"{name}: all {len(x)} values equal {float(x[0])!r}; a correlation with a constant is undefined")


def _check_common(method: str, ci: float, n_boot: int, n_perm: int) -> None:
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if not 0 < ci < 1:
        raise ValueError(f"ci: must be strictly between 0 and 1, got {ci}")
    if n_boot < 0 or n_perm < 0:
        raise ValueError(f"n_boot, n_perm: must be >= 0, got {n_boot}, {n_perm}")


def _group_codes(groups: Any, n: int) -> np.ndarray | None:
    """``groups`` as integer codes of shape (n, m) (labels 0..K-1), or None."""
    if groups is None:
        return None
    if hasattr(groups, "to_numpy"):
        groups = groups.to_numpy()
    labels = np.asarray(groups, dtype=object)
    if labels.ndim == 1:
        labels = labels.reshape(-1, 1)
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ValueError(f"groups: expected shape ({n},) or ({n}, m) (e.g. the pair (task_a, task_b) of each "
                         f"observation), got {labels.shape}")
    flat = [str(v) for v in labels.ravel()]  # strings: mixed label types still sort and compare
    _, codes = np.unique(np.array(flat), return_inverse=True)
    codes = codes.reshape(labels.shape)
    if codes.max() + 1 < 3:
        raise ValueError(f"groups: need at least 3 distinct groups for a cluster bootstrap, got {codes.max() + 1}")
    return codes


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


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of x, y (shape (..., n)) with nonnegative weights w (shape (..., n)); NaN where undefined.

    With integer weights it equals Pearson r of the sample in which observation i appears w_i times.
    """
    total = w.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = x - (w * x).sum(axis=-1, keepdims=True) / total
        dy = y - (w * y).sum(axis=-1, keepdims=True) / total
        sxy = (w * dx * dy).sum(axis=-1)
        sxx = (w * dx * dx).sum(axis=-1)
        syy = (w * dy * dy).sum(axis=-1)
        scale = np.sqrt(sxx * syy)
        r = sxy / scale
    # a (numerically) constant resample: r is undefined, not +-1 from rounding noise in the mean
    with np.errstate(invalid="ignore", divide="ignore"):
        spread_x, spread_y = np.sqrt(sxx / total[..., 0]), np.sqrt(syy / total[..., 0])
    flat_x = ~(spread_x > 1e-13 * np.abs(x).max(axis=-1))
    flat_y = ~(spread_y > 1e-13 * np.abs(y).max(axis=-1))
    r = np.where(flat_x | flat_y, np.nan, r)
    return np.clip(r, -1.0, 1.0)


def _weighted_ranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average ranks of x within each weighted resample: x shape (n,), w shape (B, n) -> (B, n).

    ``rank_i = sum_{k: x_k < x_i} w_k + (sum_{k: x_k == x_i} w_k + 1) / 2``, the rank observation i gets
    in the sample where each observation k appears w_k times (ties averaged).
    """
    _, codes = np.unique(x, return_inverse=True)
    n_levels = codes.max() + 1
    B = w.shape[0]
    offsets = (np.arange(B)[:, None] * n_levels + codes[None, :]).ravel()
    per_level = np.bincount(offsets, weights=w.ravel(), minlength=B * n_levels).reshape(B, n_levels)
    below = np.cumsum(per_level, axis=1) - per_level
    return below[:, codes] + (per_level[:, codes] + 1) / 2.0


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


# ----------------------------------------------------------------------------------------------
# Resampling machinery
# ----------------------------------------------------------------------------------------------


def _bootstrap_weights(rng: np.random.Generator, n: int, B: int, codes: np.ndarray | None) -> np.ndarray:
    """Multiplicities of each observation in B resamples, shape (B, n), float.

    Without ``codes``: n draws with replacement from the observations. With ``codes`` (n, m): K draws
    with replacement from the K groups; observation i appears prod_m c(codes[i, m]) times.
    """
    if codes is None:
        draws = rng.integers(0, n, size=(B, n))
        offsets = (np.arange(B)[:, None] * n + draws).ravel()
        return np.bincount(offsets, minlength=B * n).reshape(B, n).astype(np.float64)
    K = int(codes.max()) + 1
    draws = rng.integers(0, K, size=(B, K))
    offsets = (np.arange(B)[:, None] * K + draws).ravel()
    counts = np.bincount(offsets, minlength=B * K).reshape(B, K).astype(np.float64)
    return counts[:, codes].prod(axis=-1)


def _bootstrap(rng: np.random.Generator, n: int, n_boot: int, codes: np.ndarray | None, statistic) -> np.ndarray:
    """``statistic(weights)`` for n_boot resamples, evaluated in chunks; returns shape (n_boot, ...)."""
    out = []
    for start in range(0, n_boot, _CHUNK):
        w = _bootstrap_weights(rng, n, min(_CHUNK, n_boot - start), codes)
        out.append(statistic(w))
    return np.concatenate(out) if out else np.zeros((0,))


def _percentile_interval(replicates: np.ndarray, ci: float, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Quantiles (1-ci)/2 and (1+ci)/2 over axis 0, ignoring NaN replicates; also the count of valid ones."""
    if replicates.shape[0] == 0:
        nan = np.full(replicates.shape[1:], np.nan)
        return nan, nan, 0
    valid = ~np.isnan(replicates).reshape(replicates.shape[0], -1).any(axis=1)
    n_valid = int(valid.sum())
    if n_valid < 0.9 * replicates.shape[0]:
        warnings.warn(f"{what}: only {n_valid} of {replicates.shape[0]} bootstrap resamples gave a defined value "
                      "(constant or too small resamples); the interval rests on those", RuntimeWarning, stacklevel=3)
    if n_valid == 0:
        nan = np.full(replicates.shape[1:], np.nan)
        return nan, nan, 0
    low, high = np.quantile(replicates[valid], [(1 - ci) / 2, (1 + ci) / 2], axis=0)
    return low, high, n_valid


def _label_keys(codes: np.ndarray, canonical: bool) -> np.ndarray:
    """One integer per observation identifying its label tuple (sorted first when ``canonical``)."""
    K = int(codes.max()) + 1
    keyed = np.sort(codes, axis=-1) if canonical else codes
    return (keyed * K ** np.arange(codes.shape[-1])).sum(axis=-1)


def _permutation_scheme(codes: np.ndarray | None) -> bool | None:
    """How to permute: None = observations; False / True = task labels, tuples ordered / unordered.

    Label permutation (Mantel) needs the set of label tuples to be closed under every relabelling of the
    K labels; it is enough to check the K - 1 adjacent transpositions, which generate all permutations.
    Otherwise (an incomplete sweep, or a pair measured twice) warn and permute observations.
    """
    if codes is None:
        return None
    K = int(codes.max()) + 1
    for canonical in (False, True):
        keys = _label_keys(codes, canonical)
        if len(np.unique(keys)) != len(keys):
            continue
        closed = True
        for i in range(K - 1):
            swap = np.arange(K)
            swap[[i, i + 1]] = [i + 1, i]
            if not np.isin(_label_keys(swap[codes], canonical), keys).all():
                closed = False
                break
        if closed:
            return canonical
    warnings.warn("groups: the observations do not form a complete sweep (some relabelled pairs are missing or "
                  "a pair appears twice), so the permutation test permutes observations and its p-value "
                  "ignores the dependence between observations sharing a group", RuntimeWarning, stacklevel=3)
    return None


def _permutation_indices(rng: np.random.Generator, n: int, n_perm: int, codes: np.ndarray | None,
                         scheme: bool | None) -> np.ndarray:
    """Index arrays (n_perm, n): observation i takes the y of observation idx[p, i] in permutation p.

    ``scheme`` None: plain permutations of the observations. Otherwise permute the K group labels
    (Mantel test): idx[p, i] is the observation whose labels are pi_p(codes[i]).
    """
    if scheme is None:
        return rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1)
    K = int(codes.max()) + 1
    pis = np.argsort(rng.random((n_perm, K)), axis=1)  # n_perm random permutations of 0..K-1
    keys = _label_keys(codes, scheme)
    order = np.argsort(keys)
    mapped = _label_keys(pis[:, codes], scheme)  # (n_perm, n)
    return order[np.searchsorted(keys[order], mapped)]


def _p_value(r: float, r_perm: np.ndarray) -> float:
    """Two-sided permutation p-value (1 + #{|r_perm| >= |r|}) / (1 + n_perm); NaN without permutations."""
    if r_perm.size == 0:
        return math.nan
    tolerance = 1e-12 * max(1.0, abs(r))
    return float((1 + np.sum(np.abs(r_perm) >= abs(r) - tolerance)) / (1 + r_perm.size))


def _permutation_r(rng, zx: np.ndarray, zy: np.ndarray, n_perm: int, codes, scheme: bool | None) -> np.ndarray:
    """Correlations of zx with permuted zy (both standardised, shape (n,)), shape (n_perm,), in chunks."""
    out = []
    n = len(zx)
    for start in range(0, n_perm, _CHUNK * 4):
        idx = _permutation_indices(rng, n, min(_CHUNK * 4, n_perm - start), codes, scheme)
        out.append(zy[idx] @ zx / n)
    return np.concatenate(out) if out else np.zeros(0)


def _standardize(v: np.ndarray) -> np.ndarray:
    return (v - v.mean()) / v.std()


# ----------------------------------------------------------------------------------------------
# Public statistics
# ----------------------------------------------------------------------------------------------


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
    low, high, n_valid = _percentile_interval(replicates, ci, f"{method} correlation")
    scheme = _permutation_scheme(codes) if n_perm else None
    r_perm = _permutation_r(rng, _standardize(rx), _standardize(ry), n_perm, codes, scheme)
    return CorrelationResult(
        r=r, ci_low=float(low), ci_high=float(high), p_value=_p_value(r, r_perm), n=n, method=method, ci=ci,
        n_boot=n_boot, n_boot_valid=n_valid, n_perm=n_perm,
        resampling="clusters" if codes is not None else "observations",
        n_clusters=int(codes.max()) + 1 if codes is not None else None,
        permutation=("observations" if scheme is None else "labels") if n_perm else "none",
    )


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
    low, high, n_valid = _percentile_interval(replicates, ci, f"partial {method} correlation")
    scheme = _permutation_scheme(codes) if n_perm else None
    r_perm = _permutation_r(rng, _standardize(ex), _standardize(ey), n_perm, codes, scheme)
    return CorrelationResult(
        r=r, ci_low=float(low), ci_high=float(high), p_value=_p_value(r, r_perm), n=n, method=method, ci=ci,
        n_boot=n_boot, n_boot_valid=n_valid, n_perm=n_perm,
        resampling="clusters" if codes is not None else "observations",
        n_clusters=int(codes.max()) + 1 if codes is not None else None,
        permutation=("observations" if scheme is None else "labels") if n_perm else "none", partial_on=Z.shape[1],
    )


def bootstrap_mean_ci(values: Any, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (shape (n,)) and its percentile bootstrap interval.

    Used for quantities measured once per seed (fractions of disrupted heads, BWT per seed, ...).
    With n = 1 the interval is the single value (no spread can be estimated); raises on empty input.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("values: need at least one value")
    if not np.isfinite(x).all():
        raise ValueError(f"values: contains NaN or infinite values at {np.flatnonzero(~np.isfinite(x))[:5].tolist()}")
    if not 0 < ci < 1:
        raise ValueError(f"ci: must be between 0 and 1, got {ci}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
    return mean, float(low), float(high)


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
    import pandas as pd

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
