"""forgetting.causal.restore: the recovery primitive, on a tiny Llama built here and on a peft LoRA model."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from forgetting.causal import (
    parameter_patch,
    patched,
    recovery,
    slice_patch,
    slice_recovery,
)
from forgetting.models.lora import apply_lora, lora_parameters
from tests._tiny_models import LLAMA_SIZES, tiny_llama

IDS = torch.randint(0, 40, (3, 9), generator=torch.Generator().manual_seed(1))


def loss_fn(model) -> torch.Tensor:
    """Next-token cross-entropy of a fixed batch (a 0-d tensor, as the primitive allows)."""
    logits = model(input_ids=IDS).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), IDS[:, 1:].reshape(-1))


def perturbed(model, select, scale: float = 0.5, seed: int = 0):
    """A copy of ``model`` with noise added to the parameters ``select(name)`` picks."""
    out = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in out.named_parameters():
            if select(name):
                p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def pair():
    before = tiny_llama("test", seed=0)
    return before, perturbed(before, lambda n: ".mlp." in n or ".self_attn." in n)


def test_known_answers_all_none_and_an_unchanged_part(pair):
    before, after = pair
    assert recovery(before, after, loss_fn, lambda n: True) == pytest.approx(1.0, abs=1e-6)
    assert recovery(before, after, loss_fn, lambda n: False) == 0.0
    # only attention and MLP moved: the embeddings and norms are equal in both models
    assert recovery(before, after, loss_fn, lambda n: "embed" in n or "norm" in n or "lm_head" in n) == 0.0
    mlp_only = perturbed(before, lambda n: ".mlp." in n)
    assert recovery(before, mlp_only, loss_fn, lambda n: ".self_attn." in n) == 0.0
    assert recovery(before, mlp_only, loss_fn, lambda n: ".mlp." in n) == pytest.approx(1.0, abs=1e-6)


def test_the_ratio_is_the_formula(pair):
    before, after = pair
    select = lambda n: ".layers.0." in n
    with torch.no_grad():
        lb, la = float(loss_fn(before)), float(loss_fn(after))
        with patched(after, parameter_patch(before, after, select)):
            lr = float(loss_fn(after))
    assert lr != la
    assert recovery(before, after, loss_fn, select) == pytest.approx((la - lr) / (la - lb), rel=1e-12)


def test_both_models_are_unchanged_also_when_the_loss_raises(pair):
    before, after = pair
    b0, a0 = state(before), state(after)
    recovery(before, after, loss_fn, lambda n: "q_proj" in n)
    assert_same(state(before), b0)
    assert_same(state(after), a0)
    calls = []

    def failing(model):
        calls.append(1)
        if len(calls) == 3:  # the call on the patched model
            raise RuntimeError("boom")
        return loss_fn(model)

    with pytest.raises(RuntimeError, match="boom"):
        recovery(before, after, failing, lambda n: True)
    assert_same(state(after), a0)
    assert_same(state(before), b0)


def test_every_mismatch_is_named():
    a = tiny_llama("test")
    b = LlamaForCausalLM(LlamaConfig(**{**LLAMA_SIZES["test"], "intermediate_size": 24, "num_hidden_layers": 3}))
    with pytest.raises(ValueError) as err:
        recovery(a, b, loss_fn, lambda n: True)
    msg = str(err.value)
    for layer in (0, 1):
        for m in ("gate_proj", "up_proj", "down_proj"):
            assert f"model.layers.{layer}.mlp.{m}.weight' is" in msg
    assert "'model.layers.2.self_attn.q_proj.weight' only in after" in msg
    assert "(15 mismatches)" in msg  # 6 shapes + the 9 tensors of layer 2


def test_recovery_is_undefined_when_the_loss_did_not_move():
    model = tiny_llama("test")
    same = copy.deepcopy(model)
    with pytest.raises(ValueError, match="undefined when the stage did not change the old task's loss"):
        recovery(model, same, loss_fn, lambda n: True)


def test_slices_restore_exactly_the_entries_given(pair):
    before, after = pair
    name = "model.layers.1.self_attn.q_proj.weight"  # (16, 16): rows 4:8 are query head 1
    rows = (slice(4, 8), slice(None))
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:8] = True
    a0 = state(after)
    patch = slice_patch(before, after, {name: rows})
    with patched(after, patch):
        w = dict(after.named_parameters())[name]
        assert torch.equal(w[4:8], dict(before.named_parameters())[name][4:8])
        assert torch.equal(w[:4], a0[name][:4]) and torch.equal(w[8:], a0[name][8:])
    assert_same(state(after), a0)
    by_rows = slice_recovery(before, after, loss_fn, {name: rows})
    assert by_rows == slice_recovery(before, after, loss_fn, {name: mask})
    assert by_rows != 0.0
    whole = slice_recovery(before, after, loss_fn, {name: ...})
    assert whole == recovery(before, after, loss_fn, lambda n: n == name)
    with pytest.raises(ValueError, match="not parameters"):
        slice_recovery(before, after, loss_fn, {"nope.weight": ...})


def test_a_peft_lora_model_restores_its_factors():
    base = tiny_llama("test", seed=3)
    before = apply_lora(copy.deepcopy(base), r=2, alpha=4)
    after = perturbed(before, lambda n: ".lora_" in n, scale=0.8)
    assert set(lora_parameters(after)) <= {n for n, _ in after.named_parameters()}
    b0, a0 = state(before), state(after)
    assert recovery(before, after, loss_fn, lambda n: ".lora_" in n) == pytest.approx(1.0, abs=1e-6)
    # the frozen base weights are equal in both models: restoring them changes nothing
    assert recovery(before, after, loss_fn, lambda n: ".base_layer." in n) == 0.0
    assert parameter_patch(before, after, lambda n: ".base_layer." in n) == {}
    q = recovery(before, after, loss_fn, lambda n: "q_proj.lora_" in n)
    assert q != 0.0
    assert_same(state(before), b0)
    assert_same(state(after), a0)
