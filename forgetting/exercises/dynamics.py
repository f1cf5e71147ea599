"""Checkers for chapter 07 (how the mechanisms interact over training)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from forgetting.dynamics import onset_steps
from forgetting.exercises import ExerciseFeedback

# A series whose final value is below its peak and whose steps are not 0, 1, 2, ...: taking the final
# value instead of the peak, or returning an index instead of a step, give different answers.
_STEPS = np.array([0, 5, 10, 20, 40, 80])
_SERIES = np.array([0.0, 0.5, 1.8, 4.0, 3.0, 2.0])


def check_t50(fn: Callable[[np.ndarray, np.ndarray], float]) -> str:
    """Check a reader's ``fn(steps, values) -> t50``: the first step where ``|x - x0|`` reaches half its maximum."""
    table = pd.DataFrame({"step": _STEPS, "value": _SERIES, "measure": "x", "layer": -1})
    want = float(onset_steps(table)["t50"].iloc[0])
    got = fn(_STEPS.copy(), _SERIES.copy())
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise ExerciseFeedback(f"return one number (a step), got {got!r}") from None
    if np.isclose(got, want):
        return f"Correct: t50 = {want:g}, the first step where the change reaches half of its largest value."
    moved = np.abs(_SERIES - _SERIES[0])
    if np.isclose(got, float(np.argmax(moved >= 0.5 * moved.max()))):
        raise ExerciseFeedback("you returned the position in the array; return the step at that position "
                               "(snapshots are not evenly spaced)")
    final = _STEPS[np.argmax(moved >= 0.5 * abs(_SERIES[-1] - _SERIES[0]))]
    if np.isclose(got, final):
        raise ExerciseFeedback("you took half of the FINAL change; use half of the LARGEST change, since "
                               "a measure can overshoot and come back (as curvature does after forgetting)")
    raise ExerciseFeedback(f"for steps {_STEPS.tolist()} and values {_SERIES.tolist()} t50 is {want:g}, "
                           f"you gave {got:g}")


def check_verdict(fn: Callable[[float, float, tuple[float, float]], str]) -> str:
    """Check a reader's ``fn(low, high, paper_range) -> verdict`` for an interval against a claimed range:
    ``"consistent"`` if they overlap, ``"smaller"`` if the interval lies below, ``"larger"`` if above."""
    cases = [((0.10, 0.20), (0.32, 0.47), "smaller"), ((0.30, 0.35), (0.32, 0.47), "consistent"),
             ((0.50, 0.60), (0.32, 0.47), "larger"), ((0.20, 0.60), (0.32, 0.47), "consistent")]
    for (low, high), paper, want in cases:
        got = fn(low, high, paper)
        if got == want:
            continue
        if (low, high) == (0.20, 0.60):
            raise ExerciseFeedback("an interval that contains the whole claimed range is consistent with it: "
                                   "overlap is the test, not containment of one end")
        raise ExerciseFeedback(f"interval [{low}, {high}] against the claimed {paper}: want {want!r}, got {got!r}")
    return "Correct: an interval overlapping the claimed range is consistent; otherwise it is smaller or larger."
