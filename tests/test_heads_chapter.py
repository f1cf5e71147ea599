"""Chapter 05 (attention-head disruption): its exercise checkers and its charts.

Checkers must accept a right answer and reject the typical slips with the message that teaches the
fix; charts must carry the right rows, params and bindings in their Vega-Lite spec and render.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import vl_convert as vlc

from forgetting.exercises import ExerciseFeedback
from forgetting.exercises.heads import JS_CASES, check_js_divergence, check_severe_fraction
from forgetting.mechanisms.heads import severe_heads
from forgetting.viz import heads as vh

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------------------------
# exercise: JS divergence
# ----------------------------------------------------------------------------------------------


def _renorm(p, mask):
    p = np.where(mask, p, 0.0)
    return p / p.sum()


def _js(p, q, mask, log=np.log2, mask_it=True, renorm=True):
    if mask_it:
        p, q = np.where(mask, p, 0.0), np.where(mask, q, 0.0)
    if renorm:
        p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a):
        k = a > 0
        return np.sum(a[k] * log(a[k] / m[k]))

    return 0.5 * kl(p) + 0.5 * kl(q)


def test_js_checker_accepts_the_definition():
    assert "Correct" in check_js_divergence(_js)


def test_js_cases_have_weight_on_masked_keys():
    assert any(((p + q) * ~mask).sum() > 0 for p, q, mask in JS_CASES)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda p, q, m: _js(p, q, m, log=np.log), "nats"),
        (lambda p, q, m: _js(p, q, m, mask_it=False), "ignored the mask"),
        (lambda p, q, m: _js(p, q, m, renorm=False), "did not renormalise"),
        (lambda p, q, m: float(np.sum(_renorm(p, m)[_renorm(p, m) > 0] * np.log2(
            _renorm(p, m)[_renorm(p, m) > 0] / ((_renorm(p, m) + _renorm(q, m)) / 2)[_renorm(p, m) > 0]))), "KL"),
        (lambda p, q, m: np.array([0.1, 0.2]), "array"),
    ],
)
def test_js_checker_rejects_typical_slips(wrong, message):
    with pytest.raises(ExerciseFeedback, match=message):
        check_js_divergence(wrong)


# ----------------------------------------------------------------------------------------------
# exercise: threshold from the null
# ----------------------------------------------------------------------------------------------


def test_severe_fraction_checker_accepts_the_null_quantile():
    assert "Correct" in check_severe_fraction(lambda o, n, a=0.05: float(np.mean(o > np.quantile(n, 1 - a))))
    assert "Correct" in check_severe_fraction(
        lambda o, n, a=0.05: float(np.mean(o > np.quantile(n, 1 - a, method="higher"))))


def test_severe_fraction_checker_rejects_the_observed_quantile():
    with pytest.raises(ExerciseFeedback, match="OBSERVED"):
        check_severe_fraction(lambda o, n, a=0.05: float(np.mean(o > np.quantile(o, 1 - a))))


def test_severe_fraction_checker_rejects_the_wrong_level_and_counts():
    with pytest.raises(ExerciseFeedback, match="alpha quantile"):
        check_severe_fraction(lambda o, n, a=0.05: float(np.mean(o > np.quantile(n, a))))
    with pytest.raises(ExerciseFeedback, match="count"):
        check_severe_fraction(lambda o, n, a=0.05: float(np.sum(o > np.quantile(n, 1 - a))))


def test_severe_fraction_checker_asks_for_the_mean_of_a_boolean_array():
    with pytest.raises(ExerciseFeedback, match=r"the mean over the observed scores of \(score > threshold\)"):
        check_severe_fraction(lambda o, n, a=0.05: o > np.quantile(n, 1 - a))


# ----------------------------------------------------------------------------------------------
# tables and charts on a synthetic report (2 pairs, 2 layers x 4 heads, observed + 2 nulls)
# ----------------------------------------------------------------------------------------------

METRICS = ("js_divergence", "entropy_change", "output_similarity", "output_cka", "weight_change")


def _report() -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    rows = []
    for stage, new, old in ((2, "B", "A"), (3, "C", "B")):
        for null in ("", "continue", "reseed"):
            for layer in range(2):
                for head in range(4):
                    boost = 0.5 if (null == "" and layer == 1 and head == 0) else 0.0
                    noise = 0.0 if null == "" else 1.0  # observed heads sit at the quiet end of the null, but one
                    values = {"js_divergence": 0.1 + noise * 0.02 * rng.random() + boost,
                              "entropy_change": noise * rng.normal(0, 0.05),
                              "output_similarity": 0.9 - noise * 0.02 * rng.random() - boost, "output_cka": 0.95,
                              "weight_change": 0.1 + boost}
                    for metric, value in values.items():
                        rows.append({"layer": layer, "head": head, "kv_head": head // 2, "metric": metric,
                                     "value": value, "stage": stage, "new_task": new, "old_task": old, "null": null})
    heads = pd.DataFrame(rows)
    parts = []
    for (stage, new, old), g in heads.groupby(["stage", "new_task", "old_task"]):
        obs = g[g["null"] == ""].drop(columns=["stage", "new_task", "old_task", "null"])
        null = g[g["null"] != ""].drop(columns=["stage", "new_task", "old_task"])
        parts.append(severe_heads(obs, null, combine=("js_divergence", "entropy_change", "output_similarity"), by="all")
                     .assign(stage=stage, new_task=new, old_task=old))
    return heads, pd.concat(parts, ignore_index=True)


def _render(spec: dict) -> None:
    png = vlc.vegalite_to_png(spec, scale=1)
    assert png.startswith(PNG_MAGIC) and len(png) > 3000


def test_head_table_keeps_observed_rows_and_joins_severity():
    heads, severity = _report()
    table = vh.head_table(heads, severity)
    assert len(table) == 2 * 2 * 4
    hit = table[(table.stage == 2) & (table.layer == 1) & (table["head"] == 0)].iloc[0]
    assert hit.js_divergence > 0.5 and bool(hit.severe)
    assert table["severe"].sum() == 2  # the boosted head in each pair, nothing else
    assert hit.pair == "stage 2: A after B"


def test_head_disruption_heatmap_has_measure_and_pair_selects_and_outlines_severe_heads():
    heads, severity = _report()
    spec = vh.head_disruption_heatmap(vh.head_table(heads, severity)).to_dict()
    params = {p["name"]: p for p in spec["params"]}
    assert params["head_measure"]["bind"]["options"][0] == "combined_z"
    assert params["head_pair"]["bind"]["options"] == ["stage 2: A after B", "stage 3: B after C"]
    (data,) = [d for d in spec["datasets"].values()]
    assert len(data) == 2 * 8 * (len(METRICS) + 1)
    assert sum(r["severe"] for r in data) == 2 * (len(METRICS) + 1)
    _render(spec)


def test_bootstrap_over_heads_gives_fraction_and_interval_per_layer():
    _, severity = _report()
    comb = severity[severity.metric == "combined"]
    out = vh.bootstrap_over_heads(comb).set_index("layer")
    assert out.loc["all", "fraction"] == pytest.approx(2 / 16)
    assert out.loc["1", "fraction"] == pytest.approx(2 / 8) and out.loc["0", "fraction"] == 0
    assert out.loc["all", "ci_low"] <= out.loc["all", "fraction"] <= out.loc["all", "ci_high"]
    assert out.loc["all", "n_heads"] == 16


def test_severe_fraction_chart_renders_with_the_paper_band():
    _, severity = _report()
    fr = vh.bootstrap_over_heads(severity[severity.metric == "combined"]).assign(scope="all pairs")
    spec = vh.severe_fraction_chart(fr).to_dict()
    band = next(d for d in spec["datasets"].values() if "lo" in d[0])
    assert (band[0]["lo"], band[0]["hi"]) == vh.PAPER_RANGE
    _render(spec)


def test_threshold_curves_fall_from_one_to_zero_and_chart_has_pair_select():
    heads, _ = _report()
    curves = vh.threshold_curves(heads, "js_divergence", n=11)
    assert set(curves.source) == {"observed", "null: continue", "null: reseed"}
    first = curves[(curves.pair == "stage 2: A after B") & (curves.source == "observed")].sort_values("threshold")
    assert first.fraction.iloc[0] == 1.0 and first.fraction.iloc[-1] == 0.0
    assert first.fraction.is_monotonic_decreasing
    spec = vh.threshold_chart(curves).to_dict()
    assert {p["name"] for p in spec["params"]} == {"threshold_pair"}
    _render(spec)


def test_attention_pattern_chart_from_records_of_a_tiny_model():
    from forgetting.mechanisms.heads import head_activity
    from forgetting.models import load_model
    from forgetting.tasks import make_task
    from forgetting.evaluate import prepare_task

    model, tok = load_model("tiny")
    ex = prepare_task(make_task("recall_city", n_train=4, n_eval=4, seed=0), tok).eval
    before = head_activity(model, ex, ablation=None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = head_activity(model, ex, ablation=None)
    tokens = tok.convert_ids_to_tokens(ex.input_ids[0][ex.attention_mask[0].bool()].tolist())
    table = vh.attention_pattern_table(before, after, 0, tokens)
    L, H = before.attention.shape[:2]
    n_pairs = sum(q + 1 for q in before.position[before.example == 0].tolist())
    assert len(table) == L * H * 2 * n_pairs
    sums = table.groupby(["layer", "head", "snapshot", "query"])["weight"].sum()
    assert np.allclose(sums, 1.0, atol=1e-4)
    spec = vh.attention_pattern_chart(before, after, 0, tokens).to_dict()
    assert {p["name"] for p in spec["params"]} == {"pattern_layer", "pattern_head"}
    one = vh.attention_pattern_chart(before, after, 0, tokens, layer=0, head=1).to_dict()
    assert "params" not in one
    _render(one)


def test_live_kernel_is_false_outside_ipython():
    assert vh.live_kernel() is False
