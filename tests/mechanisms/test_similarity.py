"""forgetting.mechanisms.similarity: known answers (identical tasks are similar 1, disjoint tokens overlap 0),
the Fisher embedding's invariances, bad input named before any work."""

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
from forgetting.tasks import make_task
from forgetting.tasks.encoding import encode_examples
from forgetting.tasks.families import Example, Task


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
    import forgetting.mechanisms.similarity

    monkeypatch.setattr(forgetting.mechanisms.similarity, "load_model", lambda *a, **k: pytest.fail("work before validation"))
    with pytest.raises(SpecError) as info:
        similarity_matrix("tiny", tasks, measures)
    assert info.value.field == field
    assert text in str(info.value)


def test_model_object_needs_tokenizer(tiny):
    with pytest.raises(SpecError, match="tokenizer"):
        similarity_matrix(tiny[0], ["recall_city", "sort"], ["gradient"])
