"""Intervals over few independent units: Student t over seeds, with the pairs of a seed clustered.

A percentile bootstrap over 5 values covers far less than its nominal 95 % (it ignores that the spread
of 5 draws underestimates the population's). The runs of one seed are not independent units either:
the old/new task pairs of a seed share its pretraining-free fine-tuning path, its data order and its
earlier stages. So the ledger averages the pairs *within* each seed and treats the seed means as the
independent units::

    m_s   = mean of the values of seed s                      (s = 1..k)
    mean  = (1/k) sum_s m_s
    half  = t_{(1+ci)/2, k-1} * sd(m_1..m_k) / sqrt(k)        (sd with k - 1 in the denominator)
    interval = [mean - half, mean + half]

With one seed there is no seed-level spread: the interval is then over that seed's units (the pairs),
and :attr:`Interval.unit` says so. With a single value the interval is ``(nan, nan)`` and the unit
says "one value".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Interval:
    """A mean and its interval. ``n`` is the number of independent units the interval is over
    (``unit`` names them), ``n_values`` the number of values averaged."""

    mean: float
    low: float
    high: float
    n: int
    n_values: int
    unit: str

    @property
    def defined(self) -> bool:
        """Whether the interval has finite ends (at least two units)."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high))


def t_interval(values: Any, ci: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student t interval of the mean of ``values`` (shape (n,), NaN
    dropped); ``(mean, nan, nan)`` for one value, all NaN for none. A constant sample gives
    ``low == high == mean``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if v.size == 1:
        return mean, float("nan"), float("nan")
    half = float(_scipy_stats.t.ppf((1 + ci) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, mean - half, mean + half


def clustered_interval(values: pd.Series | np.ndarray, clusters: Any, *, ci: float = 0.95,
                       unit: str = "seeds", within: str = "pairs") -> Interval:
    """The t interval over cluster means (module docstring): ``values`` shape (n,), ``clusters`` one
    label per value (e.g. the seed). With one cluster, the t interval over its values, with ``unit``
    ``"<within> of one <unit singular>"``."""
    v = np.asarray(values, dtype=float)
    labels = np.asarray(clusters)
    if v.shape != labels.shape:
        raise ValueError(f"values {v.shape} and clusters {labels.shape} differ in shape")
    keep = np.isfinite(v)
    v, labels = v[keep], labels[keep]
    if v.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, 0, unit)
    means = pd.Series(v).groupby(labels, sort=True).mean().to_numpy()
    if means.size >= 2:
        mean, low, high = t_interval(means, ci)
        return Interval(mean, low, high, int(means.size), int(v.size), unit)
    mean, low, high = t_interval(v, ci)
    if v.size == 1:
        return Interval(mean, low, high, 1, 1, f"{unit.rstrip('s')} (one value)")
    return Interval(mean, low, high, int(v.size), int(v.size), f"{within} of one {unit.rstrip('s')}")
