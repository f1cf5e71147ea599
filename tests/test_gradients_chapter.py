"""Chapter 02 (gradient interference): the chart/table functions put the right numbers in their specs,
and the exercise checkers accept right answers and reject the usual slips with the right message.

The tables are small synthetic ones in the format of ``analysis_for(...)["gradients"]`` /
``["gradient_null"]`` (2 layers, 4 query heads, 2 key/value heads, two pairs), built by
``gradient_alignment`` itself so the format cannot drift from the package's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.exercises import ExerciseFeedback
from forgetting.exercises.gradients import alignment_case, check_conflict_rate, check_corrected_cosine
from forgetting.mechanisms.gradients import conflict_rate, gradient_alignment
from forgetting.viz import gradients as gviz

LAYERS, HEADS, KV, HEAD_DIM, D, FF = 2, 4, 2, 3, 12, 8
PAIRS = [(2, "recall_job", "recall_city"), (3, "sort", "recall_city")]


def _weights(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out[p + "self_attn.q_proj.weight"] = torch.randn(HEADS * HEAD_DIM, D, generator=g)
        out[p + "self_attn.k_proj.weight"] = torch.randn(KV * HEAD_DIM, D, generator=g)
        out[p + "self_attn.v_proj.weight"] = torch.randn(KV * HEAD_DIM, D, generator=g)
        out[p + "self_attn.o_proj.weight"] = torch.randn(D, HEADS * HEAD_DIM, generator=g)
        out[p + "mlp.gate_proj.weight"] = torch.randn(FF, D, generator=g)
        out[p + "mlp.up_proj.weight"] = torch.randn(FF, D, generator=g)
        out[p + "mlp.down_proj.weight"] = torch.randn(D, FF, generator=g)
    return out


def _tiny_geometry():
    """An AttentionGeometry for the synthetic names, from a tiny random Llama (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from forgetting.models.geometry import attention_geometry

    config = LlamaConfig(vocab_size=16, hidden_size=D, intermediate_size=FF, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, num_key_value_heads=KV, head_dim=HEAD_DIM)
    return attention_geometry(LlamaForCausalLM(config))


@pytest.fixture(scope="module")
def tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    geometry = _tiny_geometry()
    obs, null = [], []
    for k, (stage, new, old) in enumerate(PAIRS):
        keys = {"stage": stage, "new_task": new, "old_task": old}
        a, b = _weights(10 * k), _weights(10 * k + 1)
        mixed = {n: -0.5 * a[n] + 0.2 * b[n] for n in a}  # mostly against a: conflict
        obs.append(gradient_alignment(a, mixed, geometry).assign(**keys))
        half = {n: a[n] + 0.3 * b[n] for n in a}  # mostly with a: a reliable old-task direction
        null.append(gradient_alignment(a, half, geometry).assign(split=0, **keys))
    return pd.concat(obs, ignore_index=True), pd.concat(null, ignore_index=True)


def _spec_values(chart) -> list[dict]:
    spec = chart.to_dict()
    return [row for values in spec["datasets"].values() for row in values]


def _params(chart) -> dict:
    return {p["name"]: p for p in chart.to_dict().get("params", [])}


def test_with_null_matches_each_pair(tables):
    gradients, null = tables
    merged = gviz.with_null(gradients, null)
    assert len(merged) == len(gradients)
    row = merged[(merged["unit"] == "matrix") & (merged["kind"] == "q") & (merged["layer"] == 0) & (merged["stage"] == 3)].iloc[0]
    want = null[(null["unit"] == "matrix") & (null["kind"] == "q") & (null["layer"] == 0) & (null["stage"] == 3)]["cosine"].iloc[0]
    assert row["null_cosine"] == pytest.approx(want)
    assert row["corrected_cosine"] == pytest.approx(row["cosine"] / math.sqrt(2 * want / (1 + want)))
    assert set(merged["pair"]) == {gviz.pair_label(*p) for p in PAIRS}


def test_with_null_pools_seeds_pair_by_pair(tables):
    gradients, null = tables
    two = pd.concat([gradients.assign(seed=0), gradients.assign(seed=1)], ignore_index=True)
    two_null = pd.concat([null.assign(seed=0), null.assign(seed=1, cosine=null["cosine"] * 0.5)], ignore_index=True)
    merged = gviz.with_null(two, two_null)
    assert len(merged) == 2 * len(gradients)
    q = merged[(merged["unit"] == "matrix") & (merged["kind"] == "q") & (merged["layer"] == 0) & (merged["stage"] == 2)]
    by_seed = q.set_index("seed")["null_cosine"]
    assert by_seed[1] == pytest.approx(0.5 * by_seed[0]) and by_seed[0] > 0


def test_head_table_has_query_and_kv_heads(tables):
    table = gviz.head_alignment_table(*tables)
    counts = table[(table["measure"] == gviz.OBSERVED) & (table["stage"] == 2)].groupby("kind").size()
    assert counts.to_dict() == {"q": LAYERS * HEADS, "o": LAYERS * HEADS, "k": LAYERS * KV, "v": LAYERS * KV}
    assert (table[table["measure"] == gviz.OBSERVED]["value"] < 0).mean() > 0.7  # built to conflict


def test_head_heatmap_spec(tables):
    chart = gviz.head_alignment_heatmap(*tables, subtitle="synthetic")
    params = _params(chart)
    assert set(params) == {"matrix", "pair", "measure"}
    assert params["matrix"]["bind"]["options"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert params["pair"]["bind"]["options"] == [gviz.pair_label(*p) for p in PAIRS]
    rows = _spec_values(chart)
    gradients, _ = tables
    want = gradients[(gradients["unit"] == "head") & (gradients["kind"] == "v") & (gradients["layer"] == 1)
                     & (gradients["head"] == 1) & (gradients["stage"] == 3)]["cosine"].iloc[0]
    (got,) = [r["value"] for r in rows if r["matrix"] == "v_proj" and r["layer"] == 1 and r["head"] == 1
              and r["stage"] == 3 and r["measure"] == gviz.OBSERVED]
    assert got == pytest.approx(want)


def test_matrix_chart_and_conflict_summary(tables):
    gradients, null = tables
    chart = gviz.matrix_alignment_chart(gradients, null)
    assert _params(chart)["pair"]["bind"]["options"][0] == gviz.ALL_PAIRS
    rows = _spec_values(chart)
    assert {r["matrix"] for r in rows if "matrix" in r} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    summary = gviz.conflict_summary(gradients, null).set_index("units")
    attn = gradients[(gradients["unit"] == "matrix") & (gradients["group"] == "attention")]
    assert summary.loc["attention matrices", "n"] == len(attn)
    assert summary.loc["attention matrices", "observed"] == pytest.approx((attn["cosine"] < 0).mean())
    assert summary.loc["attention matrices", "null"] == pytest.approx(0.0)  # the null was built aligned
    assert summary.loc["attention heads", "excess"] == pytest.approx(
        summary.loc["attention heads", "observed"] - summary.loc["attention heads", "null"])


def test_pair_summary(tables):
    gradients, null = tables
    pairs = gviz.pair_summary(gradients, null)
    assert list(pairs["stage"]) == [2, 3]
    model_all = gradients[(gradients["unit"] == "model") & (gradients["group"] == "all") & (gradients["stage"] == 2)]
    assert pairs.loc[0, "cosine_all"] == pytest.approx(model_all["cosine"].iloc[0])
    assert pairs.loc[0, "cosine_all"] < 0 < pairs.loc[0, "null_all"]


def test_first_order_chart_spec():
    segment = pd.DataFrame({"pair": ["p"] * 3, "stage": [2] * 3, "old_task": ["a"] * 3, "t": [0.01, 0.1, 1.0],
                            "observed": [0.01, 0.2, 5.0], "predicted": [0.01, 0.1, 1.0]})
    chart = gviz.first_order_chart(segment)
    rows = _spec_values(chart)
    observed = sorted(r["change"] for r in rows if r.get("curve", "").startswith("observed"))
    assert observed == [0.01, 0.2, 5.0]
    with pytest.raises(ValueError, match="predicted"):
        gviz.first_order_chart(segment.drop(columns="predicted"))


def test_missing_columns_are_named(tables):
    with pytest.raises(ValueError, match="cosine"):
        gviz.conflict_summary(tables[0].drop(columns="cosine"), tables[1])


# ---------------------------------------------------------------------------------------------------
# exercise checkers
# ---------------------------------------------------------------------------------------------------


def test_conflict_rate_checker_accepts_the_right_answer():
    right = lambda df: float((df[(df["unit"] == "head") & df["cosine"].notna()]["cosine"] < 0).mean())  # noqa: E731
    assert check_conflict_rate(right).startswith("Correct")
    want = float(conflict_rate(alignment_case(), unit="head")["conflict_rate"].iloc[0])
    assert want == pytest.approx(4 / 11)


@pytest.mark.parametrize("slip, message", [
    (lambda df: float((df[df["cosine"].notna()]["cosine"] < 0).mean()), "unit == 'head'"),
    (lambda df: float((df[df["unit"] == "head"]["cosine"] < 0).sum() / (df["unit"] == "head").sum()), "denominator"),
    (lambda df: float((df[(df["unit"] == "head") & df["cosine"].notna()]["cosine"] <= 0).mean()), "not <= 0"),
    (lambda df: float((df[(df["unit"] == "head") & df["cosine"].notna()]["cosine"] > 0).mean()), "AGREE"),
    (lambda df: float((df[(df["unit"] == "head")]["cosine"] < 0).sum()), "number of conflicting heads"),
    (lambda df: "many", "return one number \\(the conflict rate\\)"),
])
def test_conflict_rate_checker_names_the_slip(slip, message):
    with pytest.raises(ExerciseFeedback, match=message):
        check_conflict_rate(slip)


def _corrected(cosine, c):
    return float("nan") if c <= 0 else cosine / math.sqrt(2 * c / (1 + c))


def test_corrected_cosine_checker_accepts_the_right_answer():
    assert check_corrected_cosine(_corrected).startswith("Correct")


@pytest.mark.parametrize("slip, message", [
    (lambda x, c: x / math.sqrt(c) if c > 0 else float("nan"), "HALF-sample"),
    (lambda x, c: x / (2 * c / (1 + c)) if c > 0 else float("nan"), "not R"),
    (lambda x, c: x * math.sqrt(2 * c / (1 + c)) if c > 0 else float("nan"), "don't multiply"),
    (lambda x, c: x / math.sqrt(2 * c / (1 + c)) if c > 0 else x, "nan"),
    (lambda x, c: 0.5, "the corrected cosine is"),
])
def test_corrected_cosine_checker_names_the_slip(slip, message):
    with pytest.raises(ExerciseFeedback, match=message):
        check_corrected_cosine(slip)


def test_alignment_case_is_in_the_package_format():
    case = alignment_case()
    assert set(case["unit"]) <= {"head", "matrix", "layer", "model"}
    assert np.isnan(case["cosine"]).sum() == 2
    assert str(case["head"].dtype) == "Int64"
