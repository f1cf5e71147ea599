"""Correlations over a sweep with several seeds, and the Holm correction for many of them. numpy only.

**Holm-Bonferroni** (Holm 1979; :func:`holm`). For m p-values sorted ascending, p_(1) <= ... <= p_(m)::

    p_adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))

which controls the family-wise error rate at any level alpha without assuming independence (reject H_(i)
while p_adj_(i) <= alpha). NaN p-values are left NaN and do not count in m.

**Two-way cluster bootstrap over tasks and seeds** (:func:`seeded_correlation`). A sweep over K tasks and
S seeds gives one value x_p per ordered pair p = (a, b) (a similarity at the base model) and values
y_ps per pair and seed (the forgetting of a after b in seed s). The point estimate is the correlation
over the P pairs of x_p with the seed mean ybar_p = (1/S) sum_s y_ps. The pairs share tasks and the
seeds share everything else (initial data order, sampling), so both are resampled: draw K tasks with
replacement (counts c_t) and S seeds with replacement (counts d_s); in that resample pair p = (a, b)
has weight c_a c_b (it exists once per drawn copy of a and of b, exactly as in the cluster bootstrap of
:mod:`forgetting.stats`) and the seed mean becomes::

    ybar*_p = sum_s d_s y_ps / sum_s d_s            (over the seeds observed for p)
    r*      = weighted Pearson (or Spearman) r of (x_p, ybar*_p) with weights c_a c_b

The interval is the percentile interval of r* over ``n_boot`` resamples. The p-value permutes task labels
(the Mantel test of :mod:`forgetting.stats`: ``ybar'_(a,b) = ybar_(pi(a), pi(b))`` for a random
permutation pi of the K tasks), two-sided, ``(1 + #{|r_perm| >= |r|}) / (1 + n_perm)``; it needs every
relabelled pair in the sweep (a complete sweep), otherwise observations are permuted with a warning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from forgetting.stats.correlations import (
    METHODS,
    _as_vector,
    _check_not_constant,
    _standardize,
    rankdata,
)
from forgetting.stats.resampling import (
    _CHUNK,
    _group_codes,
    _p_value,
    _percentile_interval,
    _permutation_r,
    _permutation_scheme,
    _weighted_pearson,
    _weighted_ranks,
)

__all__ = ["SeededCorrelation", "holm", "seeded_correlation"]


def holm(p_values: Any) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, shape (m,) like ``p_values`` (module docstring), in the input order.

    ``p_adj_(i) = min(1, max_{j <= i} (m - j + 1) p_(j))`` over the finite p-values sorted ascending
    (m = how many are finite); NaN stays NaN. Raises ValueError for values outside [0, 1].
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(p)
    if ((p[finite] < 0) | (p[finite] > 1)).any():
        raise ValueError(f"p_values: must lie in [0, 1], got {p[finite][(p[finite] < 0) | (p[finite] > 1)][:5].tolist()}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(finite)
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="mergesort")]
    scaled = (m - np.arange(m)) * p[order]
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


@dataclass(frozen=True)
class SeededCorrelation:
    """A correlation over ordered task pairs with seeds, from :func:`seeded_correlation`.

    ``r``: the estimate (x against the seed-mean y); ``ci_low``/``ci_high``: the ``ci`` percentile interval of
    the two-way (tasks x seeds) cluster bootstrap; ``p_value``: two-sided task-label permutation p-value;
    ``n_pairs``, ``n_tasks``, ``n_seeds``: the data's size; ``n_boot_valid``: resamples where r was defined;
    ``permutation``: ``labels`` (Mantel), ``observations`` (incomplete sweep) or ``none``.
    """

    r: float
    ci_low: float
    ci_high: float
    p_value: float
    n_pairs: int
    n_tasks: int
    n_seeds: int
    method: str
    ci: float = 0.95
    n_boot: int = 0
    n_boot_valid: int = 0
    n_perm: int = 0
    permutation: str = "labels"

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for DataFrames and JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        return (f"{self.method} r = {self.r:.3f}, {self.ci:.0%} CI [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"(bootstrap over {self.n_tasks} tasks x {self.n_seeds} seeds), permutation p = {self.p_value:.4g}, "
                f"{self.n_pairs} pairs")


def _pair_matrix(pairs: Any, seeds: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Observations (pair label, seed, y) as the (P, 2) pair labels, the (P, S) matrix of y (NaN where a
    seed is missing for a pair) and the P pair keys in first-seen order."""
    pairs = np.asarray(pairs.to_numpy() if hasattr(pairs, "to_numpy") else pairs, dtype=object)
    if pairs.ndim != 2 or pairs.shape != (len(y), 2):
        raise ValueError(f"pairs: expected shape ({len(y)}, 2) (task_a, task_b per observation), got {pairs.shape}")
    seeds = np.asarray(seeds.to_numpy() if hasattr(seeds, "to_numpy") else seeds, dtype=object).reshape(-1)
    if len(seeds) != len(y):
        raise ValueError(f"seeds: expected {len(y)} values (one per observation), got {len(seeds)}")
    keys = list(dict.fromkeys((str(a), str(b)) for a, b in pairs))
    seed_keys = list(dict.fromkeys(str(s) for s in seeds))
    row = {k: i for i, k in enumerate(keys)}
    col = {s: j for j, s in enumerate(seed_keys)}
    Y = np.full((len(keys), len(seed_keys)), np.nan)
    for (a, b), s, v in zip(pairs, seeds, y):
        i, j = row[(str(a), str(b))], col[str(s)]
        if not np.isnan(Y[i, j]):
            raise ValueError(f"pairs, seeds: pair {a}->{b} appears twice for seed {s}")
        Y[i, j] = v
    return np.array(keys, dtype=object), Y, keys


def _seed_weights(rng: np.random.Generator, B: int, S: int) -> np.ndarray:
    """Counts (B, S) of each seed among S draws with replacement from the S seeds."""
    draws = rng.integers(0, S, size=(B, S))
    return np.stack([np.bincount(row, minlength=S) for row in draws]).astype(np.float64)


def _task_weights(rng: np.random.Generator, B: int, codes: np.ndarray) -> np.ndarray:
    """Pair weights (B, P): prod over a pair's two tasks of how often each was drawn among K draws."""
    K = int(codes.max()) + 1
    draws = rng.integers(0, K, size=(B, K))
    counts = np.stack([np.bincount(row, minlength=K) for row in draws]).astype(np.float64)
    return counts[:, codes].prod(axis=-1)


def seeded_correlation(
    x: Any,
    y: Any,
    pairs: Any,
    seeds: Any,
    method: str = "pearson",
    *,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> SeededCorrelation:
    """Correlation of a per-pair predictor with a per-pair-and-seed outcome, two-way cluster bootstrap.

    Args:
        x, y: shape (n,): one observation per (ordered pair, seed); x should be the same for every seed of a
            pair (a base-model similarity); its mean over the pair's observations is used.
        pairs: shape (n, 2): the pair's two task labels (task_a, task_b) per observation.
        seeds: shape (n,): the seed label of each observation (a pair may lack some seeds).
        method: ``pearson`` or ``spearman`` (ranks of x and of the seed means, within every resample).

    Returns:
        :class:`SeededCorrelation`: r of (x_p, ybar_p) over the P pairs, the percentile interval of the
        bootstrap over tasks and seeds, and the task-label permutation p-value (module docstring).
        Deterministic given ``seed``.
    """
    if method not in METHODS:
        raise ValueError(f"method: {method!r} is not one of {', '.join(METHODS)}")
    if not 0 < ci < 1:
        raise ValueError(f"ci: must be strictly between 0 and 1, got {ci}")
    if n_boot < 0 or n_perm < 0:
        raise ValueError(f"n_boot, n_perm: must be >= 0, got {n_boot}, {n_perm}")
    x = _as_vector(x, "x")
    y = _as_vector(y, "y", len(x))
    labels, Y, _ = _pair_matrix(pairs, seeds, y)
    _, X, _ = _pair_matrix(pairs, seeds, x)
    xp = np.nanmean(X, axis=1)
    observed = ~np.isnan(Y)
    yp = np.nanmean(Y, axis=1)
    _check_not_constant(xp, "x")
    _check_not_constant(yp, "y")
    codes = _group_codes(labels, len(labels))
    P, S = Y.shape
    rank = method == "spearman"
    xs, ys = (rankdata(xp), rankdata(yp)) if rank else (xp, yp)
    r = float(_weighted_pearson(xs, ys, np.ones(P)))
    rng = np.random.default_rng(seed)
    filled = np.where(observed, Y, 0.0)
    replicates = []
    for start in range(0, n_boot, _CHUNK):
        B = min(_CHUNK, n_boot - start)
        w = _task_weights(rng, B, codes)
        d = _seed_weights(rng, B, S)
        total = d @ observed.T.astype(np.float64)  # (B, P): drawn seeds observed for each pair
        with np.errstate(invalid="ignore", divide="ignore"):
            yb = (d @ filled.T) / total
        w = np.where(total > 0, w, 0.0)
        yb = np.where(total > 0, yb, 0.0)
        if rank:
            xb = _weighted_ranks(xp, w)
            yb = np.concatenate([_weighted_ranks(yb[i], w[i:i + 1]) for i in range(B)])
        else:
            xb = np.broadcast_to(xp, yb.shape)
        replicates.append(_weighted_pearson(xb, yb, w))
    replicates = np.concatenate(replicates) if replicates else np.zeros((0,))
    low, high, n_valid = _percentile_interval(replicates, ci, f"seeded {method} correlation")
    scheme = _permutation_scheme(codes) if n_perm else None
    r_perm = _permutation_r(rng, _standardize(xs), _standardize(ys), n_perm, codes, scheme)
    return SeededCorrelation(
        r=r, ci_low=float(low), ci_high=float(high), p_value=_p_value(r, r_perm) if n_perm else math.nan,
        n_pairs=P, n_tasks=int(codes.max()) + 1, n_seeds=S, method=method, ci=ci, n_boot=n_boot,
        n_boot_valid=n_valid, n_perm=n_perm,
        permutation=("observations" if scheme is None else "labels") if n_perm else "none",
    )
