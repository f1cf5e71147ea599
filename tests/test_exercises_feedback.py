"""The exercise checkers added for issue 13 reject the usual wrong answers with a message that names the
mistake (the right answers are run from the chapters themselves in test_exercises_solutions.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forgetting.evaluate import performance_matrix
from forgetting.exercises import ExerciseFeedback, check_bwt_from_evals, evals_case


def _bwt(R):
    T = len(R)
    return sum(R[T - 1, j] - R[j, j] for j in range(T - 1)) / (T - 1)


# chapter 01, exercise 3 ----------------------------------------------------------------------------------


def test_bwt_from_evals_reference_value():
    R = performance_matrix(evals_case(), "exact_match").iloc[1:].to_numpy()
    assert _bwt(R) == pytest.approx(-0.4)


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda e, m="exact_match": _bwt((-1 if m == "loss" else 1) * performance_matrix(e, m).to_numpy()), "stage 0"),
    (lambda e, m="exact_match": _bwt(performance_matrix(e, m).iloc[1:].to_numpy()), "lower is better"),
    (lambda e, m="exact_match": _bwt((-1 if m == "loss" else 1) * e[(e.metric == m) & (e.task_index >= 0)]
                                     .pivot_table(index="stage", columns="task_index", values="value")
                                     .to_numpy()[1:]), "end_of_stage"),
    (lambda e, m="exact_match": "bwt", "one number"),
])
def test_bwt_from_evals_rejects(wrong, message):
    with pytest.raises(ExerciseFeedback, match=message):
        check_bwt_from_evals(wrong)


# chapter 02, exercise 3 ----------------------------------------------------------------------------------


def test_first_order_range_reference():
    from forgetting.exercises.gradients import first_order_range, segment_case

    got = first_order_range(segment_case())
    assert got["A"] == 0.2 and got["B"] == 0.2 and np.isnan(got["C"])


def test_first_order_range_rejects():
    from forgetting.exercises.gradients import check_first_order_range

    def largest_inside(segment, tol=0.1):  # the largest t inside the band, also after the estimate left it
        ok = segment[(segment["predicted"] / segment["observed"] - 1).abs() <= tol]
        return ok.groupby("pair")["t"].max().reindex(["A", "B", "C"])

    def absolute(segment, tol=0.1):
        out = {}
        for pair, g in segment.sort_values("t").groupby("pair"):
            held = ((g["predicted"] - g["observed"]).abs() <= tol).cumprod().astype(bool)
            out[pair] = g["t"][held].max() if held.any() else float("nan")
        return pd.Series(out)

    with pytest.raises(ExerciseFeedback, match="comes back at t = 0.8"):
        check_first_order_range(largest_inside)
    with pytest.raises(ExerciseFeedback, match="relative"):
        check_first_order_range(absolute)
    with pytest.raises(ExerciseFeedback, match="Series indexed by pair"):
        check_first_order_range(lambda segment, tol=0.1: 0.2)


# chapter 03, exercise 3 ----------------------------------------------------------------------------------


def test_between_nulls_reference():
    from forgetting.exercises.drift import between_nulls, summary_case

    assert between_nulls(summary_case()) == ["3: c / b", "4: d / a"]


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda s: list(s.loc[s["excess"] > 0, "pair"]), "BOTH nulls"),
    (lambda s: list(s.loc[s["drop"] > s["continue_drop"], "pair"]), "also be below the reseed"),
    (lambda s: list(s.loc[(s["drop"] > s[["continue_drop", "reseed_drop"]].min(axis=1))
                          & (s["drop"] < s[["continue_drop", "reseed_drop"]].max(axis=1)), "pair"]), "other way round"),
    (lambda s: list(s.loc[(s["drop"] >= s["continue_drop"]) & (s["drop"] < s["reseed_drop"]), "pair"]), "strict"),
    (lambda s: 3, "pair labels"),
])
def test_between_nulls_rejects(wrong, message):
    from forgetting.exercises.drift import check_between_nulls

    with pytest.raises(ExerciseFeedback, match=message):
        check_between_nulls(wrong)


# chapter 04, exercise 3 ----------------------------------------------------------------------------------


def _interp_ratio(ll, lam, fl, fam, *, sort=True, log=True, nan_outside=True):
    order = np.argsort(ll) if sort else np.arange(len(ll))
    x, y = np.asarray(ll)[order], np.asarray(lam)[order]
    ref = np.exp(np.interp(fl, x, np.log(y))) if log else np.interp(fl, x, y)
    ratio = np.asarray(fam) / ref
    return np.where((fl >= x.min()) & (fl <= x.max()), ratio, np.nan) if nan_outside else ratio


def test_matched_ratio_reference():
    from forgetting.exercises.landscape import matched_case

    ratios = _interp_ratio(*matched_case())
    assert np.isnan(ratios[-1]) and np.all(ratios[:-1] < 1)


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda *a: _interp_ratio(*a, nan_outside=False), "return NaN there"),
    (lambda *a: _interp_ratio(*a, sort=False), "sort"),
    (lambda *a: _interp_ratio(*a, log=False), "interpolate log lambda"),
    (lambda *a: 1 / _interp_ratio(*a), "upside down"),
    (lambda *a: 0.5, "one ratio per forgetting point"),
])
def test_matched_ratio_rejects(wrong, message):
    from forgetting.exercises.landscape import check_matched_ratio

    with pytest.raises(ExerciseFeedback, match=message):
        check_matched_ratio(wrong)


# chapter 05, exercise 3 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda t: t.groupby("pair").apply(lambda g: g["weight_change"].corr(g["combined_z"])), "Pearson"),
    (lambda t: t["weight_change"].corr(t["combined_z"], method="spearman"), "pooled"),
    (lambda t: t.groupby("layer").apply(lambda g: g["weight_change"].corr(g["combined_z"], method="spearman")),
     "one value per pair"),
])
def test_spearman_by_pair_rejects(wrong, message):
    from forgetting.exercises.heads import check_spearman_by_pair

    with pytest.raises(ExerciseFeedback, match=message):
        check_spearman_by_pair(wrong)


def test_spearman_by_pair_accepts_pandas_spearman():
    from forgetting.exercises.heads import check_spearman_by_pair

    answer = check_spearman_by_pair(
        lambda t: t.groupby("pair").apply(lambda g: g["weight_change"].corr(g["combined_z"], method="spearman")))
    assert answer.startswith("Correct")


# chapter 07, exercise 3 ----------------------------------------------------------------------------------


def _restore(key):
    return lambda after, before, group: {n: (before[n] if key(n, group) in n else t).clone() for n, t in after.items()}


def test_restore_group_rejects():
    from forgetting.exercises.dynamics import check_restore_group

    with pytest.raises(ExerciseFeedback, match="post_attention_layernorm"):
        check_restore_group(_restore(lambda n, g: "attention" if g == "attention" else ".mlp."))
    with pytest.raises(ExerciseFeedback, match="in place"):
        def in_place(after, before, group):
            for n in after:
                if ".self_attn." in n:
                    after[n].zero_()
            return after
        check_restore_group(in_place)
    with pytest.raises(ExerciseFeedback, match="EVERY"):
        check_restore_group(lambda after, before, group: {n: before[n] for n in after if ".self_attn." in n})
    with pytest.raises(ExerciseFeedback, match="'mlp'"):
        check_restore_group(_restore(lambda n, g: ".self_attn."))  # always attention
