"""Charts: Vega-Lite specs (params, bindings, encodings, embedded rows) and that they render.

The data is a synthetic but realistic evaluation table (tests/viz_fixtures.py): four tasks trained
in sequence, evaluations every 20 steps, the fourth task conflicting with the first.
"""

from __future__ import annotations

import json
import warnings

import altair as alt
import numpy as np
import pandas as pd
import pytest
import vl_convert as vlc

from forgetting.viz import charts, offline
from forgetting.viz import forgetting_curves, layer_head_heatmap, r_matrix_heatmap
from tests.viz_fixtures import SEQUENCE, synthetic_evals

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def evals() -> pd.DataFrame:
    return synthetic_evals()


def _data(spec: dict) -> list[dict]:
    (values,) = [v for v in spec["datasets"].values() if v and "metric" in v[0]] or [[]]
    return values


def _params(spec: dict) -> dict:
    return {p["name"]: p for p in spec.get("params", [])}


def _layer_marks(spec: dict) -> list[str]:
    return [(layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]) for layer in spec["layer"]]


def _render(spec: dict, path) -> bytes:
    png = vlc.vegalite_to_png(spec, scale=1)
    path.write_bytes(png)
    assert png.startswith(PNG_MAGIC) and len(png) > 5000
    return png


# ----------------------------------------------------------------------------------------------
# R heatmap
# ----------------------------------------------------------------------------------------------


def test_r_matrix_table_matches_the_performance_matrix(evals):
    from forgetting.evaluate import performance_matrix

    table = charts.r_matrix_table(evals)
    assert len(table) == (len(SEQUENCE) + 1) * len(SEQUENCE) * 4
    R = performance_matrix(evals, "exact_match")
    em = table[table["metric"] == "exact_match"].pivot(index="stage", columns="task_index", values="value")
    np.testing.assert_allclose(em.to_numpy(), R.to_numpy())
    rows = table.drop_duplicates("stage").sort_values("stage")["row"].tolist()
    assert rows == ["base (before fine-tuning)"] + [f"after {t}" for t in SEQUENCE]
    assert "heldout_corpus" not in set(table["task"])  # not a column of R


def test_r_heatmap_spec(evals, tmp_path):
    chart = r_matrix_heatmap(evals)
    assert isinstance(chart, alt.LayerChart)
    spec = chart.to_dict()
    params = _params(spec)
    assert params["metric"]["value"] == "exact_match"
    bind = params["metric"]["bind"]
    assert bind["input"] == "select"
    assert bind["options"] == ["exact_match", "answer_match", "token_accuracy", "loss"]
    assert len(_data(spec)) == 5 * 4 * 4 < 5000  # (T + 1) rows x T columns x 4 metrics, all embedded
    assert all({"filter": "datum.metric == metric"} in layer["transform"] for layer in spec["layer"])
    assert _layer_marks(spec) == ["rect", "text"]
    rect, text = spec["layer"]
    enc = {**spec.get("encoding", {}), **rect.get("encoding", {})}
    assert enc["x"]["field"] == "task" and enc["x"]["sort"] == list(SEQUENCE)
    assert enc["y"]["field"] == "row" and enc["y"]["sort"][0] == "base (before fine-tuning)"
    color = rect["encoding"]["color"]
    assert color["field"] == "value"
    assert color["scale"]["reverse"] == {"expr": 'metric == "loss"'}  # lower loss is better: reversed scale
    assert "metric ==" in color["scale"]["domain"]["expr"]
    assert text["encoding"]["text"]["field"] == "value" and text["encoding"]["text"]["format"] == ".2f"
    title = spec["title"]
    assert "Row i" in " ".join(title["subtitle"]) and "Column j" in " ".join(title["subtitle"])
    _render(spec, tmp_path / "r_heatmap.png")


def test_r_heatmap_default_metric_and_bad_input(evals):
    spec = r_matrix_heatmap(evals, metric="loss").to_dict()
    assert _params(spec)["metric"]["value"] == "loss"
    only_loss = evals[evals["metric"] == "loss"]
    assert _params(r_matrix_heatmap(only_loss).to_dict())["metric"]["value"] == "loss"  # default falls back
    with pytest.raises(ValueError, match="metric: 'bleu' is not in the data; allowed: exact_match"):
        r_matrix_heatmap(evals, metric="bleu")
    with pytest.raises(ValueError, match="evals: missing column.*end_of_stage"):
        r_matrix_heatmap(evals.drop(columns="end_of_stage"))
    with pytest.raises(ValueError, match="no end-of-stage rows"):
        r_matrix_heatmap(evals[~evals["end_of_stage"]])


def test_r_heatmap_averages_seeds_and_names_repeated_tasks():
    evals = synthetic_evals(seeds=(0, 1, 2))
    table = charts.r_matrix_table(evals)
    assert len(table) == 5 * 4 * 4 and set(table["n"]) == {3}
    one = evals[(evals["end_of_stage"]) & (evals["metric"] == "loss") & (evals["task"] == "recall_city") & (evals["stage"] == 2)]
    got = table[(table["metric"] == "loss") & (table["task"] == "recall_city") & (table["stage"] == 2)]["value"].item()
    assert got == pytest.approx(one["value"].mean())
    # a sequence that trains the same task twice gets distinct row labels
    again = evals.copy()
    again.loc[again["stage"] == 3, "stage_task"] = "recall_city"
    rows = charts.r_matrix_table(again).drop_duplicates("stage").sort_values("stage")["row"].tolist()
    assert rows[1] == "after recall_city (stage 1)" and rows[3] == "after recall_city (stage 3)"


# ----------------------------------------------------------------------------------------------
# forgetting curves
# ----------------------------------------------------------------------------------------------


def test_stage_boundaries(evals):
    bounds = charts.stage_boundaries(evals)
    assert bounds["stage_task"].tolist() == list(SEQUENCE)
    assert bounds["end"].tolist() == [120, 240, 360, 480]
    assert bounds["start"].tolist() == [0, 120, 240, 360]


def test_forgetting_curves_spec(evals, tmp_path):
    chart = forgetting_curves(evals)
    assert isinstance(chart, alt.LayerChart)
    spec = chart.to_dict()
    params = _params(spec)
    assert params["metric"]["value"] == "exact_match" and params["metric"]["bind"]["input"] == "select"
    assert _layer_marks(spec) == ["line", "rule", "text"]  # one seed: no band
    line, rule, label = spec["layer"]
    assert line["encoding"]["x"]["field"] == "step" and line["encoding"]["y"]["field"] == "value"
    assert line["encoding"]["color"]["field"] == "task"
    assert line["encoding"]["color"]["sort"][: len(SEQUENCE)] == list(SEQUENCE)
    assert {t["field"] for t in line["encoding"]["tooltip"]} >= {"task", "step", "stage_task", "value"}
    # one row per (step, task, metric): 25 evaluation points x (4 tasks x 4 metrics + held-out loss)
    curves = _data(spec)
    assert len(curves) == 25 * 17 < 5000
    assert len({(r["step"], r["task"], r["metric"]) for r in curves}) == len(curves)
    # rules at the end of each stage, labels naming the task trained in it
    datasets = spec["datasets"]
    (bounds,) = [v for v in datasets.values() if v and "end" in v[0]]
    assert [b["end"] for b in bounds] == [120, 240, 360, 480]
    assert rule["encoding"]["x"]["field"] == "end"
    assert label["encoding"]["text"]["field"] == "stage_task" and label["encoding"]["x"]["field"] == "mid"
    _render(spec, tmp_path / "curves.png")


def test_forgetting_curves_band_with_seeds_and_thinning(tmp_path):
    evals = synthetic_evals(steps_per_task=600, every=2, seeds=(0, 1))
    assert len(evals) > 20000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # thinning the curves is silent: end-of-stage steps are kept
        spec = forgetting_curves(evals).to_dict()
    assert _layer_marks(spec)[0] == "area"  # mean +- 1.96 SE band over seeds
    curves = _data(spec)
    assert len(curves) < 5000
    steps = {r["step"] for r in curves}
    assert {600, 1200, 1800, 2400} <= steps  # stage ends survive thinning
    _render(spec, tmp_path / "curves_seeds.png")


# ----------------------------------------------------------------------------------------------
# layer x head
# ----------------------------------------------------------------------------------------------


def _heads(steps=(0, 20, 40, 60)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for step in steps:
        for layer in range(4):
            for head in range(8):
                rows.append({"layer": layer, "head": head, "step": step,
                             "disruption": float(rng.random() * (1 - layer / 5) * (step + 1) / (max(steps) + 1)),
                             "alignment": float(rng.normal(0, 0.3))})
    return pd.DataFrame(rows)


def test_layer_head_heatmap_select_and_slider(tmp_path):
    df = _heads()
    spec = layer_head_heatmap(df, ["disruption", "alignment"], signed=["alignment"], title="Heads").to_dict()
    params = _params(spec)
    assert params["metric"]["bind"]["options"] == ["disruption", "alignment"]
    slider = params["at_step"]["bind"]
    assert slider["input"] == "range" and (slider["min"], slider["max"], slider["step"]) == (0, 60, 20)
    assert params["at_step"]["value"] == 0 and slider["name"] == "step "  # opens at the first step
    assert _params(layer_head_heatmap(df, ["disruption"], initial_step=40).to_dict())["at_step"]["value"] == 40
    with pytest.raises(ValueError, match="initial_step: 30 is not one of the step values shown"):
        layer_head_heatmap(df, ["disruption"], initial_step=30)
    rows = _data(spec)
    assert len(rows) == 4 * 8 * 4 * 2  # layers x heads x steps x measurements
    rect = spec["layer"][0]
    enc = {**spec.get("encoding", {}), **rect.get("encoding", {})}
    assert enc["x"]["field"] == "head" and enc["y"]["field"] == "layer"
    assert enc["y"]["sort"] == [3, 2, 1, 0]  # layer 0 at the bottom
    scale = rect["encoding"]["color"]["scale"]
    assert "redblue" in scale["scheme"]["expr"] and "viridis" in scale["scheme"]["expr"]
    # a signed measurement gets a symmetric domain so 0 sits in the middle of the diverging scale
    bound = max(abs(df["alignment"].min()), abs(df["alignment"].max()))
    assert bound < 1 and json.dumps([-1.0, 1.0]) in scale["domain"]["expr"]  # rounded up to a round number
    assert scale["clamp"] is True
    _render(spec, tmp_path / "heads.png")


def test_layer_head_heatmap_irregular_steps_and_no_steps(tmp_path):
    spec = layer_head_heatmap(_heads(steps=(0, 10, 50, 200)), ["disruption"]).to_dict()
    slider = _params(spec)["at_step"]["bind"]
    assert (slider["min"], slider["max"], slider["step"]) == (0, 3, 1)  # snapshots, captioned with the step
    opened = _params(layer_head_heatmap(_heads(steps=(0, 10, 50, 200)), ["disruption"], initial_step=50).to_dict())
    assert opened["at_step"]["value"] == 2  # the snapshot index of step 50
    assert any("caption" in json.dumps(layer) for layer in spec["layer"])
    _render(spec, tmp_path / "heads_irregular.png")
    static = layer_head_heatmap(_heads(steps=(0,)).drop(columns="step"), ["disruption", "alignment"]).to_dict()
    assert "at_step" not in _params(static) and len(_data(static)) == 4 * 8 * 2
    with pytest.raises(ValueError, match="df: missing column.*nope"):
        layer_head_heatmap(_heads(), ["nope"])
    with pytest.raises(ValueError, match="signed: alignment not in value_columns"):
        layer_head_heatmap(_heads(), ["disruption"], signed=["alignment"])


def test_layer_head_heatmap_thins_steps_under_the_row_limit():
    df = _heads(steps=tuple(range(0, 400, 4)))  # 100 steps x 32 heads x 2 = 6400 rows
    with pytest.warns(UserWarning, match="showing .* of 100 steps"):
        spec = layer_head_heatmap(df, ["disruption", "alignment"]).to_dict()
    assert len(_data(spec)) <= 5000


# ----------------------------------------------------------------------------------------------
# offline renderer
# ----------------------------------------------------------------------------------------------


def test_offline_renderer_calls_the_global_vega_embed(evals):
    offline.enable()
    try:
        assert alt.renderers.active == "forgetting"
        bundle = r_matrix_heatmap(evals)._repr_mimebundle_()
        html = bundle["text/html"]
        assert set(bundle) == {"text/html"}
        assert 'class="forgetting-vega"' in html
        assert 'typeof window.vegaEmbed === "function"' in html
        assert '"renderer":"svg"' in html and '"editor":false' in html
        # the CDN appears only in the fallback, pinned to the versions this Altair emits
        from altair.vegalite.v6 import display

        assert f"vega-embed@{display.VEGAEMBED_VERSION}" in html
        assert "</script>" not in html.split("<script", 1)[1].rsplit("</script>", 1)[0]  # spec cannot end the script
    finally:
        alt.renderers.enable("default")


def test_charts_for_the_static_book_name_no_cdn(evals, monkeypatch):
    """In the kernels the book build runs (KERNEL_ENV), a chart's script has no CDN fallback: the
    static book carries the bundle, and a page that lost it says so instead of reaching the network."""
    from forgetting import book

    assert book.KERNEL_ENV[offline.STATIC_ENV] == "1"
    monkeypatch.setenv(offline.STATIC_ENV, "1")
    offline.enable()
    try:
        html = r_matrix_heatmap(evals)._repr_mimebundle_()["text/html"]
        assert 'typeof window.vegaEmbed === "function"' in html
        assert "var urls = null;" in html and "forgetting-vega.js did not load" in html
        for cdn in ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "googleapis.com"):
            assert cdn not in html, cdn
    finally:
        alt.renderers.enable("default")


def test_wrapped_bundle_keeps_its_names_out_of_the_global_scope(tmp_path):
    text = offline.wrapped_bundle()
    body = text.split("*/\n", 1)[1]
    assert body.startswith("(function () {\n") and body.rstrip().endswith("}).call(window);")
    assert "window.vegaEmbed=" in body.replace(" ", "")
    path = offline.write_bundle(tmp_path)
    assert path.name == "forgetting-vega.js" and path.read_text() == text
    mtime = path.stat().st_mtime_ns
    offline.write_bundle(tmp_path)
    assert path.stat().st_mtime_ns == mtime  # unchanged content is not rewritten


def test_a_signed_colour_scale_is_not_set_by_one_outlier():
    from forgetting.viz.charts import SIGNED_QUANTILE, _value_domains

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.uniform(-1.3, 1.3, 200), [10.0]])  # z-scores of about 1 and one of 10
    df = pd.DataFrame({"metric": "z", "value": values})
    low, high = _value_domains(df, ["z"], signed=["z"])["z"]
    assert low == -high and np.quantile(np.abs(values), SIGNED_QUANTILE) <= high < 10
    assert (np.abs(values) > high).sum() <= 0.02 * len(values) + 1  # the few beyond it are clamped
