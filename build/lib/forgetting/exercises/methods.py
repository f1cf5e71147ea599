"""Checkers for chapter 08 (methods): the Student t interval over seeds, an effect net of the null of the
same pair, and Holm's correction of p-values.

>>> from forgetting.exercises.methods import check_t_interval
>>> check_t_interval(lambda values, ci=0.95: ...)        # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from forgetting.exercises import ExerciseFeedback
from forgetting.stats import holm
from forgetting.stats.intervals import t_interval

#: Seed means of a statistic, for 5, 3 and 2 seeds (the t quantile differs most from 1.96 with few seeds).
SEED_CASES = [np.array([0.12, 0.31, 0.05, 0.22, 0.18]), np.array([-0.4, -0.1, -0.25]), np.array([0.9, 1.3])]


def _pair(got) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in got)
    except (TypeError, ValueError):
        raise ExerciseFeedback(f"return the interval as two numbers (low, high), got {got!r}") from None
    return low, high


def check_t_interval(fn: Callable[..., tuple[float, float]]) -> str:
    """Check ``fn(values, ci=0.95) -> (low, high)``: the Student t interval of the mean of ``values``
    (one value per seed), ``mean -+ t_{(1+ci)/2, k-1} s / sqrt(k)`` with the sample standard deviation
    ``s`` (ddof = 1), as :func:`forgetting.stats.intervals.t_interval`."""
    for values in SEED_CASES:
        for ci in (0.95, 0.9):
            _, lo, hi = t_interval(values, ci)
            low, high = _pair(fn(values.copy(), ci=ci))
            if np.isclose(low, lo) and np.isclose(high, hi):
                continue
            k, mean = len(values), float(values.mean())
            half = (hi - lo) / 2
            z = scipy_stats.norm.ppf((1 + ci) / 2)
            s1, s0 = values.std(ddof=1), values.std(ddof=0)
            if np.isclose(high - mean, z * s1 / math.sqrt(k)):
                raise ExerciseFeedback(f"with k = {k} seeds you used the normal quantile {z:.3f}; the mean of k values with "
                                       f"an estimated s follows Student's t with k - 1 = {k - 1} degrees of freedom: "
                                       f"scipy.stats.t.ppf({(1 + ci) / 2}, {k - 1}) = "
                                       f"{scipy_stats.t.ppf((1 + ci) / 2, k - 1):.3f}")
            if np.isclose(high - mean, half * s0 / s1):
                raise ExerciseFeedback("use the sample standard deviation with ddof = 1 (np.std(values, ddof=1)); NumPy's "
                                       "default ddof = 0 underestimates s with few seeds")
            if np.isclose(high - mean, half * math.sqrt(k)):
                raise ExerciseFeedback("that is the spread of one seed's value, not of the mean: divide s by sqrt(k)")
            if np.isclose(high - mean, scipy_stats.t.ppf(ci, k - 1) * s1 / math.sqrt(k)):
                raise ExerciseFeedback(f"a two-sided {ci:.0%} interval leaves (1 - ci) / 2 in each tail: the quantile is "
                                       f"t.ppf((1 + ci) / 2, k - 1), not t.ppf(ci, k - 1)")
            raise ExerciseFeedback(f"for values {values.tolist()} (ci = {ci}) the interval is [{lo:.4f}, {hi:.4f}], yours "
                                   f"is [{low:.4f}, {high:.4f}]. mean -+ t.ppf((1 + ci) / 2, k - 1) * s / sqrt(k).")
    return "Correct: the Student t interval over seed means, as forgetting.stats.intervals.t_interval computes it."


def gradient_tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(observed, null)`` gradient tables (columns seed, stage, old_task, unit, cosine) of two seeds x two
    pairs, where the null's conflict rates differ between pairs (subtracting one pooled null rate gives
    another answer), the tables hold matrix rows besides the head rows, and one head has no cosine (NaN)."""
    rng = np.random.default_rng(11)
    observed, null = [], []
    for seed in (0, 1):
        for stage, old, null_rate in ((2, "a", 0.1), (3, "b", 0.5)):
            for rows, rate in ((observed, 0.6 if stage == 2 else 0.7), (null, null_rate)):
                cos = np.where(rng.random(20) < rate, -1.0, 1.0) * rng.uniform(0.05, 0.5, 20)
                cos[0] = -abs(cos[0]) if rate > 0.4 else abs(cos[0])
                cos[5] = np.nan
                rows += [(seed, stage, old, "head", c) for c in cos]
                rows += [(seed, stage, old, "matrix", c) for c in (-0.3, -0.2, -0.1, 0.4)]
    cols = ["seed", "stage", "old_task", "unit", "cosine"]
    return pd.DataFrame(observed, columns=cols), pd.DataFrame(null, columns=cols)


def conflict_excess(observed: pd.DataFrame, null: pd.DataFrame) -> pd.Series:
    """Per (seed, stage, old_task): the fraction of head rows with a negative cosine, minus the same fraction
    in the null of the same pair (the ledger's ``conflict_excess_heads``); NaN cosines count as not negative."""
    def rate(df: pd.DataFrame) -> pd.Series:
        heads = df[df["unit"] == "head"]
        return (heads["cosine"] < 0).groupby([heads["seed"], heads["stage"], heads["old_task"]]).mean()

    return rate(observed) - rate(null)


def check_conflict_excess(fn: Callable[[pd.DataFrame, pd.DataFrame], pd.Series]) -> str:
    """Check ``fn(observed, null) -> Series`` indexed by (seed, stage, old_task): the head conflict rate net
    of the split-half null of the same pair, as the ledger's statistic ``conflict_excess_heads``."""
    observed, null = gradient_tables()
    want = conflict_excess(observed, null)
    got = fn(observed.copy(), null.copy())
    if not isinstance(got, pd.Series):
        raise ExerciseFeedback(f"return a pandas Series indexed by (seed, stage, old_task), got {type(got).__name__}")
    if len(got) != len(want):
        raise ExerciseFeedback(f"expected one value per (seed, stage, old_task) pair ({len(want)}), got {len(got)}")
    try:
        got = got.reindex(want.index).astype(float)
    except Exception:  # noqa: BLE001 (any index the reader built)
        raise ExerciseFeedback("index the result by seed, stage and old_task (groupby(['seed', 'stage', 'old_task']))") from None
    if np.allclose(got, want, equal_nan=True):
        return "Correct: each pair's conflict rate minus the rate its own null shows, as the ledger computes it."
    heads = observed[observed["unit"] == "head"]
    obs_rate = (heads["cosine"] < 0).groupby([heads["seed"], heads["stage"], heads["old_task"]]).mean()
    null_heads = null[null["unit"] == "head"]
    if np.allclose(got, obs_rate - float((null_heads["cosine"] < 0).mean())):
        raise ExerciseFeedback("you subtracted one null rate pooled over all pairs; the null of pair (seed, stage, "
                               "old_task) is that pair's own split-half control, and the null rates differ between pairs")
    if np.allclose(got, -want):
        raise ExerciseFeedback("the sign is flipped: the effect is observed minus null (positive: more conflict than "
                               "the two halves of one task already show)")
    if np.allclose(got, obs_rate):
        raise ExerciseFeedback("that is the observed conflict rate alone; subtract the null's rate of the same pair")
    rate_all = lambda df: (df["cosine"] < 0).groupby([df["seed"], df["stage"], df["old_task"]]).mean()
    if np.allclose(got, rate_all(observed) - rate_all(null)):
        raise ExerciseFeedback("the tables also hold matrix rows (column unit); the statistic is over head slices: "
                               "keep unit == 'head'")
    raise ExerciseFeedback(f"on gradient_tables() the effects are {want.round(4).tolist()}, yours are "
                           f"{got.round(4).tolist()}. Per pair: mean(cosine < 0) over the head rows, observed minus null.")


#: p-values of the Holm exercise (unsorted; two tied; one large enough that Holm's cap at 1 matters).
P_CASES = [np.array([0.01, 0.04, 0.03, 0.005, 0.5]), np.array([0.02, 0.02, 0.2, 0.001]), np.array([0.6, 0.3, 0.7])]


def check_holm(fn: Callable[[np.ndarray], np.ndarray]) -> str:
    """Check ``fn(p_values) -> adjusted`` (same order as the input): Holm-Bonferroni adjusted p-values, as
    :func:`forgetting.stats.holm`."""
    for p in P_CASES:
        want = holm(p)
        got = np.asarray(fn(p.copy()), dtype=float).reshape(-1)
        if got.shape != want.shape:
            raise ExerciseFeedback(f"return one adjusted p-value per input ({len(p)}), got shape {got.shape}")
        if np.allclose(got, want):
            continue
        m = len(p)
        if np.allclose(got, np.minimum(1, m * p)):
            raise ExerciseFeedback("that is Bonferroni (every p times m); Holm multiplies the smallest by m, the next by "
                                   "m - 1, ... over the p-values sorted ascending")
        order = np.argsort(p)
        raw = np.empty(m)
        raw[order] = (m - np.arange(m)) * p[order]
        if np.allclose(got, np.minimum(1, raw)):
            raise ExerciseFeedback(f"for p = {p.tolist()} the adjusted values must not decrease along the sorted order: take "
                                   "the running maximum, adjusted_(i) = max_{j <= i} (m - j + 1) p_(j)")
        if np.allclose(got, np.sort(want)):
            raise ExerciseFeedback("return the adjusted p-values in the order of the input, not sorted")
        if np.allclose(got, np.maximum.accumulate(raw[order])[np.argsort(order)]):
            raise ExerciseFeedback("an adjusted p-value is a probability: cap it at 1 (np.minimum(1, ...))")
        raise ExerciseFeedback(f"for p = {p.tolist()} Holm gives {np.round(want, 4).tolist()}, yours "
                               f"{np.round(got, 4).tolist()}. Sort, multiply the i-th smallest by m - i (i from 0), "
                               "running maximum, cap at 1, back to the input order.")
    return "Correct: Holm's step-down correction, which controls the family-wise error rate like Bonferroni with more power."


__all__ = ["P_CASES", "SEED_CASES", "check_conflict_excess", "check_holm", "check_t_interval", "conflict_excess",
           "gradient_tables"]
