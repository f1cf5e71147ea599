"""Resampling for :mod:`forgetting.stats`: bootstrap weights (ordinary and cluster), percentile
intervals, permutation tests (of observations, or of group labels: a Mantel test), and the bootstrap
interval of a mean (:func:`forgetting.stats.bootstrap_mean_ci`, imported, documented and used from
:mod:`forgetting.stats`). numpy only.

The methods are described in the module docstring of :mod:`forgetting.stats`, which calls these
functions; in short, for n observations with group labels ``codes`` (n, m) over K groups::

    ordinary bootstrap:  w_i = #{draws of i} among n draws with replacement from the observations
    cluster bootstrap:   w_i = prod_m c(codes[i, m]),  c(t) = #{draws of t} among K draws from the groups
    percentile interval: the (1 - ci)/2 and (1 + ci)/2 quantiles of the statistic over the resamples
    permutation p-value: (1 + #{|r_perm| >= |r|}) / (1 + n_perm)          (two-sided, never 0)

A resample is a weight vector (B, n) (observation i appears w_i times); statistics take weights, so a
resample is never materialised (``_weighted_pearson``, ``_weighted_ranks``: with unit weights the
ordinary Pearson r and average ranks). Every function draws from the ``numpy.random.Generator`` it is given,
in a fixed order, so results depend only on the caller's seed.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

__all__ = ["bootstrap_mean_ci"]

_CHUNK = 256  # bootstrap replicates drawn and evaluated at a time (bounds memory at _CHUNK x n)


# ----------------------------------------------------------------------------------------------
# Groups
# ----------------------------------------------------------------------------------------------


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
# Statistics of weighted resamples
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Bootstrap
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


# ----------------------------------------------------------------------------------------------
# Permutations
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# The mean of per-seed values
# ----------------------------------------------------------------------------------------------


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
