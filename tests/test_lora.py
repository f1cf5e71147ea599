"""LoRA through peft: default targets per architecture, only adapters train, the effective update
equals peft's own merge, and bad targets are refused with the allowed names."""

from __future__ import annotations

import copy

import pytest
import torch

from forgetting.errors import SpecError
from forgetting.models.geometry import attention_geometry
from forgetting.models.lora import apply_lora, effective_update, lora_layers, lora_parameters
from tests._tiny_models import HEAD_DIM, HIDDEN, KV_HEADS, LAYERS, build_tiny, sample_ids

ARCHS = ("llama", "mixtral", "gpt2", "gpt_neox")


@pytest.fixture(scope="module")
def base_models() -> dict[str, torch.nn.Module]:
    return {arch: build_tiny(arch) for arch in ARCHS}


def _fresh(base_models, arch):
    return copy.deepcopy(base_models[arch])


def _randomize_adapters(peft_model, seed: int = 0) -> None:
    """peft starts B at zero (a zero update); give A and B random values so the update is not trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(peft_model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


@pytest.mark.parametrize("arch", ARCHS)
def test_default_targets_are_the_attention_projections(base_models, arch):
    model = apply_lora(_fresh(base_models, arch), r=4, alpha=8)
    g = attention_geometry(model)
    expected = {
        ref.param_name for layer in range(LAYERS) for ref in g.projections(layer).values()
    }
    assert set(lora_layers(model)) == expected
    if arch == "gpt2":  # the MLP's c_proj is left alone
        assert not any(".mlp." in name for name in lora_layers(model))


@pytest.mark.parametrize("arch", ARCHS)
def test_only_adapters_train(base_models, arch):
    r = 4
    model = apply_lora(_fresh(base_models, arch), r=r)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    params = lora_parameters(model)
    assert params.keys() == trainable.keys() and params
    # A is (r, in), B is (out, r) per adapted weight: r * (in + out) each
    expected = 0
    for name in lora_layers(model):
        w = dict(model.get_base_model().named_parameters())[name.replace(".weight", ".base_layer.weight")]
        out_f, in_f = (w.shape[1], w.shape[0]) if arch == "gpt2" else tuple(w.shape)
        expected += r * (in_f + out_f)
    assert sum(p.numel() for p in params.values()) == expected


def test_update_starts_at_zero(base_models):
    model = apply_lora(_fresh(base_models, "llama"))
    assert all(not delta.any() for delta in effective_update(model).values())


@pytest.mark.parametrize("arch", ARCHS)
def test_effective_update_matches_peft_merge(base_models, arch):
    """W_merged - W == effective_update, in the base weight's layout (Conv1D (in, out) for GPT-2)."""
    model = apply_lora(_fresh(base_models, arch), r=4, alpha=12)
    _randomize_adapters(model)
    updates = effective_update(model)
    before = {n: p.detach().clone() for n, p in base_models[arch].named_parameters()}
    merged = copy.deepcopy(model).merge_and_unload()
    after = dict(merged.named_parameters())
    assert set(updates) <= set(after)
    for name, delta in updates.items():
        assert delta.shape == before[name].shape
        torch.testing.assert_close(after[name] - before[name], delta, atol=1e-6, rtol=1e-5)
        assert delta.abs().max() > 1e-3
    # and the adapted model computes what the merged one does
    ids = sample_ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, merged(ids).logits, atol=1e-4, rtol=1e-4)


def test_scaling_is_alpha_over_r(base_models):
    r, alpha = 4, 12
    model = apply_lora(_fresh(base_models, "llama"), r=r, alpha=alpha)
    _randomize_adapters(model, seed=1)
    params = lora_parameters(model)
    name = "model.layers.1.self_attn.k_proj"
    a = params[f"base_model.model.{name}.lora_A.default.weight"]
    b = params[f"base_model.model.{name}.lora_B.default.weight"]
    assert a.shape == (r, HIDDEN) and b.shape == (KV_HEADS * HEAD_DIM, r)
    torch.testing.assert_close(effective_update(model)[f"{name}.weight"], (alpha / r) * b @ a)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_update_slices_by_head_like_the_weight(base_models, arch):
    model = apply_lora(_fresh(base_models, arch), r=4)
    _randomize_adapters(model, seed=2)
    g = attention_geometry(model)
    updates = effective_update(model)
    for kind in "qkvo":
        ref = g.projection(0, kind)
        per_head = ref.per_head(updates[ref.param_name])
        assert per_head.shape == (ref.num_heads, HEAD_DIM, HIDDEN)
        # the geometry reads the frozen base weight through the peft wrapper
        assert ref.weight(model) is model.get_base_model().get_submodule(ref.module_name).base_layer.weight


def test_peft_wrapped_geometry_is_the_base_geometry(base_models):
    model = apply_lora(_fresh(base_models, "mixtral"))
    assert attention_geometry(model) == attention_geometry(base_models["mixtral"])


def test_explicit_targets(base_models):
    model = apply_lora(_fresh(base_models, "llama"), target_modules=["q_proj", "mlp.down_proj"])
    assert sorted(lora_layers(model)) == sorted(
        f"model.layers.{layer}.{name}.weight" for layer in range(LAYERS) for name in ("self_attn.q_proj", "mlp.down_proj")
    )


def test_unknown_target_lists_the_allowed_names(base_models):
    with pytest.raises(SpecError) as info:
        apply_lora(_fresh(base_models, "llama"), target_modules=["q_proj", "qq_proj"])
    assert info.value.field == "finetune.lora.target_modules"
    message = str(info.value)
    assert "'qq_proj'" in message and "'q_proj'" not in message
    allowed = message.split("allowed: ", 1)[1].split(", ")
    assert allowed == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"])
    with pytest.raises(SpecError, match="c_attn"):  # GPT-2's names, for GPT-2
        apply_lora(_fresh(base_models, "gpt2"), target_modules=["q_proj"])
    with pytest.raises(SpecError, match=r"^lora\.target_modules: 'nope'"):
        apply_lora(_fresh(base_models, "llama"), target_modules=["nope"], field="lora")


@pytest.mark.parametrize("kwargs, field", [({"r": 0}, "finetune.lora.r"), ({"alpha": 0}, "finetune.lora.alpha"),
                                           ({"dropout": 1.0}, "finetune.lora.dropout")])
def test_bad_hyperparameters(base_models, kwargs, field):
    with pytest.raises(SpecError) as info:
        apply_lora(_fresh(base_models, "llama"), **kwargs)
    assert info.value.field == field


def test_cannot_wrap_twice(base_models):
    model = apply_lora(_fresh(base_models, "llama"))
    with pytest.raises(SpecError, match="already has peft adapters"):
        apply_lora(model)
