"""Checkers for chapter 02 (gradient interference): a conflict rate from an alignment table, and an
old-vs-new cosine judged against the split-half null of the old task.

>>> from forgetting.exercises.gradients import check_conflict_rate, check_corrected_cosine
>>> check_conflict_rate(lambda alignment: ...)        # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from forgetting.exercises import ExerciseFeedback, reader_number
from forgetting.mechanisms.gradients import compare_with_null, conflict_rate


def alignment_case() -> pd.DataFrame:
    """A small alignment table in the format of ``analysis_for(...)["gradients"]`` where the usual slips
    (counting matrix or layer rows, keeping NaN cosines in the denominator, counting a cosine of exactly 0
    as a conflict, returning a count) each give a different answer from the right one (4 of 11 heads)."""
    rows = [
        # unit, kind, layer, head, cosine
        ("head", "q", 0, 0, -0.31), ("head", "q", 0, 1, 0.12), ("head", "k", 0, 0, -0.05),
        ("head", "v", 0, 0, 0.0), ("head", "o", 0, 0, 0.44), ("head", "o", 0, 1, np.nan),
        ("head", "q", 1, 0, 0.27), ("head", "q", 1, 1, -0.62), ("head", "k", 1, 0, 0.08),
        ("head", "v", 1, 0, -0.18), ("head", "v", 1, 1, 0.33), ("head", "o", 1, 0, 0.51), ("head", "o", 1, 1, np.nan),
        ("matrix", "q", 0, None, -0.2), ("matrix", "q", 1, None, -0.1), ("matrix", "k", 0, None, -0.3),
        ("matrix", "gate", 0, None, -0.4), ("layer", "all", 0, None, -0.15), ("model", "all", None, None, -0.05),
    ]
    df = pd.DataFrame(rows, columns=["unit", "kind", "layer", "head", "cosine"])
    df["layer"] = df["layer"].astype("Int64")
    df["head"] = df["head"].astype("Int64")
    return df


def check_conflict_rate(fn: Callable[[pd.DataFrame], float]) -> str:
    """Check ``fn(alignment) -> float``: the fraction of attention heads with a negative old-vs-new cosine,
    among the heads whose cosine is defined (``unit == "head"``, ``cosine < 0``, NaN rows left out)."""
    case = alignment_case()
    want = float(conflict_rate(case, unit="head")["conflict_rate"].iloc[0])
    got = reader_number(fn(case.copy()), "the conflict rate")
    if np.isclose(got, want):
        return f"Correct: {got:.2f} of the heads with a defined cosine conflict (cosine < 0)."
    heads = case[case["unit"] == "head"]
    defined = heads[heads["cosine"].notna()]
    everything = case[case["cosine"].notna()]
    if np.isclose(got, (everything["cosine"] < 0).mean()):
        raise ExerciseFeedback("you counted every row; the table also holds matrix, layer and model rows "
                               "(column `unit`). Keep the head rows only: unit == 'head'")
    if np.isclose(got, (defined["cosine"] < 0).sum() / len(heads)):
        raise ExerciseFeedback("two heads have no cosine (NaN: a gradient norm of 0) and you kept them in the "
                               "denominator; a head without a cosine is neither in conflict nor aligned, leave it out")
    if np.isclose(got, (defined["cosine"] <= 0).mean()):
        raise ExerciseFeedback("a cosine of exactly 0 is orthogonal, not a conflict: count cosine < 0, not <= 0")
    if np.isclose(got, (defined["cosine"] > 0).mean()) or np.isclose(got, 1 - want):
        raise ExerciseFeedback("that is the fraction of heads that AGREE; a conflict is a negative cosine")
    if np.isclose(got, (defined["cosine"] < 0).sum()):
        raise ExerciseFeedback("that is the number of conflicting heads; divide by the number of heads with a "
                               "defined cosine to get a rate")
    raise ExerciseFeedback(f"on this table (alignment_case()) the conflict rate is {want:.4f}, your function gave "
                           f"{got:.4f}. Keep unit == 'head' rows with a defined cosine; the rate is the fraction "
                           "with cosine < 0.")


# (old-vs-new cosine, split-half null cosine of the old task): a reliable direction, a half-reliable one,
# a noisy one (null near 0) and two without any reproducible direction (null <= 0).
_NULL_CASES = [(-0.30, 0.80), (-0.12, 0.25), (0.05, 0.04), (-0.40, 0.0), (-0.20, -0.15)]


def _reference_corrected(cosine: float, null_cosine: float) -> float:
    table = pd.DataFrame({"unit": ["head"], "name": ["w"], "layer": [0], "group": ["attention"], "kind": ["q"],
                          "part": ["weight"], "head": [0], "head_type": ["query"], "cosine": [cosine]})
    null = table.assign(cosine=[null_cosine], split=[0])
    return float(compare_with_null(table, null)["corrected_cosine"].iloc[0])


def check_corrected_cosine(fn: Callable[[float, float], float]) -> str:
    """Check ``fn(cosine, null_cosine) -> float``: the old-vs-new cosine corrected for the noise in the old
    task's gradient, ``cosine / sqrt(R)`` with the Spearman-Brown reliability ``R = 2c / (1 + c)`` of the
    full-sample gradient (c = the split-half cosine), and NaN where ``c <= 0`` (no reproducible direction)."""
    for cosine, c in _NULL_CASES:
        want = _reference_corrected(cosine, c)
        got = reader_number(fn(cosine, c), "the corrected cosine (or NaN)")
        if math.isnan(want):
            if not math.isnan(got):
                raise ExerciseFeedback(f"with a split-half cosine of {c} the old task has no reproducible gradient "
                                       "direction (the two halves of its own data do not agree): there is nothing "
                                       f"to correct, return float('nan'); you returned {got:.4f}")
            continue
        if not math.isnan(got) and np.isclose(got, want):
            continue
        if np.isclose(got, cosine / math.sqrt(c)):
            raise ExerciseFeedback("you divided by sqrt(c), the reliability of a HALF-sample gradient; the cosine was "
                                   "measured with the full sample, whose reliability is Spearman-Brown R = 2c / (1 + c)")
        if np.isclose(got, cosine / (2 * c / (1 + c))):
            raise ExerciseFeedback("a cosine is attenuated by the square root of the reliability: divide by sqrt(R), not R")
        if np.isclose(got, cosine * math.sqrt(2 * c / (1 + c))):
            raise ExerciseFeedback("noise shrinks the cosine towards 0, so the correction must make it larger in size: "
                                   "divide by sqrt(R), don't multiply")
        raise ExerciseFeedback(f"for cosine = {cosine}, split-half cosine c = {c}: the corrected cosine is {want:.4f}, "
                               f"your function gave {got:.4f}. R = 2c / (1 + c), corrected = cosine / sqrt(R).")
    return "Correct: corrected = cosine / sqrt(2c / (1 + c)), and undefined where the old task's own halves disagree."


def segment_case() -> pd.DataFrame:
    """A ``segment`` table (pair, t, predicted, observed) of three pairs where the usual slips give different
    answers: in pair A the estimate leaves the 10 % band at t = 0.4 and, by chance, comes back into it at
    t = 0.8 (the largest t *inside* the band is not the largest t up to which it holds); in pair B the
    observed change is 0 at one point (a relative error without a guard divides by 0) and the absolute
    error stays small while the relative error grows; in pair C the estimate is off from the first point."""
    t = [0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0]
    rows = {
        "A": ([0.05, 0.10, 0.20, 0.40, 0.60, 0.80, 1.00], [0.051, 0.104, 0.215, 0.50, 0.70, 0.82, 1.40]),
        "B": ([0.010, 0.020, 0.040, 0.080, 0.120, 0.160, 0.200], [0.0101, 0.0205, 0.0390, 0.0, 0.150, 0.210, 0.30]),
        "C": ([0.10, 0.20, 0.40, 0.80, 1.20, 1.60, 2.00], [0.20, 0.35, 0.60, 0.90, 1.10, 1.40, 1.60]),
    }
    return pd.DataFrame([{"pair": pair, "t": ti, "predicted": p, "observed": o}
                         for pair, (pred, obs) in rows.items() for ti, p, o in zip(t, pred, obs)])


def first_order_range(segment: pd.DataFrame, tol: float = 0.1) -> pd.Series:
    """Per pair: the largest ``t`` up to which (at every point ``t' <= t``) the first-order estimate is within
    ``tol`` of the observed change, ``|predicted / observed - 1| <= tol`` (an observed change of 0 is outside);
    NaN where it is off at the smallest ``t`` already."""
    out = {}
    for pair, g in segment.sort_values("t").groupby("pair", sort=False):
        obs = g["observed"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = np.abs(g["predicted"].to_numpy(dtype=float) / obs - 1) <= tol
        ok &= obs != 0
        n = len(ok) if ok.all() else int(np.argmin(ok))
        out[pair] = float(g["t"].iloc[n - 1]) if n else float("nan")
    return pd.Series(out, name="t").rename_axis("pair")


def check_first_order_range(fn: Callable[..., pd.Series]) -> str:
    """Check ``fn(segment, tol=0.1) -> Series`` (index: pair): the largest ``t`` up to which the first-order
    estimate stays within ``tol`` (relative) of the observed change, NaN where it fails at the first point."""
    case = segment_case()
    want = first_order_range(case)
    got = fn(case.copy(), tol=0.1)
    if isinstance(got, dict):
        got = pd.Series(got)
    if not isinstance(got, pd.Series):
        raise ExerciseFeedback(f"return a pandas Series indexed by pair (e.g. from groupby('pair')), got {type(got).__name__}")
    if set(got.index) != set(want.index):
        raise ExerciseFeedback(f"expected one value per pair {sorted(want.index)}, got the index {list(got.index)}; "
                               "group by the 'pair' column")
    got = got.reindex(want.index).astype(float)
    if np.allclose(got, want, equal_nan=True):
        return "Correct: the range of t over which the straight-line estimate holds, stopping at its first failure."
    if np.isclose(got["B"], 1.0) or np.isclose(got["B"], 0.8):
        raise ExerciseFeedback("in pair B the absolute error stays small while the observed change is small; the "
                               "tolerance is relative: |predicted / observed - 1| <= tol, and an observed change of "
                               "0 (t = 0.4) is not within it")
    if np.isclose(got["A"], 0.8):
        raise ExerciseFeedback("in pair A the estimate leaves the 10 % band at t = 0.4 and comes back at t = 0.8 by "
                               "chance (the two curves cross); the question is up to which t it holds at EVERY point, "
                               "so stop at the first t where it fails")
    if np.isnan(want["C"]) and not np.isnan(got["C"]):
        raise ExerciseFeedback(f"in pair C the estimate is off by more than 10 % at the first t already, so there is no "
                               f"range where it holds: return NaN, not {got['C']:g}")
    raise ExerciseFeedback(f"on segment_case() the answer is {want.to_dict()}, yours is {got.to_dict()}. Sort by t; "
                           "for each pair take the points before the first with |predicted / observed - 1| > tol.")


__all__ = ["alignment_case", "check_conflict_rate", "check_corrected_cosine", "check_first_order_range",
           "first_order_range", "segment_case"]
