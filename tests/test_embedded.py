"""The embedded default model: shipped build matches its recipe, shapes, knowledge, determinism."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from forgetting import load_model
from forgetting.models import embedded
from forgetting.tasks import make_world


def test_shipped_tiny_is_current_and_llama_style():
    info = embedded.embedded_info("tiny")
    assert info["recipe_hash"] == embedded.RECIPES["tiny"].hash()
    model, tok = load_model("tiny")
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.num_hidden_layers >= 4
    assert cfg.num_hidden_layers * cfg.num_attention_heads >= 32
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert cfg.hidden_act == "silu" and model.config._attn_implementation == "eager"
    assert info["n_parameters"] == sum(p.numel() for p in model.parameters())
    person = make_world().entities[0]
    words = f"{person} lives in oslo ."
    assert tok.convert_ids_to_tokens(tok(words, add_special_tokens=False)["input_ids"]) == words.split()


def test_shipped_tiny_knows_its_world_and_its_heldout_loss_is_reproducible():
    model, tok = load_model("tiny")
    info = embedded.embedded_info("tiny")
    assert embedded.fact_recall(model, tok, make_world()) == pytest.approx(info["fact_recall"])
    assert info["fact_recall"] > 0.95
    docs = embedded.heldout_documents(embedded.RECIPES["tiny"])
    assert embedded.corpus_loss(model, tok, docs) == pytest.approx(info["heldout_loss"], rel=1e-4)


def test_attention_weights_are_returned():
    model, tok = load_model("tiny")
    out = model(**tok(["kamo lives in"], return_tensors="pt"), output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    assert out.attentions[0].shape[1] == model.config.num_attention_heads


def test_pretraining_is_deterministic(tmp_path):
    recipe = replace(embedded.RECIPES["tiny"], steps=3, batch_size=4, heldout_documents=8)
    a = embedded.pretrain(recipe, tmp_path / "a", progress=False)
    b = embedded.pretrain(recipe, tmp_path / "b", progress=False)
    assert a["heldout_loss"] == b["heldout_loss"]
    from safetensors.torch import load_file

    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert json.loads((tmp_path / "a" / "recipe.json").read_text())["recipe_hash"] == recipe.hash()


def test_a_changed_recipe_is_built_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETTING_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded.paths, "DATA_DIR", tmp_path / "no-data")
    monkeypatch.setitem(embedded.RECIPES, "tiny", replace(embedded.RECIPES["tiny"], steps=2, batch_size=2, heldout_documents=4))
    folder = embedded.embedded_dir("tiny")
    assert folder == tmp_path / "models" / f"tiny-{embedded.RECIPES['tiny'].hash()}"
    assert embedded.embedded_dir("tiny", build=False) == folder  # found again without building


def test_unknown_embedded_model():
    with pytest.raises(KeyError, match="allowed: tiny, tiny-moe"):
        embedded.embedded_dir("huge")


def test_tiny_moe_recipe_builds_a_llama4_mixture_of_experts():
    recipe = embedded.RECIPES["tiny-moe"]
    tok = embedded.build_tokenizer()
    config = embedded.build_config(recipe, tok)
    assert config.model_type == "llama4_text" and config.num_local_experts == recipe.num_experts >= 2
    model = embedded._model_from_config(config)
    out = model(**tok(["kamo lives in oslo ."], return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)
