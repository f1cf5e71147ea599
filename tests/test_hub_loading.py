"""Loading Hugging Face causal LMs by local path (tiny random models of every supported architecture,
saved with save_pretrained) and the clear errors for bad names; nothing touches the network."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import pytest
import torch

import forgetting
from forgetting.errors import SpecError
from forgetting.models.geometry import attention_geometry
from forgetting.models.hub import is_hub_id, load_pretrained
from tests._tiny_models import ARCHITECTURES, HEAD_DIM, HEADS, LAYERS, build_tiny, sample_ids, save_tiny

MOE = {"mixtral", "llama4_text"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: save_tiny(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_load_by_path(saved, arch, no_network):
    model, tokenizer = load_pretrained(saved[arch])
    assert model.config.model_type == arch
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert tokenizer.padding_side == "right" and tokenizer.pad_token == "[PAD]"
    # the weights are the ones saved
    expected = build_tiny(arch).state_dict()
    loaded = model.state_dict()
    assert loaded.keys() == expected.keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    # eager attention returns the weights: one (batch, heads, seq, seq) per layer, rows sum to 1
    ids = sample_ids(batch=2, length=6)
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    assert len(out.attentions) == LAYERS
    for att in out.attentions:
        assert att.shape == (2, HEADS, 6, 6)
        torch.testing.assert_close(att.sum(-1), torch.ones(2, HEADS, 6))
    g = attention_geometry(model)
    assert (g.num_layers, g.num_heads, g.head_dim) == (LAYERS, HEADS, HEAD_DIM)
    encoded = tokenizer(["the cat sat", "a dog"], padding=True, return_tensors="pt")
    assert encoded["input_ids"][1, -1].item() == tokenizer.pad_token_id  # right padding


@pytest.mark.parametrize("arch", ["llama", "gpt2", "mixtral"])
def test_forgetting_load_model_by_path(saved, arch, no_network):
    model, tokenizer = forgetting.load_model(str(saved[arch]))
    assert model.config.model_type == arch and not model.training
    assert model.config._attn_implementation == "eager"
    assert len(tokenizer) == model.config.vocab_size


@pytest.mark.parametrize("arch", sorted(MOE))
def test_moe_experts_are_eager(saved, arch):
    model, _ = load_pretrained(saved[arch])
    assert model.config._experts_implementation == "eager"  # Mixtral would otherwise get grouped_mm
    ids = sample_ids()
    with torch.no_grad():
        out = model(ids, output_attentions=True)
    assert torch.isfinite(out.logits).all() and len(out.attentions) == LAYERS


def test_dtype_and_device(saved):
    model, _ = load_pretrained(saved["llama"], dtype="bfloat16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with pytest.raises(SpecError, match="^dtype: 'float12' not allowed; allowed: "):
        load_pretrained(saved["llama"], dtype="float12")
    with pytest.raises(SpecError, match="^device: "):
        load_pretrained(saved["llama"], device="warp-drive")


def test_missing_pad_token_becomes_eos(tmp_path):
    folder = save_tiny("llama", tmp_path / "nopad", with_pad=False)
    _, tokenizer = load_pretrained(folder)
    assert tokenizer.pad_token == tokenizer.eos_token == "[EOS]"
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("name", ["missing", "no/such/model", "./relative/missing", "~/nope-forgetting-test"])
def test_missing_path_fails_clearly_without_network(tmp_path, name, no_network):
    target = str(tmp_path / name) if name == "missing" else name
    with pytest.raises(SpecError) as info:
        load_pretrained(target)
    assert info.value.field == "model"
    assert "no such model folder" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SpecError, match="no such model folder"):
        forgetting.load_model(target)


def test_folder_without_config_and_file(tmp_path, no_network):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="has no config.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(SpecError, match="is a file"):
        load_pretrained(tmp_path / "weights.bin")


def test_folder_without_tokenizer(tmp_path, no_network):
    build_tiny("llama").save_pretrained(tmp_path / "m")
    with pytest.raises(SpecError, match="^model: could not load the tokenizer from folder"):
        load_pretrained(tmp_path / "m")


def test_gpt2_folder_without_tokenizer_files_is_refused_not_scored(tmp_path, no_network):
    """GPT-2's tokenizer class loads from a folder with no vocabulary files, with one token: every prompt
    and answer would encode to nothing (a run scored exact match 1.000 on empty answers)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50, n_positions=32,
                               bos_token_id=0, eos_token_id=0)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(SpecError) as err:
        load_pretrained(tmp_path / "gpt2")
    message = str(err.value)
    assert message.startswith(f"model: {tmp_path / 'gpt2'}: its tokenizer has a vocabulary of 1 token(s)")
    assert "encodes 'The cat sat on the mat.' to 0 tokens" in message and "tokenizer.save_pretrained" in message


def test_a_usable_tokenizer_passes_the_check(saved):
    from forgetting.models.hub import check_tokenizer

    _, tokenizer = load_pretrained(saved["llama"])
    assert check_tokenizer(tokenizer, "x") is tokenizer


def test_unknown_hub_id_fails_fast_offline(monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_pretrained("forgetting-tests/definitely-not-a-model")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert info.value.field == "model" and "HF_HUB_OFFLINE" in message and "'forgetting-tests/definitely-not-a-model'" in message
    assert "\n" not in message


def test_remote_code_needs_consent(tmp_path, no_network):
    """A folder whose config points at its own code: refused without trust_remote_code, and the code never runs."""
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "forgetting_custom",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForCausalLM": "modeling_custom.CustomModel"},
    }))
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    (folder / "configuration_custom.py").write_text(code)
    (folder / "modeling_custom.py").write_text(code)
    with pytest.raises(SpecError, match="trust_remote_code=True"):
        load_pretrained(folder)
    assert not marker.exists()


def test_hub_id_shape():
    assert is_hub_id("gpt2") and is_hub_id("HuggingFaceTB/SmolLM2-135M") and is_hub_id("EleutherAI/pythia-70m")
    assert not any(is_hub_id(n) for n in ("no/such/model", "./x", "../x", "/abs/path", "~/x", "a/../b", ""))


def test_a_local_model_folder_is_fingerprinted_by_its_weight_files_only(tmp_path):
    from forgetting.models import model_fingerprint

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / "config.json").write_text("{}")
    first = model_fingerprint(str(folder))
    expected = hashlib.sha256(b"model.safetensors" + b"abc").hexdigest()
    assert first == {"name": str(folder), "source": str(folder), "weights_sha256": expected}
    (folder / "config.json").write_text('{"a": 1}')  # not a weight file
    assert model_fingerprint(str(folder)) == first
    (folder / "model.safetensors").write_bytes(b"abd")
    assert model_fingerprint(str(folder))["weights_sha256"] != expected
    assert model_fingerprint("no-such-org/no-such-model")["weights_sha256"] is None  # never downloaded
