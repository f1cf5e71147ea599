"""Checker functions for the book's exercises (chapter 01 here; one module per later chapter, e.g.
``forgetting.exercises.drift``): they test a reader's function against the package's
own implementation on matrices where common mistakes give different answers, and answer with a
teaching message instead of a bare assertion.

>>> from forgetting.exercises import check_bwt
>>> check_bwt(lambda R: ...)          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from forgetting.metrics import summarize


class ExerciseFeedback(AssertionError):
    """Raised by a checker: the message says what is wrong and how to think about it."""


# Hand-made cases where the usual slips (wrong row, wrong sign, including the last task, taking
# the first instead of the best earlier row) each give a different number from the right one.
_CASES = [
    np.array([[0.9, 0.1, 0.0], [0.5, 0.8, 0.2], [0.3, 0.6, 0.7]]),
    np.array([[0.6, 0.2, 0.1, 0.0], [0.8, 0.7, 0.3, 0.1], [0.4, 0.9, 0.9, 0.2], [0.2, 0.5, 0.4, 0.8]]),
]


def reader_number(value, what: str, array_hint: str = "") -> float:
    """A reader's return value as one float, or :class:`ExerciseFeedback` saying what to return.

    One-element tensors and arrays are accepted; a longer array gets ``array_hint`` (how to reduce it).
    """
    if hasattr(value, "detach"):  # a torch tensor (torch is not imported for chapter 01's checkers)
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.size > 1:
        raise ExerciseFeedback(f"your function returned an array of shape {value.shape}; return one number "
                               f"({what}){': ' + array_hint if array_hint else ''}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ExerciseFeedback(f"your function returned {value!r}; return one number ({what})") from None


def _call(fn: Callable, R: np.ndarray) -> float:
    return reader_number(fn(R.copy()), "a float")


def check_bwt(fn: Callable[[np.ndarray], float]) -> str:
    """Check a reader's backward transfer ``fn(R) -> float`` (R: T x T, higher is better)."""
    for R in _CASES:
        T = len(R)
        want = summarize(R)["bwt"]
        got = _call(fn, R)
        if np.isclose(got, want):
            continue
        if np.isclose(got, -want):
            raise ExerciseFeedback("the sign is flipped: BWT is R[T-1, j] - R[j, j], final minus just-learned, "
                                   "so forgetting makes it negative")
        if np.isclose(got, np.mean(R[-1] - np.diag(R))):
            raise ExerciseFeedback("you averaged over all T tasks; the last task has no later training, "
                                   "so BWT averages over the first T-1 only")
        if np.isclose(got, np.mean(R[-1, : T - 1] - R[0, : T - 1])):
            raise ExerciseFeedback("you compared with the first row; compare each task j with R[j, j], "
                                   "the row right after it was learned")
        raise ExerciseFeedback(f"on R =\n{R}\nBWT is {want:.4f}, your function gave {got:.4f}. "
                               "Row i is after training task i; BWT = mean_j<T-1 (R[T-1, j] - R[j, j]).")
    return "Correct: BWT = mean over j < T-1 of (R[T-1, j] - R[j, j])."


def check_forgetting(fn: Callable[[np.ndarray], float]) -> str:
    """Check a reader's Chaudhry forgetting ``fn(R) -> float`` (mean over j < T-1 of max_l R[l, j] - R[T-1, j])."""
    for R in _CASES:
        T = len(R)
        want = summarize(R)["forgetting"]
        got = _call(fn, R)
        if np.isclose(got, want):
            continue
        if np.isclose(got, -summarize(R)["bwt"]):
            raise ExerciseFeedback("that is minus BWT: it compares with R[j, j]. Forgetting compares with the "
                                   "BEST earlier score max over l < T-1 of R[l, j], which may come later than j")
        if np.isclose(got, np.mean([R[:, j].max() - R[-1, j] for j in range(T - 1)])):
            raise ExerciseFeedback("the max must run over earlier rows only (l < T-1), not the final row too")
        raise ExerciseFeedback(f"on R =\n{R}\nforgetting is {want:.4f}, your function gave {got:.4f}. "
                               "f_j = max_{l < T-1} R[l, j] - R[T-1, j], averaged over j < T-1.")
    return "Correct: forgetting = mean over j < T-1 of (best earlier score - final score)."
