"""forgetting.sweep: the pairwise sweep on a tiny spec (one row per ordered pair, cached, resumed), its
alignment and answers, and the statistics of similarity against forgetting on synthetic pairs."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from forgetting.errors import SpecError
from forgetting.sweep import (
    SWEEP_COLUMNS,
    leave_one_task_out,
    pair_table,
    pairwise_sweep,
    quadratic_peak,
    similarity_correlations,
    sweep_alignment,
    sweep_answers,
    sweep_spec,
    task_effects,
)
from tests.conftest import small_spec


@pytest.mark.parametrize("kwargs, field", [
    ({"task_names": ["recall_city", "nope"]}, "tasks"),
    ({"task_names": ["recall_city"]}, "tasks"),
    ({"task_names": ["recall_city", "sort"], "profile": "huge"}, "profile"),
    ({"task_names": ["recall_city", "sort"], "steps": 0}, "steps"),
])
def test_pairwise_sweep_bad_input(kwargs, field, monkeypatch):
    import forgetting.sweep.pairs

    monkeypatch.setattr(forgetting.sweep.pairs, "run_cached", lambda *a, **k: pytest.fail("work before validation"))
    with pytest.raises(SpecError) as info:
        pairwise_sweep(progress=False, **kwargs)
    assert info.value.field == field


# --- the sweep -----------------------------------------------------------------------------------------


def test_sweep_spec_is_derived_from_the_profile():
    spec = sweep_spec("recall_city", "sort", profile="quick", seed=2)
    from forgetting.profiles import PROFILES, experiment_spec

    base = experiment_spec("quick")
    assert spec.sequence == ["recall_city", "sort"]
    assert spec.steps_per_task == PROFILES["quick"]["sweep"]["steps"]
    assert spec.eval.every == 0 and not spec.reference.enabled and spec.seed == 2
    assert spec.optimizer == base.optimizer and spec.batch_size == base.batch_size
    assert sweep_spec("recall_city", "sort").hash() != sweep_spec("sort", "recall_city").hash()


def test_quick_sweep_sizes_live_in_the_profile():
    from forgetting.profiles import sweep_settings

    quick = sweep_settings("quick")
    n = len(quick["tasks"])
    assert n * (n - 1) * quick["steps"] <= 12 * 100 * 1.25  # the quick sweep's budget (about 2.5 minutes)


def test_pairwise_sweep_one_row_per_ordered_pair_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETTING_CACHE", str(tmp_path))
    tasks = ["recall_city", "update_city", "sort"]
    spec = small_spec(eval={"every": 3, "batch_size": 64, "heldout_corpus": False})
    first = pairwise_sweep(tasks, spec=spec, seed=0, progress=False)
    assert list(first.columns) == list(SWEEP_COLUMNS)
    assert list(zip(first.task_a, first.task_b)) == [
        ("recall_city", "update_city"), ("recall_city", "sort"), ("update_city", "recall_city"),
        ("update_city", "sort"), ("sort", "recall_city"), ("sort", "update_city")]
    assert (first.steps == 6).all() and (first.seed == 0).all()
    row = first.iloc[0]
    assert row.forgetting_loss == pytest.approx(row.loss_a_after - row.loss_a_before)
    assert row.forgetting_exact == pytest.approx(row.exact_a_before - row.exact_a_after)
    assert row.forgetting_answer == pytest.approx(row.answer_a_before - row.answer_a_after)
    assert np.isfinite(first[["forgetting_loss", "gain_loss_b"]].to_numpy()).all()
    assert all(str(tmp_path) in r for r in first.run)

    import forgetting.train.sequence

    monkeypatch.setattr(forgetting.train.sequence, "train_task", lambda *a, **k: pytest.fail("trained again"))
    second = pairwise_sweep(tasks, spec=spec, seed=0, progress=False)
    pd.testing.assert_frame_equal(first, second)

    aligned = sweep_alignment(first, n_examples=8, progress=False)
    assert len(aligned) == 2 * len(first)
    assert set(aligned.measure) == {"alignment_at_a", "update_alignment"}
    assert aligned.value.between(-1, 1).all()
    import forgetting.sweep.pairs

    monkeypatch.setattr(forgetting.sweep.pairs, "task_gradients", lambda *a, **k: pytest.fail("recomputed"))
    pd.testing.assert_frame_equal(aligned, sweep_alignment(first, n_examples=8, progress=False))
    with pytest.raises(SpecError, match="sweep: missing column"):
        sweep_alignment(first.drop(columns="run"))

    answers = sweep_answers(first, "recall_city", "update_city", n_examples=2, max_new_tokens=3)
    assert list(answers.columns) == ["prompt", "target", "after_a", "after_b"] and len(answers) == 2
    assert answers.prompt.str.startswith("Q :").all()
    with pytest.raises(SpecError, match="no run for sort->sort"):
        sweep_answers(first, "sort", "sort")


# --- similarity against forgetting (no model) ------------------------------------------------------------


def _synthetic_pairs(f, n_tasks: int = 6, seed: int = 0) -> pd.DataFrame:
    """All ordered pairs of n_tasks tasks with a similarity s in [0, 1] and forgetting f(s) + small noise."""
    import itertools

    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(n_tasks)]
    rows = []
    for a, b in itertools.permutations(tasks, 2):
        s = rng.uniform(0, 1)
        rows.append({"task_a": a, "task_b": b, "sim": s, "forgetting_answer": f(s) + 0.01 * rng.normal()})
    return pd.DataFrame(rows)


def test_pair_table_merges_aggregate_rows_only():
    sweep = pd.DataFrame({"task_a": ["a", "b"], "task_b": ["b", "a"], "forgetting_loss": [1.0, 2.0]})
    sim = pd.DataFrame({"task_a": ["a", "b", "a"], "task_b": ["b", "a", "b"], "measure": ["fisher", "fisher", "representation_layer"],
                        "layer": pd.array([None, None, 2], dtype="Int64"), "value": [0.5, 0.5, 0.9]})
    table = pair_table(sweep, sim)
    assert list(table.fisher) == [0.5, 0.5] and "representation_layer" not in table.columns
    with pytest.raises(SpecError, match="sweep"):
        pair_table(pd.DataFrame({"x": [1]}), sim)
    seeds = pd.DataFrame({"task_a": ["a", "a", "b"], "task_b": ["b", "b", "a"], "seed": [0, 1, 0],
                          "forgetting_loss": [1.0, 3.0, 5.0], "run": ["x", "y", "z"]})
    averaged = pair_table(seeds, sim)
    assert list(averaged.forgetting_loss) == [2.0, 5.0] and list(averaged.seed) == [2, 1]
    assert "run" not in averaged.columns and list(averaged.fisher) == [0.5, 0.5]


def test_similarity_correlations_use_the_cluster_bootstrap():
    table = _synthetic_pairs(lambda s: 2 * s)
    out = similarity_correlations(table, ["sim"], ["forgetting_answer"], n_boot=200, n_perm=200)
    assert list(out.method) == ["pearson", "spearman"]
    assert (out.r > 0.99).all() and (out.resampling == "clusters").all() and (out.n_tasks == 6).all()
    naive = similarity_correlations(table, ["sim"], ["forgetting_answer"], cluster=False, n_boot=200, n_perm=200)
    assert (naive.resampling == "observations").all()
    const = similarity_correlations(table.assign(sim=1.0), ["sim"], ["forgetting_answer"], n_boot=10, n_perm=10)
    assert const.r.isna().all()
    with pytest.raises(SpecError, match="forgetting"):
        similarity_correlations(table, ["sim"], ["forgetting_nope"])
    # partialling out a covariate that drives forgetting: y = x + z, with x and z independent
    rng = np.random.default_rng(1)
    z = rng.normal(size=len(table))
    confounded = table.assign(z=z, forgetting_answer=table["sim"] * 0.0 + z + 0.01 * rng.normal(size=len(table)))
    plain = similarity_correlations(confounded.assign(sim=z + 0.1 * rng.normal(size=len(table))), ["sim"],
                                    ["forgetting_answer"], ["pearson"], n_boot=50, n_perm=50)
    partial = similarity_correlations(confounded.assign(sim=z + 0.1 * rng.normal(size=len(table))), ["sim"],
                                      ["forgetting_answer"], ["pearson"], given=["z"], n_boot=50, n_perm=50)
    assert plain.r.iloc[0] > 0.9 and abs(partial.r.iloc[0]) < 0.5 and partial.given.iloc[0] == "z"


def test_quadratic_peak_finds_an_intermediate_peak_and_only_then():
    peak = quadratic_peak(_synthetic_pairs(lambda s: 1 - 4 * (s - 0.5) ** 2), "sim", "forgetting_answer", n_boot=300)
    assert peak["verdict"] == "intermediate peak" and peak["peak_inside"]
    assert peak["vertex"] == pytest.approx(0.5, abs=0.02) and peak["b2"] == pytest.approx(-4, rel=0.05)
    assert peak["b2_ci_high"] < 0
    line = quadratic_peak(_synthetic_pairs(lambda s: 2 * s), "sim", "forgetting_answer", n_boot=300)
    assert line["verdict"] == "no intermediate peak" and not line["peak_inside"]
    with pytest.raises(SpecError, match="similarity"):
        quadratic_peak(_synthetic_pairs(lambda s: s), "nope", "forgetting_answer")


def test_task_effects_known_shares():
    import itertools

    tasks = ["a", "b", "c"]
    pairs = list(itertools.permutations(tasks, 2))
    alpha = {"a": 0.0, "b": 1.0, "c": 2.0}
    only_a = pd.DataFrame({"task_a": [p[0] for p in pairs], "task_b": [p[1] for p in pairs],
                           "forgetting_loss": [alpha[p[0]] for p in pairs]})
    out = task_effects(only_a, ["forgetting_loss"]).iloc[0]
    assert out.by_a == pytest.approx(1) and out.additive == pytest.approx(1)
    # with all ordered pairs of 3 tasks, B's mean is determined by A's: mean of the other two alphas
    assert out.by_b == pytest.approx(0.25)
    with pytest.raises(SpecError, match="table"):
        task_effects(only_a, ["forgetting_exact"])


def test_leave_one_task_out_drops_every_pair_of_the_task():
    table = _synthetic_pairs(lambda s: 2 * s, n_tasks=4)
    out = leave_one_task_out(table, "sim", "forgetting_answer")
    assert list(out.left_out) == ["t0", "t1", "t2", "t3", "(none)"]
    assert (out.n.iloc[:4] == 6).all() and out.n.iloc[-1] == 12  # 3 x 2 ordered pairs remain
    assert (out.r > 0.99).all()
    assert leave_one_task_out(table, "sim", "forgetting_answer", "spearman").r.iloc[-1] > 0.99
    with pytest.raises(SpecError, match="method"):
        leave_one_task_out(table, "sim", "forgetting_answer", "kendall")
