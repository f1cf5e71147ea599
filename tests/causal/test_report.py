"""forgetting.causal.report: the restoration studies of a run, computed once, stored beside it, read back."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from forgetting.causal import CAUSAL_COLUMNS, causal_for, causal_run, load_causal
from forgetting.causal import report as causal_report
from forgetting.runs import Run
from forgetting.runs.layout import TABLE_FILES, RunLayout
from tests.conftest import small_spec

ARGS = {"draws": 2, "spurious_n": (4, 8), "spurious_steps": 3}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from forgetting.spec import parse_spec
    from forgetting.train.sequence import run_experiment

    spec = small_spec(sequence=["recall_city", "recall_job", "update_city"], eval={"every": 0})
    return run_experiment(parse_spec(spec), tmp_path_factory.mktemp("c") / "run", progress=False)


def severity(stages=(2, 3), old=("recall_city", "recall_job")) -> pd.DataFrame:
    """A head_severity table: combined z = 10 * layer + head, so the top heads are in the last layer."""
    rows = [{"layer": layer, "head": head, "kv_head": head // 2, "metric": "combined", "z": float(10 * layer + head),
             "stage": s, "new_task": "x", "old_task": o} for s, o in zip(stages, old) for layer in range(4) for head in range(8)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def table(run_dir):
    causal_run(run_dir, head_severity=severity(), progress=False, **ARGS)
    return load_causal(run_dir)


def test_the_table_has_every_adjacent_pair_and_its_columns(run_dir, table):
    assert list(table.columns) == list(CAUSAL_COLUMNS)
    assert set(zip(table.stage, table.new_task, table.old_task)) == {(2, "recall_job", "recall_city"),
                                                                    (3, "update_city", "recall_job")}
    per_pair = table.groupby("stage").size()
    # 4 layers, 5 groups (all + 4), 7 matrices, union, interaction, 2 k x (1 + 2 draws), 2 x 2 spurious
    assert (per_pair == 4 + 5 + 7 + 2 + 2 * 3 + 4).all()
    assert table.set_index(["stage", "study", "part"]).loc[(2, "group", "all"), "recovery"] == pytest.approx(1, abs=1e-6)


def test_losses_are_the_runs_own_evaluations(run_dir, table):
    evals = Run.open(run_dir).evals
    loss = evals[evals.end_of_stage & (evals.metric == "loss")].set_index(["stage", "task"])["value"]
    for (stage, old), rows in table.groupby(["stage", "old_task"]):
        assert rows.loss_before.iloc[0] == pytest.approx(loss[(stage - 1, old)], rel=1e-5)
        assert rows.loss_after.iloc[0] == pytest.approx(loss[(stage, old)], rel=1e-5)
    ok = table.dropna(subset=["loss_restored"])
    assert np.allclose(ok.recovery, (ok.loss_after - ok.loss_restored) / (ok.loss_after - ok.loss_before))


def test_severe_heads_follow_the_ranking_and_random_heads_its_layers(table):
    severe = table[table.study == "heads_severe"].set_index(["stage", "part"])["heads"]
    assert severe[(2, "k=5")] == "L3H3 L3H4 L3H5 L3H6 L3H7"  # the 5 highest z
    assert severe[(2, "k=8")] == " ".join(f"L3H{h}" for h in range(8))
    random = table[(table.study == "heads_random") & (table.part == "k=5")]
    assert list(random.draw) == [0, 1, 0, 1] and all(h.count("L3H") == 5 for h in random.heads)
    assert (table[table.study != "heads_random"].draw == -1).all()


def test_the_spurious_probe_and_its_control(run_dir, table):
    probe = table[table.study.isin(["spurious", "spurious_control"])]
    assert set(zip(probe.study, probe.part)) == {(s, f"n={n}") for s in ("spurious", "spurious_control") for n in (4, 8)}
    trainable = sum(p.numel() for p in Run.open(run_dir).model_at(2).parameters() if p.requires_grad)
    assert (probe.n_params == trainable).all()
    # a re-trained model is not the model it started from: its loss moved
    assert (probe.loss_restored != probe.loss_after).all()


def test_causal_for_computes_once_then_reads_back(run_dir, monkeypatch, tmp_path):
    fresh = tmp_path / "run"
    shutil.copytree(run_dir, fresh)
    for name in ("causal", "causal_manifest"):
        getattr(RunLayout(fresh), name).unlink(missing_ok=True)
    with pytest.raises(LookupError):
        causal_for(fresh, stored_only=True, progress=False, **ARGS)
    calls = []

    def analysis(folder, **kwargs):
        calls.append(folder)
        return {"head_severity": severity()}

    monkeypatch.setattr(causal_report, "analysis_for", analysis)
    first = causal_for(fresh, progress=False, **ARGS)
    assert calls == [fresh]
    again = causal_for(fresh, stored_only=True, progress=False, **ARGS)
    pd.testing.assert_frame_equal(first, again)
    with pytest.raises(LookupError):  # other arguments: not the stored table
        causal_for(fresh, stored_only=True, progress=False, **{**ARGS, "draws": 3})
    assert {RunLayout(fresh).causal.name, RunLayout(fresh).causal_manifest.name} <= set(TABLE_FILES)  # published
