"""The mechanism report of a finished run (forgetting analyze)."""

from __future__ import annotations

import json

import pytest

from forgetting.analysis import analysis_for, analyze_run, load_analysis
from forgetting.cli import main
from tests.conftest import small_spec


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from forgetting.spec import parse_spec
    from forgetting.train.sequence import run_experiment

    spec = small_spec(sequence=["recall_city", "recall_job", "update_city"], eval={"every": 0})
    return run_experiment(parse_spec(spec), tmp_path_factory.mktemp("a") / "run", progress=False)


def test_report_covers_every_stage_and_earlier_task(run_dir):
    out = analyze_run(run_dir, n_examples=16, hessian_iters=8, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"] == [2, 3] and "git_commit" in manifest
    tables = load_analysis(run_dir)
    pairs = {(2, "recall_city"), (3, "recall_city"), (3, "recall_job")}
    assert tables["head_severity"].empty  # severity needs nulls
    for name, table in tables.items():
        if name != "head_severity":
            assert set(zip(table.stage, table.old_task)) == pairs, name
    drift = tables["drift"]
    # embedding output + 4 blocks, for readout (mean, last) x (biased, debiased)
    assert len(drift) == 3 * 5 * 4 and (drift.null == "").all()
    assert (drift.groupby(["readout", "debiased"]).size() == 3 * 5).all()
    assert not drift.cka.isna().any()
    assert drift[~drift.debiased].cka.between(0, 1 + 1e-9).all() and drift.cka.between(-1 - 1e-9, 1 + 1e-9).all()
    # the last prompt token is the same token in every example: the embedding layer is constant there
    last0 = drift[(drift.readout == "last") & (drift.layer == 0)]
    assert (last0.cka == 1).all() and last0.note.str.contains("both inputs are constant").all()
    assert (drift[drift.layer > 0].note == "").all()
    grads = tables["gradients"]
    heads_per_pair = 4 * (8 + 4 + 4 + 8)  # q and o by query head, k and v by key/value head
    assert (grads.unit == "head").sum() == 3 * heads_per_pair
    assert grads.cosine.between(-1 - 1e-9, 1 + 1e-9).all()
    null = tables["gradient_null"]
    assert (null.unit == "head").sum() == 3 * heads_per_pair  # the same units, two halves of the old task
    curvature = tables["curvature"]
    assert list(curvature.snapshot) == ["before", "after"] * 3
    assert (curvature.lambda_max > 0).all() and (curvature.lambda_min <= curvature.lambda_max).all()
    assert (curvature.hessian_matvecs <= 8).all()
    assert set(tables["heads"].metric) >= {"js_divergence", "entropy_change", "output_similarity", "weight_change",
                                           "ablation_effect_change"}
    assert (grads.n_per_gradient == 16).all() and (null.n_per_gradient == 8).all()


def test_cli_analyze_and_bad_input(run_dir, tmp_path, capsys):
    assert main(["analyze", str(run_dir), "--stages", "2", "--examples", "8", "--quiet"]) == 0
    assert "CKA (last prompt token) before vs after, by layer" in capsys.readouterr().out
    assert main(["analyze", str(run_dir), "--stages", "1"]) == 2
    assert "--stages: [1] not analysable; allowed: 2..3" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path)]) == 2
    assert "DIR: " in capsys.readouterr().err


def test_drift_nulls_are_measured_and_cached(run_dir):
    analyze_run(run_dir, stages=[2], n_examples=16, hessian_iters=4, nulls=True, progress=False)
    drift = load_analysis(run_dir)["drift"]
    assert set(drift.null) == {"", "continue", "reseed"}
    # 5 layers x 2 readouts x 2 estimators, once for the observed pair, for each of 2 null seeds per kind
    assert drift.groupby("null").size().to_dict() == {"": 20, "continue": 40, "reseed": 40}
    assert set(drift[drift.null != ""].null_seed) == {1.0, 2.0}  # the run's seed (0) + 1, + 2
    assert (run_dir / "nulls").is_dir()
    # the embedding layer of the continue null: the same tokens, weights barely moved
    mean_biased = drift[(drift.readout == "mean") & ~drift.debiased]
    assert mean_biased[(mean_biased.null == "continue") & (mean_biased.layer == 0)].cka.min() > 0.9

    heads = load_analysis(run_dir)["heads"]
    assert set(heads.null) == {"", "continue", "reseed"}
    severity = load_analysis(run_dir)["head_severity"]
    combined = severity[severity.metric == "combined"]
    assert len(combined) == 4 * 8  # every query head of the one pair, judged once
    assert ((combined.z > combined.threshold) == combined.severe).all()
    assert combined.p_value.between(0, 1).all()
    assert (combined.combined_of == "js_divergence+entropy_change+output_similarity+ablation_effect_change").all()
    # the chance rate: each of the 4 null snapshots judged against the other 3
    assert (severity.n_null_snapshots == 4).all() and severity.null_rate.between(0, 1).all()
    assert (severity.null_rate_max >= severity.null_rate).all() and severity.null_rate_layer.between(0, 1).all()
    assert combined.null_rate.nunique() == 1


def test_analysis_for_reuses_matching_tables_and_recomputes_otherwise(run_dir):
    first = analysis_for(run_dir, stages=[2], n_examples=8, hessian_iters=4, nulls=False, progress=False)
    stamp = (run_dir / "analysis" / "manifest.json").stat().st_mtime_ns
    again = analysis_for(run_dir, stages=[2], n_examples=8, hessian_iters=4, nulls=False, progress=False)
    assert (run_dir / "analysis" / "manifest.json").stat().st_mtime_ns == stamp  # read back, not recomputed
    for name in first:
        assert first[name].equals(again[name]), name
    other = analysis_for(run_dir, stages=[2], n_examples=12, hessian_iters=4, nulls=False, progress=False)
    assert json.loads((run_dir / "analysis" / "manifest.json").read_text())["n_examples"] == 12
    assert len(other["gradients"]) == len(first["gradients"])


@pytest.mark.parametrize("variant", [{"model": "tiny-moe"}, {"finetune": {"method": "lora", "lora": {"r": 4, "alpha": 8}}}],
                         ids=["moe", "lora"])
def test_the_report_runs_unchanged_on_moe_and_lora_runs(variant, tmp_path):
    from forgetting.spec import parse_spec
    from forgetting.train.sequence import run_experiment

    spec = parse_spec(small_spec(sequence=["recall_city", "recall_job"], eval={"every": 0}, **variant))
    run = run_experiment(spec, tmp_path / "run", progress=False)
    tables = analysis_for(run, n_examples=8, hessian_iters=4, nulls=True, progress=False)
    assert set(tables["drift"].null) == {"", "continue", "reseed"}
    assert tables["drift"].cka.between(-1 - 1e-9, 1 + 1e-9).all() and not tables["drift"].cka.isna().any()
    assert (tables["curvature"].lambda_max > 0).all()
    grads = tables["gradients"]
    assert grads.cosine.dropna().between(-1 - 1e-9, 1 + 1e-9).all() and (grads.unit == "head").any()
    assert tables["head_severity"].severe.dtype == bool and len(tables["head_severity"]) > 0
    if "model" in variant:  # each expert of each layer is a unit of its own: 4 layers x 4 experts x 2 matrices
        assert (grads.unit == "expert").sum() == 4 * 4 * 2
