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
import pandas as pd

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


def evals_case() -> pd.DataFrame:
    """A small ``run.evals`` table (3 tasks, stages 0..3, exact match and loss) in the run's long format,
    where the usual slips each give a different BWT: stage 0 (``base``, before fine-tuning) is a row of
    its own, evaluations inside a stage (``end_of_stage == False``) differ from the stage-end ones, a
    held-out corpus row has ``task_index == -1``, and the loss is lower-is-better."""
    tasks = ["t0", "t1", "t2"]
    exact = np.array([[0.2, 0.05, 0.1], [0.9, 0.1, 0.0], [0.5, 0.8, 0.2], [0.3, 0.6, 0.7]])
    loss = np.array([[4.0, 5.0, 4.5], [0.5, 4.0, 4.4], [2.0, 0.6, 4.1], [3.0, 1.5, 0.4]])
    rows = []
    for stage in range(4):
        stage_task = "base" if stage == 0 else tasks[stage - 1]
        step = 30 * stage
        for j, task in enumerate(tasks):
            for metric, M in (("exact_match", exact), ("loss", loss)):
                rows.append((stage, stage_task, step, True, j, task, metric, float(M[stage, j])))
                if stage > 0:  # a curve point half-way through the stage
                    rows.append((stage, stage_task, step - 15, False, j, task, metric, float(M[stage, j]) * 0.5 + 0.05))
        rows.append((stage, stage_task, step, True, -1, "heldout_corpus", "loss", 2.0 + stage))
    return pd.DataFrame(rows, columns=["stage", "stage_task", "step", "end_of_stage", "task_index", "task",
                                       "metric", "value"])


def check_bwt_from_evals(fn: Callable) -> str:
    """Check a reader's ``fn(evals, metric) -> float``: BWT of a run's ``evals`` table for one metric, from
    the stage-end rows of stages 1..T (stage 0 is the model before fine-tuning), the loss negated so that
    higher is better, as :func:`forgetting.evaluate.summary_table` computes it."""
    from forgetting.evaluate import HIGHER_IS_BETTER, performance_matrix  # deferred: evaluate imports torch

    evals = evals_case()
    for metric in ("exact_match", "loss"):
        R = performance_matrix(evals, metric).to_numpy()
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        want = summarize(sign * R[1:])["bwt"]
        got = reader_number(fn(evals.copy(), metric), "the BWT of the run")
        if np.isclose(got, want):
            continue
        T = R.shape[1]
        if np.isclose(got, sign * float(np.mean([R[-1, j] - R[j, j] for j in range(T)]))):
            raise ExerciseFeedback("you included stage 0 as the first row of R: row 0 of performance_matrix is 'base', "
                                   "the model before any fine-tuning; R for BWT is rows 1..T (R = table.iloc[1:])")
        if np.isclose(got, -want):
            if metric == "loss":
                raise ExerciseFeedback("for the loss lower is better: negate it (or flip the difference) before BWT, "
                                       "so that forgetting makes BWT negative for every metric")
            raise ExerciseFeedback("the sign is flipped: BWT is final minus just-learned, R[T-1, j] - R[j, j]")
        ends = evals[(evals["metric"] == metric) & (evals["task_index"] >= 0)]
        mixed = ends.pivot_table(index="stage", columns="task_index", values="value").to_numpy()
        if np.isclose(got, summarize(sign * mixed[1:])["bwt"]):
            raise ExerciseFeedback("you averaged every evaluation of a stage, also those along its forgetting curve; "
                                   "R uses the stage-end rows only (end_of_stage == True), as performance_matrix does")
        raise ExerciseFeedback(f"for metric {metric!r} on evals_case() BWT is {want:.4f}, your function gave {got:.4f}. "
                               "R = performance_matrix(evals, metric).iloc[1:], negated for the loss; then "
                               "BWT = mean_j<T-1 (R[T-1, j] - R[j, j]).")
    return "Correct: BWT from the stage-end rows of stages 1..T, with the loss negated so that higher is better."
