"""Chapter 03 (representational drift): tables and charts put the right numbers in their specs, and the
exercise checkers accept right answers and reject the usual slips with the right message.

The drift table is a small hand-made one in the format of ``analysis_for(...)["drift"]``: two pairs,
five hidden states (embedding + 4 blocks), observed and the two nulls.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.exercises import ExerciseFeedback
from forgetting.exercises.drift import check_linear_cka, check_mean_readout, cka_cases, readout_case
from forgetting.mechanisms.drift import linear_cka
from forgetting.viz import drift as dviz

# (stage, new, old) -> null -> CKA per layer 0..4
CKA = {
    (2, "recall_job", "recall_city"): {"": [1.0, 0.6, 0.55, 0.5, 0.5], "continue": [0.99, 0.9, 0.88, 0.85, 0.8],
                                       "reseed": [0.99, 0.88, 0.86, 0.84, 0.75]},
    (3, "sort", "recall_city"): {"": [1.0, 0.8, 0.75, 0.7, 0.6], "continue": [1.0, 0.7, 0.8, 0.65, 0.6],
                                 "reseed": [1.0, 0.85, 0.8, 0.75, 0.7]},
}


@pytest.fixture()
def drift() -> pd.DataFrame:
    rows = []
    for (stage, new, old), by_null in CKA.items():
        for null, values in by_null.items():
            for layer, cka in enumerate(values):
                rows.append({"layer": layer, "cka": cka, "readout": "mean", "n": 60, "debiased": False, "note": "",
                             "stage": stage, "new_task": new, "old_task": old, "null": null})
    return pd.DataFrame(rows)


def test_intermediate_layers():
    assert dviz.intermediate_layers([0, 1, 2, 3, 4]) == [1, 2, 3]
    assert dviz.intermediate_layers(np.array([4, 0, 2, 1, 3, 3])) == [1, 2, 3]
    assert dviz.intermediate_layers([0, 1]) == []


def test_drift_table(drift):
    table = dviz.drift_table(drift)
    assert len(table) == 2 * 3 * 5
    row = table[(table["stage"] == 2) & (table["source"] == "reseed null") & (table["layer"] == 4)].iloc[0]
    assert row["drop"] == pytest.approx(0.25) and row["n_seeds"] == 1
    assert table[table["intermediate"]]["layer"].unique().tolist() == [1, 2, 3]


def test_drift_table_averages_seeds(drift):
    two = pd.concat([drift.assign(seed=0), drift.assign(seed=1, cka=drift["cka"] - 0.1)], ignore_index=True)
    table = dviz.drift_table(two)
    row = table[(table["stage"] == 2) & (table["source"] == dviz.SOURCES[""]) & (table["layer"] == 1)].iloc[0]
    assert row["cka"] == pytest.approx(0.55) and row["n_seeds"] == 2


def test_drift_summary(drift):
    summary = dviz.drift_summary(drift).set_index("stage")
    assert summary.loc[2, "drop"] == pytest.approx(1 - np.mean([0.6, 0.55, 0.5]))
    assert summary.loc[2, "continue_drop"] == pytest.approx(1 - np.mean([0.9, 0.88, 0.85]))
    assert summary.loc[2, "excess"] == pytest.approx(summary.loc[2, "drop"] - summary.loc[2, "reseed_drop"])
    assert summary.loc[2, "clear_layers"] == 3
    # stage 3: observed 0.8/0.75/0.7 against continue 0.7/0.8/0.65 and reseed 0.85/0.8/0.75: only layer 2 is clear
    assert summary.loc[3, "clear_layers"] == 1 and summary.loc[3, "n_layers"] == 3


def test_unknown_null_is_named(drift):
    with pytest.raises(ValueError, match="warm"):
        dviz.drift_table(drift.assign(null="warm"))


def test_cka_layer_chart_spec(drift):
    chart = dviz.cka_layer_chart(drift, subtitle="synthetic")
    spec = chart.to_dict()
    (param,) = spec["params"]
    assert param["bind"]["options"] == [dviz.pair_label(2, "recall_job", "recall_city"), dviz.pair_label(3, "sort", "recall_city")]
    rows = [r for values in spec["datasets"].values() for r in values]
    band = [r for r in rows if "y0" in r]
    assert band == [{"x0": 1, "x1": 3, "y0": pytest.approx(0.53), "y1": pytest.approx(0.68)}]
    (got,) = [r["cka"] for r in rows if r.get("source") == "continue null" and r.get("stage") == 3 and r.get("layer") == 2]
    assert got == pytest.approx(0.8)
    no_band = dviz.cka_layer_chart(drift, paper_drop=None).to_dict()
    assert not [r for values in no_band["datasets"].values() for r in values if "y0" in r]


def test_head_cka_table():
    heads = pd.DataFrame([
        {"layer": layer, "head": head, "kv_head": head // 2, "metric": metric, "value": value, "stage": 2,
         "new_task": "recall_job", "old_task": old, "null": null}
        for layer in range(2) for head in range(4) for old in ("recall_city", "sort")
        for null, value in (("", 0.5 + 0.1 * layer), ("continue", 0.9), ("reseed", 0.7))
        for metric in ("output_cka", "js_divergence")
    ])
    wide = dviz.head_cka_table(heads, "recall_city")
    assert set(wide.columns) == {"layer", "head", "stage", "observed", "continue null", "reseed null"}
    assert len(wide) == 8
    assert wide[wide["layer"] == 1]["observed"].tolist() == pytest.approx([0.6] * 4)
    with pytest.raises(ValueError, match="old tasks"):
        dviz.head_cka_table(heads, "update_city")


# ---------------------------------------------------------------------------------------------------
# exercise checkers
# ---------------------------------------------------------------------------------------------------


def _cka(X, Y):
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    return np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc))


def _debiased(X, Y):
    def hsic(K, L):
        n = len(K)
        K, L = K.copy(), L.copy()
        np.fill_diagonal(K, 0)
        np.fill_diagonal(L, 0)
        one = np.ones(n)
        return (np.trace(K @ L) + one @ K @ one * (one @ L @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))
    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L))


def test_cka_cases_have_known_answers():
    (X, Y1), _, (X3, Y3) = cka_cases()
    assert linear_cka(X3, Y3) == pytest.approx(1.0)
    assert 0.1 < linear_cka(X, Y1) < 0.9
    assert np.abs(X.mean(0)).min() > 1.0  # centring matters


def test_linear_cka_checker_accepts_right_answers():
    assert check_linear_cka(_cka).startswith("Correct")
    assert check_linear_cka(_debiased, debiased=True).startswith("Correct")


@pytest.mark.parametrize("slip, message", [
    (lambda X, Y: np.linalg.norm(Y.T @ X) ** 2 / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)), "not centred"),
    (lambda X, Y: (lambda Xr, Yr: np.linalg.norm(Yr.T @ Xr) ** 2 / (np.linalg.norm(Xr.T @ Xr) * np.linalg.norm(Yr.T @ Yr)))(
        X - X.mean(1, keepdims=True), Y - Y.mean(1, keepdims=True)), "axis=1"),
    (lambda X, Y: (lambda Xc, Yc: np.linalg.norm(Yc.T @ Xc) ** 2 / (np.linalg.norm(Xc) ** 2 * np.linalg.norm(Yc) ** 2))(
        X - X.mean(0), Y - Y.mean(0)), "Gram"),
    (lambda X, Y: np.sqrt(_cka(X, Y)), "SQUARED"),
    (lambda X, Y: 0.5, "CKA is"),
    (lambda X, Y: "high", "return CKA"),
])
def test_linear_cka_checker_names_the_slip(slip, message):
    with pytest.raises(ExerciseFeedback, match=message):
        check_linear_cka(slip)


def test_debiased_checker_names_the_biased_form():
    with pytest.raises(ExerciseFeedback, match="biased CKA"):
        check_linear_cka(_cka, debiased=True)


def test_mean_readout_checker():
    right = lambda h, m: (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)  # noqa: E731
    assert check_mean_readout(right).startswith("Correct")
    hidden, mask = readout_case()
    assert not torch.allclose(right(hidden, mask), hidden.mean(1))


@pytest.mark.parametrize("slip, message", [
    (lambda h, m: h.mean(1), "padding positions"),
    (lambda h, m: (h * m[..., None]).sum(1) / h.shape[1], "full sequence length"),
    (lambda h, m: torch.stack([h[i, int(torch.nonzero(m[i]).max())] for i in range(len(m))]), "last-token"),
    (lambda h, m: h.mean(2), "expected shape"),
])
def test_mean_readout_checker_names_the_slip(slip, message):
    with pytest.raises(ExerciseFeedback, match=message):
        check_mean_readout(slip)
