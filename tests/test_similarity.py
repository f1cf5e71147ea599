"""forgetting.mechanisms.similarity and forgetting.sweep: known answers (identical tasks are similar 1, disjoint tokens overlap 0), the Fisher
embedding's invariances, the pairwise sweep on a tiny spec (one row per ordered pair, cached), bad input."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.errors import SpecError
from forgetting.mechanisms.similarity import (
    SIMILARITY_COLUMNS,
    bhattacharyya,
    cosine,
    fisher_embedding,
    fisher_similarity,
    jaccard,
    similarity_matrix,
    token_counts,
    token_similarity,
)
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
from forgetting.tasks import make_task
from forgetting.tasks.encoding import encode_examples
from forgetting.tasks.families import Example, Task
from tests.conftest import small_spec


@pytest.fixture(scope="module")
def tiny():
    from forgetting import load_model

    return load_model("tiny")


def _copy(task: Task, name: str) -> Task:
    return dataclasses.replace(task, name=name)


def _value(df: pd.DataFrame, measure: str, a: str, b: str) -> float:
    rows = df[(df.measure == measure) & (df.task_a == a) & (df.task_b == b) & df.layer.isna()]
    assert len(rows) == 1, (measure, a, b, len(rows))
    return float(rows.value.iloc[0])


# --- small pieces -----------------------------------------------------------------------------------


def test_cosine_of_arrays_and_dicts():
    assert cosine([1, 0], [0, 1]) == 0
    assert cosine([1, 2], [2, 4]) == pytest.approx(1)
    assert cosine([1, 2], [-1, -2]) == pytest.approx(-1)
    a = {"w": torch.tensor([1.0, 0.0]), "b": torch.tensor([1.0])}
    b = {"w": torch.tensor([0.0, 1.0]), "b": torch.tensor([1.0])}
    assert cosine(a, b) == pytest.approx(1 / 2)  # <a, b> = 1, ||a|| = ||b|| = sqrt(2)
    assert np.isnan(cosine([0, 0], [1, 1]))


def test_bhattacharyya_and_jaccard_known_values():
    assert bhattacharyya(Counter("aabb"), Counter("aabb")) == pytest.approx(1)
    assert bhattacharyya(Counter("ab"), Counter("cd")) == 0
    # p = (1/2, 1/2, 0), q = (0, 1/2, 1/2): BC = sqrt(1/4) = 1/2
    assert bhattacharyya(Counter("ab"), Counter("bc")) == pytest.approx(0.5)
    assert jaccard("ab", "bc") == pytest.approx(1 / 3)
    assert jaccard("ab", "cd") == 0


def test_token_overlap_identical_is_one_and_disjoint_is_zero():
    letters = Task("letters", "x", "", tuple(Example(f"a b {i}", "c") for i in "xyz"), (Example("a", "c"),), ("c",))
    digits = Task("digits", "x", "", tuple(Example(f"1 2 {i}", "3") for i in "456"), (Example("1", "3"),), ("3",))
    df = token_similarity([letters, _copy(letters, "same"), digits])
    assert set(df.columns) == set(SIMILARITY_COLUMNS)
    for measure in ("token_overlap", "token_jaccard", "answer_overlap"):
        assert _value(df, measure, "letters", "same") == pytest.approx(1)
        assert _value(df, measure, "letters", "digits") == 0
    assert token_counts(letters) == Counter({"a": 3, "b": 3, "c": 3, "x": 1, "y": 1, "z": 1})


# --- measures on the model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def identical_matrix(tiny):
    model, tokenizer = tiny
    city = make_task("recall_city")
    tasks = [city, _copy(city, "city_again"), make_task("sort")]
    return similarity_matrix(model, tasks, tokenizer=tokenizer, n_examples=16)


@pytest.mark.parametrize("measure", ["gradient_cosine", "gradient_cosine_attention", "gradient_cosine_mlp",
                                     "representation", "representation_subspace", "token_overlap", "fisher"])
def test_identical_tasks_have_similarity_one(identical_matrix, measure):
    assert _value(identical_matrix, measure, "recall_city", "city_again") == pytest.approx(1, abs=1e-6)
    assert _value(identical_matrix, measure, "recall_city", "sort") < 0.99


def test_identical_tasks_have_fisher_distance_zero_and_matrix_is_symmetric(identical_matrix):
    df = identical_matrix
    assert _value(df, "fisher_distance", "recall_city", "city_again") == pytest.approx(0, abs=1e-9)
    assert _value(df, "fisher_distance", "recall_city", "sort") > 0.05
    agg = df[df.layer.isna()]
    for measure, group in agg.groupby("measure"):
        M = group.pivot(index="task_a", columns="task_b", values="value")
        np.testing.assert_allclose(M.to_numpy(), M.T.to_numpy(), atol=1e-12, err_msg=measure)
    layers = df[df.measure == "representation_layer"].layer
    assert sorted(layers.unique()) == list(range(5))  # embedding output + 4 blocks of the tiny model
    # the aggregate is the mean over the block outputs 1..L
    per_layer = df[(df.measure == "representation_subspace_layer") & (df.task_a == "recall_city")
                   & (df.task_b == "sort") & (df.layer >= 1)].value.mean()
    assert _value(df, "representation_subspace", "recall_city", "sort") == pytest.approx(per_layer)


def test_fisher_embedding_equals_itself_and_ignores_batch_order(tiny):
    model, tokenizer = tiny
    examples = make_task("recall_city").train[:12]
    emb = fisher_embedding(model, encode_examples(tokenizer, examples), seed=3)
    again = fisher_embedding(model, encode_examples(tokenizer, examples), seed=3)
    shuffled = fisher_embedding(model, encode_examples(tokenizer, examples[::-1]), seed=3)
    for name in emb:
        torch.testing.assert_close(emb[name], again[name], rtol=0, atol=0)
        torch.testing.assert_close(emb[name], shuffled[name], rtol=1e-9, atol=1e-15)
    assert fisher_similarity(emb, shuffled)["fisher"] == pytest.approx(1)
    assert fisher_similarity(emb, shuffled)["fisher_distance"] == pytest.approx(0, abs=1e-9)
    assert all((f >= 0).all() for f in emb.values())
    other = fisher_embedding(model, encode_examples(tokenizer, examples), seed=4)  # other sampled labels
    assert any(not torch.equal(emb[n], other[n]) for n in emb)


def test_fisher_is_the_mean_of_squared_per_example_scores(tiny):
    """F from two examples = mean of F of each one alone (the square is per example, not per batch)."""
    model, tokenizer = tiny
    examples = make_task("sort").train[:2]
    both = fisher_embedding(model, encode_examples(tokenizer, examples), seed=0)
    one = fisher_embedding(model, encode_examples(tokenizer, examples[:1]), seed=0)
    two = fisher_embedding(model, encode_examples(tokenizer, examples[1:]), seed=0)
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(both[name], (one[name] + two[name]) / 2)


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("tasks, measures, field, text", [
    (["recall_city", "nope"], ["tokens"], "tasks", "unknown task(s) 'nope'; allowed: recall_city"),
    (["recall_city"], ["tokens"], "tasks", "at least 2 tasks"),
    (["sort", "sort"], ["tokens"], "tasks", "'sort' given twice"),
    ("sort", ["tokens"], "tasks", "list of at least 2 tasks"),
    (["recall_city", "sort"], ["tokens", "vibes"], "measures", "'vibes' not allowed; allowed: gradient, representation"),
    (["recall_city", "sort"], [], "measures", "allowed:"),
])
def test_similarity_matrix_bad_input(tasks, measures, field, text, monkeypatch):
    import forgetting.models

    monkeypatch.setattr(forgetting.models, "load_model", lambda *a, **k: pytest.fail("work before validation"))
    with pytest.raises(SpecError) as info:
        similarity_matrix("tiny", tasks, measures)
    assert info.value.field == field
    assert text in str(info.value)


def test_model_object_needs_tokenizer(tiny):
    with pytest.raises(SpecError, match="tokenizer"):
        similarity_matrix(tiny[0], ["recall_city", "sort"], ["gradient"])


@pytest.mark.parametrize("kwargs, field", [
    ({"task_names": ["recall_city", "nope"]}, "tasks"),
    ({"task_names": ["recall_city"]}, "tasks"),
    ({"task_names": ["recall_city", "sort"], "profile": "huge"}, "profile"),
    ({"task_names": ["recall_city", "sort"], "steps": 0}, "steps"),
])
def test_pairwise_sweep_bad_input(kwargs, field, monkeypatch):
    import forgetting.profiles

    monkeypatch.setattr(forgetting.profiles, "run_cached", lambda *a, **k: pytest.fail("work before validation"))
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
    import forgetting.mechanisms.gradients

    monkeypatch.setattr(forgetting.mechanisms.gradients, "task_gradients", lambda *a, **k: pytest.fail("recomputed"))
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
