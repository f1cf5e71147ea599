"""Training dynamics (mechanisms inside a stage) and the claims ledger's verdict rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forgetting import ledger
from forgetting.dynamics import dynamics_for, dynamics_spec, onset_steps
from forgetting.errors import SpecError
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


def _gradients(head_cos: float, mlp_cos: float) -> pd.DataFrame:
    rows = []
    for stage in (2, 3, 4):
        rows += [{"unit": "head", "group": "attention", "cosine": head_cos + 0.01 * h, "stage": stage,
                  "old_task": "a"} for h in range(8)]
        rows += [{"unit": "matrix", "group": "mlp", "cosine": mlp_cos, "stage": stage, "old_task": "a"}] * 3
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("head_cos", "mlp_cos", "verdict"), [
    (-0.5, 0.3, "holds"),            # every head conflicts, no MLP matrix does
    (0.3, -0.3, "does not hold"),    # no head conflicts, MLP does
    (-0.5, -0.3, "holds partly"),    # heads conflict, but no more than the MLP
])
def test_interference_verdicts_follow_the_rule(head_cos, mlp_cos, verdict):
    row = ledger.interference_row(_gradients(head_cos, mlp_cos))
    assert row.verdict == verdict
    assert row.value == (1.0 if head_cos < 0 else 0.0)


def _drift(observed: float, cont: float, reseed: float, jitter: float = 0.01) -> pd.DataFrame:
    rows = []
    for i, stage in enumerate((2, 3, 4)):
        for null, drop in (("", observed), ("continue", cont), ("reseed", reseed)):
            for layer in range(5):
                mid = layer in (1, 2, 3)  # between the embedding output (0) and the last (4)
                rows.append({"stage": stage, "old_task": "a", "layer": layer, "null": null,
                             "cka": 1 - (drop + jitter * i if mid else 0.0)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("observed", "cont", "reseed", "verdict"), [
    (0.40, 0.05, 0.10, "holds"),
    (0.80, 0.05, 0.10, "holds partly"),     # beyond both nulls, far outside the paper's range
    (0.40, 0.05, 0.60, "holds partly"),     # beyond continue only
    (0.03, 0.05, 0.10, "does not hold"),
])
def test_drift_verdicts_use_intermediate_layers_and_both_nulls(observed, cont, reseed, verdict):
    row = ledger.drift_row(_drift(observed, cont, reseed))
    assert row.verdict == verdict
    assert row.value == pytest.approx(observed + 0.01, abs=1e-9)  # mean over the three pairs' jitter


def test_flattening_and_heads_and_similarity_rules():
    curv = pd.DataFrame([
        {"stage": s, "old_task": "a", "snapshot": snap, "lambda_max": lam, "lambda_max_per_loss": lam / loss}
        for s in (2, 3) for snap, lam, loss in (("before", 100.0 * s, 0.2), ("after", 300.0 * s, 4.0))
    ])
    row = ledger.flattening_row(curv)
    assert row.verdict == "holds partly" and row.value == pytest.approx(np.log(3))
    severity = pd.DataFrame([
        {"stage": 2, "old_task": "a", "metric": "combined", "layer": layer, "head": h, "severe": layer == 0 and h < 3}
        for layer in range(4) for h in range(5)
    ])
    row = ledger.heads_row(severity)
    assert row.value == pytest.approx(3 / 20) and row.verdict == "holds"
    rng = np.random.default_rng(0)
    tasks = list("abcdef")
    pairs = pd.DataFrame([{"task_a": a, "task_b": b, "sim": rng.normal()} for a in tasks for b in tasks if a != b])
    pairs["forg"] = pairs["sim"] + 0.3 * rng.normal(size=len(pairs))
    row = ledger.similarity_row(pairs, similarity="sim", forgetting="forg")
    assert row.value > 0.8 and row.verdict in ("holds", "holds partly")
    pairs["forg"] = rng.normal(size=len(pairs))
    assert ledger.similarity_row(pairs, similarity="sim", forgetting="forg").verdict == "does not hold"


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
    kept = ledger.adjacent_pairs(df, ["a", "b", "c", "d"])
    assert list(zip(kept.stage, kept.old_task)) == [(2, "a"), (3, "b"), (4, "c")]
    assert ledger.adjacent_pairs(df, None) is df


def test_claims_for_stored_only_never_trains_an_unpublished_profile():
    with pytest.raises(LookupError, match="make results"):
        ledger.claims_for("quick", stored_only=True, progress=False)  # quick runs are never published


def test_stored_only_reads_or_refuses(step_run):
    from forgetting.analysis import analysis_for

    with pytest.raises(LookupError, match="no stored analysis"):
        analysis_for(step_run, n_examples=5, hessian_iters=3, nulls=False, stored_only=True)
    with pytest.raises(LookupError, match="no stored dynamics"):
        dynamics_for(step_run, points=(0.0, 1.0), n_examples=5, stored_only=True)
    made = analysis_for(step_run, n_examples=5, hessian_iters=3, nulls=False, progress=False)
    read = analysis_for(step_run, n_examples=5, hessian_iters=3, nulls=False, stored_only=True)
    pd.testing.assert_frame_equal(made["drift"], read["drift"])
