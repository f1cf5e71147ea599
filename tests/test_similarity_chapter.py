"""Chapter 06 helpers: the exercise checkers accept right answers and name typical mistakes; the charts put the
right data and controls in their specs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.exercises import ExerciseFeedback
from forgetting.exercises.similarity import (
    check_bhattacharyya,
    check_gradient_cosine,
    check_pair_bootstrap,
    gradient_case,
)
from forgetting.viz.similarity import ROLES, pair_label, scatter_table, similarity_heatmap, similarity_scatter

# --- checkers ------------------------------------------------------------------------------------------


def right_cosine(a, b):
    dot = sum(float((a[k] * b[k]).sum()) for k in a)
    na = math.sqrt(sum(float((a[k] ** 2).sum()) for k in a))
    nb = math.sqrt(sum(float((b[k] ** 2).sum()) for k in b))
    return dot / (na * nb)


def test_gradient_cosine_checker_accepts_the_right_answer():
    assert check_gradient_cosine(right_cosine).startswith("Correct")
    # a tensor result is fine too
    assert check_gradient_cosine(lambda a, b: torch.tensor(right_cosine(a, b))).startswith("Correct")


@pytest.mark.parametrize("fn, message", [
    (lambda a, b: np.mean([float(torch.nn.functional.cosine_similarity(a[k].flatten(), b[k].flatten(), dim=0))
                           for k in a]), "averaged the cosines of the tensors"),
    (lambda a, b: sum(float((a[k] * b[k]).sum()) for k in a), "that is the dot product"),
    (lambda a, b: sum(float((a[k] * b[k]).sum()) for k in a)
     / (sum(float((a[k] ** 2).sum()) for k in a) * sum(float((b[k] ** 2).sum()) for k in b)), "squared norms"),
    (lambda a, b: -right_cosine(a, b), "sign is flipped"),
    (lambda a, b: 0.5, "the cosine is -0"),
    (lambda a, b: "high", "returned 'high'"),
])
def test_gradient_cosine_checker_names_the_mistake(fn, message):
    with pytest.raises(ExerciseFeedback, match=message):
        check_gradient_cosine(fn)


def right_bc(a, b):
    na, nb = sum(a.values()), sum(b.values())
    return sum(math.sqrt(a[t] / na * b[t] / nb) for t in a if t in b)


def test_bhattacharyya_checker():
    assert check_bhattacharyya(right_bc).startswith("Correct")
    mistakes = [
        (lambda a, b: sum(math.sqrt(a[t] * b[t]) for t in a if t in b), "raw counts"),
        (lambda a, b: sum(min(a[t] / sum(a.values()), b[t] / sum(b.values())) for t in a if t in b), "intersection"),
        (lambda a, b: sum(a[t] / sum(a.values()) * b[t] / sum(b.values()) for t in a if t in b), "square root"),
        (lambda a, b: len(set(a) & set(b)) / len(set(a) | set(b)), "Jaccard"),
        (lambda a, b: right_bc(a, b) + 0.01 if set(a) & set(b) else 0.3, "on token_case"),
    ]
    for fn, message in mistakes:
        with pytest.raises(ExerciseFeedback, match=message):
            check_bhattacharyya(fn)


def test_pair_bootstrap_checker():
    assert check_pair_bootstrap("b").startswith("Correct")
    assert check_pair_bootstrap(" B) ").startswith("Correct")
    for wrong, message in (("a", "independent"), ("c", "not pulled towards 0"), ("d", "normality")):
        with pytest.raises(ExerciseFeedback, match=message):
            check_pair_bootstrap(wrong)
    with pytest.raises(ExerciseFeedback, match="one letter"):
        check_pair_bootstrap("e")


def test_gradient_case_separates_the_mistakes():
    a, b = gradient_case()
    per_tensor = np.mean([float(torch.nn.functional.cosine_similarity(a[k].flatten(), b[k].flatten(), dim=0)) for k in a])
    assert abs(per_tensor - right_cosine(a, b)) > 0.05


# --- charts --------------------------------------------------------------------------------------------


@pytest.fixture
def table() -> pd.DataFrame:
    pairs = [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a"), ("b", "c"), ("c", "b")]
    return pd.DataFrame({
        "task_a": [p[0] for p in pairs], "task_b": [p[1] for p in pairs],
        "forgetting_loss": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "forgetting_exact": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "forgetting_answer": [0.0, 0.1, 0.2, 0.3, 0.4, np.nan],
        "token_overlap": [0.9, 0.9, 0.5, 0.5, 0.3, 0.3], "fisher": [0.8, 0.8, 0.4, 0.4, 0.2, 0.2],
    })


def test_scatter_table_is_long_and_labelled(table):
    long = scatter_table(table)
    assert set(long.similarity) == {"token_overlap", "fisher"}
    assert len(long) == 2 * (6 + 6 + 5)  # the NaN forgetting_answer row is dropped
    row = long[(long.pair == "c→a") & (long.similarity == "fisher") & (long.forgetting == "forgetting_loss")]
    assert row.s.item() == 0.4 and row.f.item() == 4.0
    assert pair_label("x", "y") == "x→y"
    with pytest.raises(ValueError, match="forgetting_loss"):
        scatter_table(table.drop(columns="forgetting_loss"))


def test_similarity_scatter_spec_has_three_selects_and_the_data(table):
    spec = similarity_scatter(table, subtitle="test").to_dict()
    params = {p["name"]: p for p in spec["params"]}
    assert set(params) == {"similarity", "forgetting", "task"}
    assert params["similarity"]["value"] == "token_overlap" and params["forgetting"]["value"] == "forgetting_answer"
    assert params["task"]["bind"]["options"] == ["(none)", "a", "b", "c"]
    assert params["forgetting"]["bind"]["options"] == ["forgetting_loss", "forgetting_exact", "forgetting_answer"]
    (data,) = spec["datasets"].values()
    assert len(data) == len(scatter_table(table))
    assert {d["pair"] for d in data} == {"a→b", "b→a", "a→c", "c→a", "b→c", "c→b"}
    text = str(spec)
    assert "poly" in text and all(role in text for role in ROLES)
    # pair labels are drawn only for the highlighted task's pairs (none while no task is highlighted)
    (text_layer,) = [layer for layer in spec["layer"] if (layer.get("mark") or {}).get("type") == "text"]
    opacity = text_layer["encoding"]["opacity"]
    assert opacity["value"] == 0.0 and opacity["condition"]["value"] == 0.9
    assert opacity["condition"]["test"].startswith("task != '(none)' && ")


def test_similarity_heatmap_uses_aggregate_rows(table):
    sim = pd.DataFrame({"task_a": ["a", "a", "b", "b", "a"], "task_b": ["a", "b", "a", "b", "b"],
                        "measure": ["fisher"] * 4 + ["representation_layer"],
                        "layer": pd.array([None] * 4 + [1], dtype="Int64"), "value": [1, 0.3, 0.3, 1, 0.9]})
    spec = similarity_heatmap(sim).to_dict()
    (data,) = spec["datasets"].values()
    assert len(data) == 4 and {d["measure"] for d in data} == {"fisher"}
    assert spec["params"][0]["bind"]["options"] == ["fisher"]
    with pytest.raises(ValueError, match="none of the measures"):
        similarity_heatmap(sim[sim.measure == "representation_layer"].assign(layer=pd.NA))
