"""Statistics for the book: bootstrap confidence intervals.

Percentile bootstrap (Efron & Tibshirani 1993): resample the n observations with replacement
``n_boot`` times, compute the statistic on each resample, and report the (1-ci)/2 and (1+ci)/2
quantiles of those values. Deterministic given ``seed``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def bootstrap_mean_ci(values: Any, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` (shape (n,)) and its percentile bootstrap interval.

    With n = 1 the interval is the single value (no spread can be estimated); raise on empty input.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("values: need at least one value")
    if not 0 < ci < 1:
        raise ValueError(f"ci: must be between 0 and 1, got {ci}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
    return mean, float(low), float(high)
