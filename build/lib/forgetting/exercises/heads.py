"""Checkers for chapter 05 (attention-head disruption): the Jensen-Shannon divergence of two attention
rows, and the fraction of heads above a threshold taken from a null.

Each checker runs the reader's function on cases where the usual slips (natural log instead of log2,
ignoring the mask, not renormalising, KL instead of JS; a quantile of the wrong scores or at the wrong
level) give recognisably different numbers, and raises :class:`forgetting.exercises.ExerciseFeedback`
with a message that says what went wrong.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from forgetting.exercises import ExerciseFeedback, reader_number
from forgetting.mechanisms.heads import js_divergence


def _reference_js(p: np.ndarray, q: np.ndarray, mask: np.ndarray) -> float:
    return float(js_divergence(torch.tensor(p), torch.tensor(q), torch.tensor(mask)))


def _kl2(a: np.ndarray, b: np.ndarray) -> float:
    keep = a > 0
    return float(np.sum(a[keep] * np.log2(a[keep] / b[keep])))


def _renorm(p: np.ndarray, mask: np.ndarray) -> np.ndarray:
    p = np.where(mask, p, 0.0)
    return p / p.sum()


#: Test cases as triples of attention rows p, q over 6 keys and a key mask; the masked keys (padding,
#: future positions) still carry weight in some rows, as rows read from a padded batch can, so
#: ignoring the mask shows.
JS_CASES = [
    (np.array([0.5, 0.3, 0.2, 0.0, 0.0, 0.0]), np.array([0.1, 0.2, 0.7, 0.0, 0.0, 0.0]),
     np.array([True, True, True, False, False, False])),
    (np.array([0.4, 0.1, 0.1, 0.2, 0.2, 0.0]), np.array([0.05, 0.05, 0.3, 0.3, 0.1, 0.2]),
     np.array([True, True, True, True, False, False])),
    (np.array([0.7, 0.1, 0.1, 0.1, 0.0, 0.0]), np.array([0.0, 0.0, 0.6, 0.2, 0.2, 0.0]),
     np.array([True, True, True, False, True, False])),
]


def check_js_divergence(fn: Callable[[np.ndarray, np.ndarray, np.ndarray], float]) -> str:
    """Check ``fn(p, q, mask) -> float``: the Jensen-Shannon divergence in bits between attention rows
    ``p`` and ``q`` (NumPy arrays over keys) over the keys where ``mask`` is True (rows renormalised)."""
    for p, q, mask in JS_CASES:
        want = _reference_js(p, q, mask)
        got = reader_number(fn(p.copy(), q.copy(), mask.copy()), "the divergence in bits", "sum over the keys")
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        if math.isclose(got, want * math.log(2), rel_tol=1e-6):
            raise ExerciseFeedback("that is the divergence in nats: use log base 2 (np.log2) so that JS lies in "
                                   "[0, 1] bits, 1 for rows with disjoint support")
        pn, qn = _renorm(p, mask), _renorm(q, mask)
        mn = (pn + qn) / 2
        pu, qu = p / p.sum(), q / q.sum()
        mu = (pu + qu) / 2
        if math.isclose(got, 0.5 * _kl2(pu, mu) + 0.5 * _kl2(qu, mu), rel_tol=1e-6):
            raise ExerciseFeedback("you ignored the mask: keys the query cannot see (padding, later positions) "
                                   "must be dropped before comparing, and the rows renormalised over the rest")
        pz, qz = np.where(mask, p, 0.0), np.where(mask, q, 0.0)
        mz = (pz + qz) / 2
        if math.isclose(got, 0.5 * _kl2(pz, mz) + 0.5 * _kl2(qz, mz), rel_tol=1e-6):
            raise ExerciseFeedback("you masked but did not renormalise: after zeroing the hidden keys, divide "
                                   "each row by its sum so that it is a distribution again")
        kls = [_kl2(pn, mn), _kl2(qn, mn)] + ([_kl2(pn, qn)] if np.all(qn[pn > 0] > 0) else [])
        if any(math.isclose(got, k, rel_tol=1e-6) for k in kls) or not math.isfinite(got):
            raise ExerciseFeedback("that is a KL divergence (or infinite): JS averages KL(p || m) and KL(q || m) "
                                   "with the mixture m = (p + q) / 2, which makes it symmetric and finite")
        raise ExerciseFeedback(f"for p = {p}, q = {q}, mask = {mask.astype(int)} the JS divergence is {want:.5f} "
                               f"bits; your function gave {got:.5f}. JS = 1/2 KL(p||m) + 1/2 KL(q||m), m = (p+q)/2, "
                               "log base 2, 0 log 0 = 0, over the visible keys with rows renormalised.")
    return "Correct: JS divergence in bits over the visible keys, 0 for identical rows and 1 for disjoint ones."


def _severity_cases() -> list[tuple[str, np.ndarray, np.ndarray, float]]:
    rng = np.random.default_rng(0)
    null = rng.exponential(0.2, size=400)  # skewed, like divergences
    return [
        ("observed scores drawn from the null itself (nothing happened)", rng.exponential(0.2, size=300), null, 0.05),
        ("a stage that moved every head somewhat more than noise", rng.exponential(0.2, size=300) + 0.25, null, 0.05),
        ("a stage where a fifth of the heads moved a lot", np.concatenate(
            [rng.exponential(0.2, size=240), 1.0 + rng.exponential(0.3, size=60)]), null, 0.10),
    ]


def check_severe_fraction(fn: Callable[..., float]) -> str:
    """Check ``fn(observed, null, alpha) -> float``: the fraction of ``observed`` scores above the
    ``(1 - alpha)`` quantile of the ``null`` scores (any standard quantile definition is accepted)."""
    for name, observed, null, alpha in _severity_cases():
        got = reader_number(fn(observed.copy(), null.copy(), alpha), "a fraction between 0 and 1",
                            "the mean over the observed scores of (score > threshold)")
        lo = float(np.mean(observed > np.quantile(null, 1 - alpha, method="higher")))
        hi = float(np.mean(observed > np.quantile(null, 1 - alpha, method="lower")))
        if lo - 1e-9 <= got <= hi + 1e-9 or math.isclose(got, float(np.mean(observed >= np.quantile(null, 1 - alpha))), abs_tol=1e-9):
            continue
        if 0 <= got <= 1 and abs(got - float(np.mean(observed > np.quantile(observed, 1 - alpha)))) <= 1.0 / len(observed) + 1e-9:
            raise ExerciseFeedback(f"on {name} you returned {got:.3f}, about alpha = {alpha}: the threshold came from "
                                   "the OBSERVED scores, so it flags alpha of the heads whatever the stage did. "
                                   "Take the quantile of the null scores.")
        if math.isclose(got, float(np.mean(observed > np.quantile(null, alpha))), abs_tol=1.0 / len(observed)):
            raise ExerciseFeedback("you took the alpha quantile of the null; the cut is its (1 - alpha) quantile, "
                                   "the value that only alpha of the null heads exceed")
        if got > 1:
            raise ExerciseFeedback(f"you returned {got}: a count, not a fraction; divide by the number of heads")
        raise ExerciseFeedback(f"on {name} (alpha = {alpha}) the fraction is {lo:.3f}; your function gave {got:.3f}. "
                               "threshold = np.quantile(null, 1 - alpha); fraction = mean(observed > threshold).")
    return "Correct: the cut comes from the null, so 'severe' means beyond what noise alone does."


def head_table_case() -> pd.DataFrame:
    """A ``head_table`` of three pairs x 8 heads (columns pair, layer, head, weight_change, combined_z): each
    pair has one outlying head (Pearson and Spearman differ) and tied scores (ranks must be averaged), and
    the pairs sit at different levels (pooling them gives another correlation than each pair's)."""
    rng = np.random.default_rng(5)
    rows = []
    for k, (pair, level, slope) in enumerate([("2: b / a", 0.0, 1.0), ("3: c / b", 3.0, -0.5), ("4: d / c", 6.0, 0.2)]):
        change = rng.uniform(0.1, 1.0, size=8) + level
        z = slope * (change - level) + rng.normal(0, 0.3, size=8) + 2 * level
        z[3] = z[4] = round(float(z[3]), 1)  # a tie
        z[7] = 25.0 * (1 if slope > 0 else -1)  # an outlying head
        for i in range(8):
            rows.append({"pair": pair, "layer": i // 4, "head": i % 4, "weight_change": float(change[i]),
                         "combined_z": float(z[i])})
    return pd.DataFrame(rows)


def check_spearman_by_pair(fn: Callable) -> str:
    """Check ``fn(table) -> Series`` (index: pair): the Spearman correlation between ``weight_change`` and
    ``combined_z`` over the heads of each pair, as :func:`forgetting.stats.spearman` computes it."""
    from forgetting.stats import pearson, spearman  # deferred: the reference loads only when this checker runs

    case = head_table_case()
    want = pd.Series({p: spearman(g["weight_change"], g["combined_z"]) for p, g in case.groupby("pair")})
    got = fn(case.copy())
    if isinstance(got, dict):
        got = pd.Series(got)
    if not isinstance(got, pd.Series):
        try:
            pooled = float(got)
        except (TypeError, ValueError):
            pooled = None
        if pooled is not None and np.isclose(pooled, spearman(case["weight_change"], case["combined_z"])):
            raise ExerciseFeedback("that is one correlation over the heads of all pairs pooled; the pairs sit at different "
                                   "levels, which pooling turns into a correlation of its own. Group by 'pair' first")
        raise ExerciseFeedback(f"return a pandas Series with one correlation per pair, got {type(got).__name__}")
    if set(got.index) != set(want.index):
        raise ExerciseFeedback(f"expected one value per pair {sorted(want.index)}, got the index {list(got.index)}")
    got = got.reindex(want.index).astype(float)
    if np.allclose(got, want):
        return "Correct: a rank correlation per pair, robust to the one head whose score is far out."
    if np.allclose(got, [pearson(g["weight_change"], g["combined_z"]) for _, g in case.groupby("pair")]):
        raise ExerciseFeedback("that is Pearson r: one outlying head per pair dominates it. Spearman is the Pearson r of "
                               "the ranks (method='spearman', or scipy.stats.spearmanr)")
    raise ExerciseFeedback(f"on head_table_case() the correlations are {want.round(4).to_dict()}, yours are "
                           f"{got.round(4).to_dict()}. Rank each column within the pair (ties get their mean rank) "
                           "and take the Pearson r of the ranks.")


__all__ = ["JS_CASES", "check_js_divergence", "check_severe_fraction", "check_spearman_by_pair",
           "head_table_case"]
