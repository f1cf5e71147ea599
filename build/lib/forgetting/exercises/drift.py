"""Checkers for chapter 03 (representational drift): linear CKA from its formula, and the masked mean
readout of a causal LM's hidden states.

>>> from forgetting.exercises.drift import check_linear_cka, check_mean_readout
>>> check_linear_cka(lambda X, Y: ...)          # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from forgetting.exercises import ExerciseFeedback
from forgetting.mechanisms.drift import linear_cka, mean_token_features


def cka_cases() -> list[tuple[np.ndarray, np.ndarray]]:
    """Pairs (X, Y) where the usual slips give different numbers from linear CKA: the columns have large
    non-zero means (forgetting to centre matters), X has several directions of unequal variance (the
    Frobenius norm of X is not that of its Gram matrix), Y is a noisy linear map of X (0 < CKA < 1), and
    in the last case Y is a rotated, scaled and shifted copy of X (CKA = 1)."""
    rng = np.random.default_rng(3)
    n, p = 40, 6
    X = rng.normal(size=(n, p)) * np.array([3.0, 2.0, 1.0, 0.5, 0.3, 0.1]) + rng.normal(5.0, 2.0, size=p)
    Y1 = X[:, :4] @ rng.normal(size=(4, 5)) + rng.normal(size=(n, 5)) * 2.0 + 7.0
    Y2 = np.tanh(X @ rng.normal(size=(p, 3)) / 3) + rng.normal(size=(n, 3)) * 0.3 - 4.0
    Q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    Y3 = 2.5 * X @ Q + 1.0
    return [(X, Y1), (X, Y2), (X, Y3)]


def _centre(A: np.ndarray) -> np.ndarray:
    return A - A.mean(axis=0, keepdims=True)


def _slips(X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    Xc, Yc = _centre(X), _centre(Y)
    cross = lambda A, B: np.linalg.norm(B.T @ A) ** 2
    return {
        "no_centre": cross(X, Y) / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)),
        "frobenius_of_x": cross(Xc, Yc) / (np.linalg.norm(Xc) ** 2 * np.linalg.norm(Yc) ** 2),
        "not_squared": np.linalg.norm(Yc.T @ Xc) / math.sqrt(np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)),
        "rows_centred": cross(X - X.mean(1, keepdims=True), Y - Y.mean(1, keepdims=True))
        / (np.linalg.norm((X - X.mean(1, keepdims=True)).T @ (X - X.mean(1, keepdims=True)))
           * np.linalg.norm((Y - Y.mean(1, keepdims=True)).T @ (Y - Y.mean(1, keepdims=True)))),
    }


def _value(fn: Callable, *args, what: str) -> float:
    value = fn(*(a.copy() if isinstance(a, np.ndarray) else a.clone() for a in args))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ExerciseFeedback(f"your function returned {value!r}; return {what} (one float)") from None


def check_linear_cka(fn: Callable[[np.ndarray, np.ndarray], float], *, debiased: bool = False) -> str:
    """Check ``fn(X, Y) -> float`` (X: (n, p1), Y: (n, p2) NumPy arrays, rows = the same examples)
    against :func:`forgetting.mechanisms.drift.linear_cka` (biased, or debiased with ``debiased=True``)."""
    for k, (X, Y) in enumerate(cka_cases()):
        want = linear_cka(X, Y, debiased=debiased)
        got = _value(fn, X, Y, what="CKA")
        if np.isclose(got, want, rtol=1e-6, atol=1e-9):
            continue
        if debiased:
            if np.isclose(got, linear_cka(X, Y)):
                raise ExerciseFeedback("that is the biased CKA; the debiased form replaces each HSIC with the unbiased "
                                       "estimator (zero the Gram diagonals, then the three-term formula) before the ratio")
            raise ExerciseFeedback(f"on case {k} (cka_cases()[{k}]) debiased CKA is {want:.6f}, your function gave "
                                   f"{got:.6f}. Check the zeroed diagonals and the (n-1)(n-2) and 2/(n-2) terms.")
        slips = _slips(X, Y)
        if np.isclose(got, slips["no_centre"]):
            raise ExerciseFeedback("the columns are not centred: CKA compares centred representations (subtract each "
                                   "feature's mean over the examples, X - X.mean(axis=0)); without it the large means "
                                   "dominate and every pair looks similar")
        if np.isclose(got, slips["rows_centred"]):
            raise ExerciseFeedback("you subtracted each example's mean (axis=1); centre each FEATURE over the examples: "
                                   "X - X.mean(axis=0)")
        if np.isclose(got, slips["frobenius_of_x"]):
            raise ExerciseFeedback("the normaliser is ||Xc^T Xc||_F ||Yc^T Yc||_F, the norms of the Gram (feature "
                                   "covariance) matrices, not ||Xc||_F^2 ||Yc||_F^2; the two agree only when Xc has rank 1")
        if np.isclose(got, slips["not_squared"]):
            raise ExerciseFeedback("the numerator is the SQUARED Frobenius norm ||Yc^T Xc||_F^2 (HSIC is a squared "
                                   "norm), divided by ||Xc^T Xc||_F ||Yc^T Yc||_F")
        if k == 2:
            raise ExerciseFeedback(f"Y in case 2 is a rotated, scaled and shifted copy of X, so CKA must be 1; your "
                                   f"function gave {got:.6f}")
        raise ExerciseFeedback(f"on case {k} (cka_cases()[{k}]) CKA is {want:.6f}, your function gave {got:.6f}. "
                               "CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc.")
    form = "debiased" if debiased else "biased"
    return f"Correct: your {form} linear CKA matches forgetting.mechanisms.drift.linear_cka on every case."


def readout_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states (batch 3, seq 5, d 4) and an attention mask with right padding, left padding and none:
    averaging over padding positions, or dividing by the sequence length, gives a different answer."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g) + torch.arange(5.0).view(1, 5, 1)  # padding rows are not zero
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    return hidden, mask


def check_mean_readout(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> str:
    """Check ``fn(hidden, mask) -> (batch, d)``: the mean of each sequence's hidden states over its
    non-padding positions (mask 1), as :func:`forgetting.mechanisms.drift.mean_token_features`."""
    hidden, mask = readout_case()
    want = mean_token_features(hidden, mask)
    got = fn(hidden.clone(), mask.clone())
    got = torch.as_tensor(np.asarray(got) if not isinstance(got, torch.Tensor) else got, dtype=want.dtype)
    if tuple(got.shape) != tuple(want.shape):
        raise ExerciseFeedback(f"expected shape (batch, d) = {tuple(want.shape)}, got {tuple(got.shape)}; average over "
                               "the sequence axis (dim 1) only")
    if torch.allclose(got, want, atol=1e-5):
        return "Correct: each sequence is averaged over its own tokens only."
    m = mask.to(hidden.dtype)
    if torch.allclose(got, hidden.mean(1), atol=1e-5):
        raise ExerciseFeedback("padding positions went into the mean; weight each position by the mask and divide by "
                               "the number of real tokens: (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)")
    if torch.allclose(got, (hidden * m[..., None]).sum(1) / hidden.shape[1], atol=1e-5):
        raise ExerciseFeedback("you zeroed the padding but divided by the full sequence length; divide by each "
                               "sequence's number of real tokens, mask.sum(1)")
    last = torch.stack([hidden[i, int(torch.nonzero(mask[i]).max())] for i in range(len(mask))])
    if torch.allclose(got, last, atol=1e-5):
        raise ExerciseFeedback("that is the last-token readout; this exercise asks for the mean over the real tokens")
    raise ExerciseFeedback(f"on readout_case() the mean readout is\n{want.numpy().round(4)}\nyours is\n"
                           f"{got.numpy().round(4)}")


def summary_case() -> pd.DataFrame:
    """A ``drift_summary`` table (pair, drop, continue_drop, reseed_drop, excess) with one pair of each kind:
    above both nulls, between them (larger than continue, smaller than reseed), below both, between them
    the other way round (a reseed null smaller than the continue null), and one exactly at the continue
    null. Testing ``excess > 0``, or ``drop > continue_drop`` alone, gives other sets."""
    rows = [("2: b / a", 0.30, 0.05, 0.20), ("3: c / b", 0.12, 0.04, 0.25), ("3: c / a", 0.02, 0.04, 0.10),
            ("4: d / c", 0.15, 0.20, 0.08), ("4: d / b", 0.06, 0.06, 0.30), ("4: d / a", 0.09, 0.03, 0.18)]
    df = pd.DataFrame(rows, columns=["pair", "drop", "continue_drop", "reseed_drop"])
    df["excess"] = df["drop"] - df[["continue_drop", "reseed_drop"]].max(axis=1)
    return df


def between_nulls(summary: pd.DataFrame) -> list[str]:
    """The pairs whose drop is larger than the continue null's and smaller than the reseed null's."""
    keep = (summary["drop"] > summary["continue_drop"]) & (summary["drop"] < summary["reseed_drop"])
    return list(summary.loc[keep, "pair"])


def check_between_nulls(fn: Callable[[pd.DataFrame], list]) -> str:
    """Check ``fn(summary) -> list of pair labels``: the pairs of a ``drift_summary`` table whose observed drop
    lies above the continue null's drop and below the reseed null's (``continue_drop < drop < reseed_drop``)."""
    case = summary_case()
    want = between_nulls(case)
    got = fn(case.copy())
    if isinstance(got, pd.DataFrame) and "pair" in got.columns:
        got = got["pair"]
    try:
        got = [str(p) for p in got]
    except TypeError:
        raise ExerciseFeedback(f"return the pair labels (a list of strings from the 'pair' column), got {got!r}") from None
    if sorted(got) == sorted(want):
        return ("Correct: these pairs moved more than continued training of the old task does, but less than "
                "re-training it with another seed: a change within the range of equally good solutions.")
    if sorted(got) == sorted(case.loc[case["excess"] > 0, "pair"]):
        raise ExerciseFeedback("excess > 0 picks the pairs above BOTH nulls; the question is about a drop between them: "
                               "above the continue null and below the reseed null")
    if sorted(got) == sorted(case.loc[case["drop"] > case["continue_drop"], "pair"]):
        raise ExerciseFeedback("you only compared with the continue null; the drop must also be below the reseed null")
    lo, hi = case[["continue_drop", "reseed_drop"]].min(axis=1), case[["continue_drop", "reseed_drop"]].max(axis=1)
    if sorted(got) == sorted(case.loc[(case["drop"] > lo) & (case["drop"] < hi), "pair"]):
        raise ExerciseFeedback("in pair '4: d / c' the reseed null moved LESS than the continue null, and the drop lies "
                               "between them the other way round; the exercise asks for continue_drop < drop < "
                               "reseed_drop, in that order")
    if sorted(got) == sorted(case.loc[(case["drop"] >= case["continue_drop"]) & (case["drop"] < case["reseed_drop"]), "pair"]):
        raise ExerciseFeedback("a drop equal to the continue null's is not larger than it: use strict inequalities")
    raise ExerciseFeedback(f"on summary_case() the pairs between the nulls are {want}, yours are {got}. Compare the "
                           "columns drop, continue_drop and reseed_drop (drops, 1 - CKA: larger means moved more).")


__all__ = ["between_nulls", "check_between_nulls", "check_linear_cka", "check_mean_readout", "cka_cases",
           "readout_case", "summary_case"]
