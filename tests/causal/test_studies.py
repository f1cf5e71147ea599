"""forgetting.causal.parts and .studies: the parts of a model and the restoration rows of one pair."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forgetting.causal.parts import model_parts, module_of
from forgetting.causal.studies import random_heads, ranked_heads, restoration_rows
from forgetting.models.lora import apply_lora
from tests._tiny_models import tiny_llama
from tests.causal.test_restore import loss_fn, perturbed


def test_module_of_reads_plain_and_peft_names():
    assert module_of("model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj"
    assert module_of("base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight") == \
        "model.layers.1.self_attn.q_proj"
    assert module_of("base_model.model.model.layers.1.self_attn.q_proj.base_layer.weight") == \
        "model.layers.1.self_attn.q_proj"


@pytest.mark.parametrize("lora", [False, True])
def test_parts_partition_the_parameters(lora):
    model = tiny_llama("test")
    model = apply_lora(model, r=2) if lora else model
    names = [n for n, _ in model.named_parameters()]
    parts = {(p.study, p.part): {n for n in names if p.select(n)} for p in model_parts(model)}
    layers = [parts[("layer", f"layer {i}")] for i in range(2)]
    groups = [v for (study, part), v in parts.items() if study == "group" and part != "all"]
    assert [part for study, part in parts if study == "group"] == ["all", "attention", "mlp", "embeddings", "norms"]
    assert sum(map(len, groups)) == len(names) and set().union(*groups) == set(names) == parts[("group", "all")]
    matrices = [v for (study, _), v in parts.items() if study == "matrix"]
    assert [part for study, part in parts if study == "matrix"] == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert set().union(*matrices) == parts[("group", "attention")] | parts[("group", "mlp")]
    assert sum(map(len, matrices)) == len(parts[("group", "attention")]) + len(parts[("group", "mlp")])
    assert not layers[0] & layers[1]
    assert parts[("group", "embeddings")] == {n for n in names if "embed_tokens" in n or "lm_head" in n}
    per_layer = (4 * (3 if lora else 1)) + 3 + 2  # q,k,v,o (LoRA: base + A + B), gate, up, down, two norms
    assert len(layers[0]) == per_layer


def test_ranked_heads_orders_by_combined_z_nan_last():
    table = pd.DataFrame({
        "layer": [0, 0, 1, 1, 1, 0], "head": [0, 1, 0, 1, 1, 2],
        "metric": ["combined"] * 4 + ["js_divergence", "combined"], "z": [1.0, np.nan, 3.0, 1.0, 9.0, 2.0],
        "stage": 2, "old_task": "a",
    })
    assert ranked_heads(table, 2, "a") == [(1, 0), (0, 2), (0, 0), (1, 1), (0, 1)]
    assert ranked_heads(table, 3, "a") == [] and ranked_heads(pd.DataFrame(), 2, "a") == []


def test_random_heads_keep_the_layers_and_are_seeded():
    layers = [0, 0, 2, 3, 3, 3]
    draws = [random_heads(layers, 8, np.random.default_rng([1, 2, 5])) for _ in range(2)]
    assert draws[0] == draws[1]
    assert sorted(layer for layer, _ in draws[0]) == sorted(layers)
    assert len(set(draws[0])) == len(layers)  # without replacement inside a layer
    many = {tuple(random_heads([1], 8, rng)) for rng in [np.random.default_rng(s) for s in range(200)]}
    assert many == {((1, h),) for h in range(8)}  # every head of the layer can be drawn


@pytest.fixture(scope="module")
def mlp_pair():
    before = tiny_llama("test", seed=0)
    return before, perturbed(before, lambda n: ".mlp." in n, scale=0.5)


def test_restoration_rows_known_answers(mlp_pair):
    before, after = mlp_pair
    ranked = [(1, 2), (0, 0), (0, 3), (1, 1), (1, 0)]
    rows = pd.DataFrame(restoration_rows(before, after, loss_fn, ranked=ranked, ks=(2, 5), draws=3, seed=(0, 2)))
    by = rows.set_index(["study", "part", "draw"])["recovery"]
    assert by[("group", "all", -1)] == pytest.approx(1.0, abs=1e-6)
    assert by[("group", "mlp", -1)] == pytest.approx(1.0, abs=1e-6)  # only the MLPs moved
    for part in ("attention", "embeddings", "norms"):
        assert by[("group", part, -1)] == 0.0
    assert (rows[rows.study.str.startswith("heads")]["recovery"] == 0.0).all()  # attention did not move
    assert by[("union", "attention+mlp", -1)] == pytest.approx(1.0, abs=1e-6)
    assert by[("interaction", "attention x mlp", -1)] == pytest.approx(
        by[("union", "attention+mlp", -1)] - by[("group", "attention", -1)] - by[("group", "mlp", -1)], abs=1e-12)
    severe = rows[rows.study == "heads_severe"]
    assert list(severe.part) == ["k=2", "k=5"] and list(severe.heads) == ["L0H0 L1H2", "L0H0 L0H3 L1H0 L1H1 L1H2"]
    random = rows[rows.study == "heads_random"]
    assert random.groupby("part").draw.apply(list).to_dict() == {"k=2": [0, 1, 2], "k=5": [0, 1, 2]}
    for heads in random[random.part == "k=5"].heads:  # the layers of the severe set: two in layer 0, three in 1
        assert heads.count("L0H") == 2 and heads.count("L1H") == 3
    assert (rows.loss_before == rows.loss_before.iloc[0]).all() and (rows.draw[rows.study != "heads_random"] == -1).all()
    # the n_params of a group are its changed entries: the MLPs' 3 matrices of 32 x 16 per layer
    assert rows.set_index(["study", "part"]).loc[("group", "mlp"), "n_params"] == 2 * 3 * 32 * 16


def test_restoration_rows_on_attention_and_mlp_changes_add_up_to_the_union():
    before = tiny_llama("test", seed=1)
    after = perturbed(before, lambda n: ".mlp." in n or ".self_attn." in n, scale=0.4)
    rows = pd.DataFrame(restoration_rows(before, after, loss_fn, draws=0))
    by = rows.set_index(["study", "part"])["recovery"]
    assert by[("union", "attention+mlp")] == pytest.approx(1.0, abs=1e-6)  # nothing else moved
    assert 0 != by[("group", "attention")] != by[("group", "mlp")]
    assert set(rows.study) == {"layer", "group", "matrix", "union", "interaction"}  # no ranking: no head rows
