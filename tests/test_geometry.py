"""Attention geometry per architecture: counts, per-head slices that partition the weights, and the
behaviour behind the layout facts (zeroing head h's q changes only head h's output, etc.)."""

from __future__ import annotations

import pytest
import torch

from forgetting.errors import SpecError
from forgetting.models.geometry import (
    KINDS,
    SUPPORTED_ARCHITECTURES,
    AttentionGeometry,
    attention_geometry,
    default_lora_targets,
)
from tests._tiny_models import ARCHITECTURES, EXPERTS, HEAD_DIM, HEADS, HIDDEN, KV_HEADS, LAYERS, build_tiny, sample_ids
from tests._tiny_models import tiny_config

GQA = {"llama", "qwen2", "mistral", "mixtral", "llama4_text"}  # the others have num_kv_heads == num_heads


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {arch: build_tiny(arch) for arch in ARCHITECTURES}


def test_supported_list_matches_the_tiny_models():
    assert set(SUPPORTED_ARCHITECTURES) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_counts(models, arch):
    model = models[arch]
    g = attention_geometry(model)
    kv = KV_HEADS if arch in GQA else HEADS
    assert (g.architecture, g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim, g.hidden_size) == (
        arch, LAYERS, HEADS, kv, HEAD_DIM, HIDDEN)
    assert g.group_size == HEADS // kv
    assert g.total_heads == LAYERS * HEADS
    pairs = list(g.heads())
    assert pairs == [(layer, head) for layer in range(LAYERS) for head in range(HEADS)]
    assert [g.global_head(*p) for p in pairs] == list(range(g.total_heads))
    assert [g.layer_head(i) for i in range(g.total_heads)] == pairs
    assert [g.kv_head(h) for h in range(HEADS)] == [h // (HEADS // kv) for h in range(HEADS)]
    assert not g.generic
    # the config alone gives the same geometry
    assert attention_geometry(model.config) == g


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_projection_shapes_and_names(models, arch):
    model, g = models[arch], attention_geometry(models[arch])
    kv = g.num_kv_heads
    for layer in range(LAYERS):
        for kind, ref in g.projections(layer).items():
            w = ref.weight(model)
            assert w is dict(model.named_parameters())[ref.param_name]
            heads = kv if kind in "kv" else HEADS
            assert ref.num_heads == heads
            assert ref.per_head(w).shape == (heads, HEAD_DIM, HIDDEN)
            expected = (HEAD_DIM, w.shape[1]) if ref.axis == 0 else (w.shape[0], HEAD_DIM)
            assert ref.head_weight(model, heads - 1).shape == expected
    if g.layout == "separate":
        assert g.projection(1, "q").module_name == "model.layers.1.self_attn.q_proj"
        assert tuple(g.projection(0, "k").weight(model).shape) == (kv * HEAD_DIM, HIDDEN)
        assert tuple(g.projection(0, "o").weight(model).shape) == (HIDDEN, HEADS * HEAD_DIM)
    elif arch == "gpt2":
        assert g.projection(1, "v").module_name == "transformer.h.1.attn.c_attn"
        assert tuple(g.projection(0, "q").weight(model).shape) == (HIDDEN, 3 * HIDDEN)  # Conv1D: (in, out)
        assert g.head_rows("k", 1) == slice(HIDDEN + HEAD_DIM, HIDDEN + 2 * HEAD_DIM)  # columns of c_attn
        assert g.head_rows("o", 1) == slice(HEAD_DIM, 2 * HEAD_DIM)  # rows of c_proj
    else:
        assert g.projection(1, "q").module_name == "gpt_neox.layers.1.attention.query_key_value"
        assert tuple(g.projection(0, "q").weight(model).shape) == (3 * HIDDEN, HIDDEN)
        # interleaved (H, 3, d): head 1's q, k, v are rows 48..63, 64..79, 80..95
        assert [g.head_rows(kind, 1) for kind in "qkv"] == [
            slice(3 * HEAD_DIM + i * HEAD_DIM, 3 * HEAD_DIM + (i + 1) * HEAD_DIM) for i in range(3)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_slices_partition_each_weight(models, arch):
    """Every row/column of every q/k/v/o weight belongs to exactly one (projection, head); refilling
    an empty tensor from the per-head views reproduces the weight (and the per-head biases the bias)."""
    model, g = models[arch], attention_geometry(models[arch])
    for layer in range(LAYERS):
        by_module: dict[str, list] = {}
        for ref in g.projections(layer).values():
            by_module.setdefault(ref.param_name, []).append(ref)
        for name, refs in by_module.items():
            w = refs[0].weight(model)
            axis = refs[0].axis
            assert all(r.axis == axis for r in refs)
            idx = torch.cat([r.indices() for r in refs])
            assert torch.equal(idx.sort().values, torch.arange(w.shape[axis])), name
            rebuilt = torch.full_like(w, float("nan"))
            for ref in refs:
                for h in range(ref.num_heads):
                    rebuilt[ref.head_index(h)] = w[ref.head_index(h)]
                    block = ref.per_head(w)[h]  # (d, other), canonical orientation
                    assert torch.equal(block, w[ref.head_index(h)] if axis == 0 else w[ref.head_index(h)].T)
            assert torch.equal(rebuilt, w), name
            bias = refs[0].bias(model)
            if bias is not None and refs[0].heads_on_output:
                rebuilt_bias = torch.full_like(bias, float("nan"))
                for ref in refs:
                    rebuilt_bias[ref.indices()] = ref.per_head_bias(bias).reshape(-1)
                assert torch.equal(rebuilt_bias, bias)
    # separate layouts: concatenating the head slices in order is the matrix itself
    if g.layout == "separate":
        ref = g.projection(0, "k")
        w = ref.weight(model)
        assert torch.equal(torch.cat([w[s] for s in g.head_slices(0)["k"]], dim=0), w)
        ref = g.projection(0, "o")
        w = ref.weight(model)
        assert torch.equal(torch.cat([w[:, s] for s in g.head_slices(0)["o"]], dim=1), w)


def _head_outputs(model, g: AttentionGeometry, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The per-head attention outputs of ``layer`` as the o projection sees them: ``(batch, seq, H, d)``."""
    seen = {}
    module = model.get_submodule(g.projection(layer, "o").module_name)
    handle = module.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return seen["x"].reshape(*seen["x"].shape[:2], g.num_heads, g.head_dim)


def _changed_heads(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    diff = (after - before).abs().amax(dim=(0, 1, 3))
    changed = {h for h, d in enumerate(diff.tolist()) if d > 1e-4}
    assert all(d < 1e-6 for h, d in enumerate(diff.tolist()) if h not in changed), diff
    return changed


def _zeroed(ref, model, head: int):
    """Context: zero head ``head``'s slice of ``ref``'s weight (and bias, when per head), restore after."""

    class _Ctx:
        def __enter__(self):
            self.w, self.b = ref.weight(model), ref.bias(model)
            self.saved_w = self.w.detach().clone()
            self.saved_b = self.b.detach().clone() if self.b is not None else None
            with torch.no_grad():
                self.w[ref.head_index(head)] = 0
                if self.b is not None and ref.heads_on_output:
                    self.b[ref.head_slice(head)] = 0

        def __exit__(self, *exc):
            with torch.no_grad():
                self.w.copy_(self.saved_w)
                if self.b is not None:
                    self.b.copy_(self.saved_b)

    return _Ctx()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_zeroing_a_head_slice_changes_only_that_head(models, arch):
    """q slice of head h -> only head h's output moves; k/v slice of kv head g -> only the query heads
    of group g move. This is what pins the NeoX interleaving and the GPT-2 column blocks."""
    model, g = models[arch], attention_geometry(models[arch])
    ids = sample_ids()
    for layer in range(LAYERS):
        base = _head_outputs(model, g, layer, ids)
        for kind in "qkv":
            ref = g.projection(layer, kind)
            for head in range(ref.num_heads):
                with _zeroed(ref, model, head):
                    after = _head_outputs(model, g, layer, ids)
                expected = {head} if kind == "q" else {h for h in range(g.num_heads) if g.kv_head(h) == head}
                assert _changed_heads(base, after) == expected, (layer, kind, head)
        assert torch.equal(_head_outputs(model, g, layer, ids), base)  # restored


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_o_slice_of_a_head_reads_that_heads_output(models, arch):
    """Zeroing head h's slice of o (columns for Linear, rows for Conv1D) equals zeroing head h's
    output right before o."""
    model, g = models[arch], attention_geometry(models[arch])
    ids, layer, head = sample_ids(), LAYERS - 1, 2
    ref = g.projection(layer, "o")
    with torch.no_grad(), _zeroed(ref, model, head):
        by_weight = model(ids).logits

    def drop_head(module, args):
        x = args[0].clone()
        x.view(*x.shape[:2], g.num_heads, g.head_dim)[:, :, head] = 0
        return (x, *args[1:])

    handle = model.get_submodule(ref.module_name).register_forward_pre_hook(drop_head)
    try:
        with torch.no_grad():
            by_input = model(ids).logits
    finally:
        handle.remove()
    with torch.no_grad():
        plain = model(ids).logits
    torch.testing.assert_close(by_weight, by_input, atol=1e-5, rtol=1e-5)
    assert (plain - by_input).abs().max() > 1e-4


def test_moe_facts(models):
    mixtral, llama4 = attention_geometry(models["mixtral"]), attention_geometry(models["llama4_text"])
    assert mixtral.is_moe and mixtral.num_experts == EXPERTS and mixtral.moe_layers == tuple(range(LAYERS))
    assert llama4.is_moe and llama4.num_experts == EXPERTS
    assert llama4.moe_layers == tuple(models["llama4_text"].config.moe_layers) == (1,)  # every 2nd layer
    for arch in ("llama", "qwen2", "mistral", "gpt2", "gpt_neox"):
        g = attention_geometry(models[arch])
        assert not g.is_moe and g.num_experts == 0 and g.moe_layers == ()
    # experts are fused (num_experts, ., .) tensors inside one module, not per-expert Linear modules
    experts = models["mixtral"].get_submodule(mixtral.mlp_modules(0)[1])
    assert experts.gate_up_proj.shape[0] == EXPERTS and experts.gate_up_proj.dim() == 3
    assert not any(isinstance(m, torch.nn.Linear) for m in experts.modules())
    assert llama4.mlp_modules(0) == [f"model.layers.0.feed_forward.{n}" for n in ("gate_proj", "up_proj", "down_proj")]
    l4_experts = models["llama4_text"].get_submodule(llama4.mlp_modules(1)[1])
    assert l4_experts.gate_up_proj.shape[0] == EXPERTS and l4_experts.gate_up_proj.dim() == 3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_mlp_modules_exist_and_cover_the_mlp(models, arch):
    model, g = models[arch], attention_geometry(models[arch])
    for layer in range(LAYERS):
        names = g.mlp_modules(layer)
        prefix = f"{g.layer_name(layer)}.{g.mlp_name}."
        owning = {n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if n.startswith(prefix)}
        assert set(names) == owning
        assert set(g.attention_modules(layer)) == {
            n.rsplit(".", 1)[0] for n, _ in model.named_parameters()
            if n.startswith(g.attention_module(layer) + ".") and n.endswith(("weight", "bias"))
        }


def test_default_lora_targets():
    cfg = {a: attention_geometry(tiny_config(a)) for a in ARCHITECTURES}
    for arch in ("llama", "qwen2", "mistral", "mixtral", "llama4_text"):
        assert default_lora_targets(cfg[arch]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert default_lora_targets(cfg["gpt2"]) == ["attn.c_attn", "attn.c_proj"]  # not mlp.c_proj
    assert default_lora_targets(cfg["gpt_neox"]) == ["query_key_value", "dense"]


def test_llama4_head_dim_comes_from_the_config():
    """Llama4TextConfig's head_dim defaults to 128 whatever the hidden size: never assume hidden // heads."""
    from transformers import Llama4TextConfig

    g = attention_geometry(Llama4TextConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2))
    assert g.head_dim == Llama4TextConfig().head_dim == 128


def test_geometry_checks_weight_shapes(models):
    import dataclasses

    g = attention_geometry(models["llama"])
    from forgetting.models.geometry import check_geometry

    with pytest.raises(ValueError, match="q_proj.weight has shape"):
        check_geometry(dataclasses.replace(g, head_dim=8), models["llama"])


def test_generic_rule_for_a_llama_shaped_architecture():
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=20, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, intermediate_size=96)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    g = attention_geometry(model)
    assert g.generic and g.architecture == "qwen3" and g.layout == "separate"
    assert (g.num_layers, g.num_heads, g.num_kv_heads, g.head_dim) == (2, 4, 2, 16)
    assert g.projection(1, "o").module_name == "model.layers.1.self_attn.o_proj"
    with pytest.raises(SpecError, match="no known attention geometry"):  # config alone: no modules to check
        attention_geometry(config)


def test_unknown_architecture_lists_what_is_supported():
    from transformers import AutoModelForCausalLM, Phi3Config

    config = Phi3Config(vocab_size=20, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=96, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager")  # fused qkv_proj
    with pytest.raises(ValueError) as info:
        attention_geometry(model)
    assert isinstance(info.value, SpecError) and info.value.field == "model"
    message = str(info.value)
    assert "'phi3'" in message and all(arch in message for arch in SUPPORTED_ARCHITECTURES)
    assert "self_attn.{q,k,v,o}_proj" in message  # the generic rule is spelled out


def test_bad_kind_and_ranges(models):
    g = attention_geometry(models["llama"])
    with pytest.raises(ValueError, match="kind"):
        g.projection(0, "qk")
    with pytest.raises(IndexError):
        g.projection(LAYERS, "q")
    with pytest.raises(IndexError):
        g.projection(0, "k").head_slice(KV_HEADS)  # k has only the key/value heads
    with pytest.raises(ValueError, match="not split by head"):
        g.projection(0, "o").per_head_bias(torch.zeros(HIDDEN))
    assert set(KINDS) == {"q", "k", "v", "o"}
