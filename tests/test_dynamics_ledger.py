"""Training dynamics (mechanisms inside a stage), the ledger's pair filter, and the ledger refusing to train."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forgetting import ledger
from forgetting.dynamics import dynamics_for, dynamics_spec, onset_steps
from forgetting.errors import SpecError
from forgetting.ledger.effects import adjacent_pairs
from tests.conftest import small_spec


@pytest.fixture(scope="module")
def step_run(tmp_path_factory):
    from forgetting.spec import parse_spec
    from forgetting.train.sequence import run_experiment

    spec = small_spec(sequence=["recall_city", "recall_job"], snapshots={"every": 2}, eval={"every": 0})
    return run_experiment(parse_spec(spec), tmp_path_factory.mktemp("d") / "run", progress=False)


def test_dynamics_start_at_zero_change_and_are_cached(step_run):
    both = dynamics_for(step_run, points=(0.0, 0.5, 1.0), n_examples=8, hessian_iters=4, progress=False)
    df = both[both.path == "forgetting"]
    assert sorted(df["step"].unique()) == [0, 2, 6]  # the snapshots nearest to 0, 3 and 6 steps
    wide = df[df.layer == -1].pivot_table(index="step", columns="measure", values="value")
    assert wide.loc[0, "forgetting"] == 0 and wide.loc[0, "head_js"] == pytest.approx(0, abs=1e-9)
    assert wide.loc[0, "drift"] == pytest.approx(0, abs=1e-6)  # a snapshot against itself: CKA 1
    assert (wide["forgetting"] == wide["old_loss"] - wide.loc[0, "old_loss"]).all()
    assert wide["grad_cosine"].between(-1, 1).all() and (wide["lambda_max"] > 0).all()
    assert set(df["old_task"]) == {"recall_city"} and set(df["new_task"]) == {"recall_job"}
    mtime = (step_run / "dynamics.parquet").stat().st_mtime_ns
    again = dynamics_for(step_run, points=(0.0, 0.5, 1.0), n_examples=8, hessian_iters=4, progress=False)
    assert (step_run / "dynamics.parquet").stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(both, again)
    # the learning path: A's own training (stage 1), from the base model to the end of A
    learning = both[both.path == "learning"].pivot_table(index="step", columns="measure", values="value")
    assert list(learning.columns) == ["lambda_max", "lambda_min", "old_loss"] and learning.index.min() == 0
    assert learning["old_loss"].iloc[-1] == pytest.approx(wide.loc[0, "old_loss"])  # the same snapshot
    assert learning["old_loss"].iloc[0] > learning["old_loss"].iloc[-1]  # A is learned along it
    assert (learning["lambda_min"] <= learning["lambda_max"]).all() and (wide["lambda_min"] <= wide["lambda_max"]).all()
    assert onset_steps(both).equals(onset_steps(df))  # onsets read the forgetting path only


def test_dynamics_spec_snapshots_forty_times_per_stage():
    spec = dynamics_spec("quick")
    assert spec.task_list() == ["recall_city", "recall_job"]
    assert spec.snapshots.every == spec.steps_per_task // 40 and not spec.reference.enabled


def test_onset_is_the_first_step_at_half_the_largest_change():
    steps = [0, 10, 20, 30, 40]
    df = pd.DataFrame({
        "step": steps * 2, "layer": -1,
        "measure": ["forgetting"] * 5 + ["drift"] * 5,
        "value": [0, 1, 3, 4, 4] + [0, 0.6, 0.8, 1.0, 1.0],
    })
    onsets = onset_steps(df).set_index("measure")
    assert onsets.loc["forgetting", "t50"] == 20 and onsets.loc["drift", "t50"] == 10
    assert onsets.loc["forgetting", "total_change"] == 4
    with pytest.raises(SpecError, match="fraction"):
        onset_steps(df, fraction=0)


def test_trajectory_fractions_and_chart_spec():
    from forgetting.viz.dynamics import mechanism_trajectories, trajectory_table

    df = pd.DataFrame({
        "step": [0, 10, 20] * 3, "layer": -1,
        "measure": ["forgetting"] * 3 + ["drift"] * 3 + ["grad_cosine"] * 3,
        "value": [0, 2, 4] + [0.0, 0.3, 0.2] + [-0.2, 0.0, -0.2],
    })
    table = trajectory_table(df).set_index(["measure", "step"])["fraction"]
    assert table[("forgetting", 10)] == 0.5 and table[("drift", 20)] == pytest.approx(2 / 3)
    assert table[("grad_cosine", 20)] == 0.0 and table[("grad_cosine", 10)] == 1.0
    spec = mechanism_trajectories(df, title="t").to_dict()
    assert spec["params"][0]["bind"]["options"] == ["drift", "grad_cosine"]
    with pytest.raises(ValueError, match="no mechanism"):
        mechanism_trajectories(df[df.measure == "forgetting"], title="t")


def test_dynamics_checkers_accept_the_answer_and_name_the_slips():
    from forgetting.exercises import ExerciseFeedback
    from forgetting.exercises.dynamics import check_t50, check_verdict

    def right(steps, values):
        moved = np.abs(values - values[0])
        return steps[np.argmax(moved >= 0.5 * moved.max())]

    assert check_t50(right).startswith("Correct")
    with pytest.raises(ExerciseFeedback, match="position in the array"):
        check_t50(lambda s, v: np.argmax(np.abs(v - v[0]) >= 0.5 * np.abs(v - v[0]).max()))
    with pytest.raises(ExerciseFeedback, match="FINAL change"):
        check_t50(lambda s, v: s[np.argmax(np.abs(v - v[0]) >= 0.5 * abs(v[-1] - v[0]))])

    def overlap(low, high, paper):
        return "smaller" if high < paper[0] else "larger" if low > paper[1] else "consistent"

    assert check_verdict(overlap).startswith("Correct")
    with pytest.raises(ExerciseFeedback, match="contains the whole"):
        check_verdict(lambda lo, hi, p: "consistent" if p[0] <= lo <= p[1] or p[0] <= hi <= p[1]
                      else "smaller" if hi < p[0] else "larger")


def test_adjacent_pairs_keep_the_task_trained_just_before_each_stage():
    df = pd.DataFrame({"stage": [2, 3, 3, 4, 4, 4], "old_task": ["a", "a", "b", "a", "b", "c"]})
    kept = adjacent_pairs(df, ["a", "b", "c", "d"])
    assert list(zip(kept.stage, kept.old_task)) == [(2, "a"), (3, "b"), (4, "c")]


def test_claims_for_stored_only_never_trains_an_unpublished_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETTING_CACHE", str(tmp_path))  # an empty cache: nothing of the quick profile is stored
    monkeypatch.setenv("FORGETTING_RETRAIN", "1")  # the published quick tables are not to be read
    with pytest.raises(LookupError, match="make results"):
        ledger.claims_for("quick", stored_only=True, progress=False)


def test_stored_only_reads_or_refuses(step_run):
    from forgetting.analysis import analysis_for

    with pytest.raises(LookupError, match="no stored analysis"):
        analysis_for(step_run, n_examples=5, hessian_iters=3, nulls=False, stored_only=True)
    with pytest.raises(LookupError, match="no stored dynamics"):
        dynamics_for(step_run, points=(0.0, 1.0), n_examples=5, stored_only=True)
    made = analysis_for(step_run, n_examples=5, hessian_iters=3, nulls=False, progress=False)
    read = analysis_for(step_run, n_examples=5, hessian_iters=3, nulls=False, stored_only=True)
    pd.testing.assert_frame_equal(made["drift"], read["drift"])
