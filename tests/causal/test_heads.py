"""forgetting.causal.heads: restoring attention heads (q rows + o columns; k/v with ``kv=True``), plain and LoRA."""

from __future__ import annotations

import copy

import pytest
import torch

from forgetting.causal import head_patch, head_recovery, patched, recovery
from forgetting.causal.restore import patch_size
from forgetting.models.lora import apply_lora, effective_update
from tests._tiny_models import tiny_llama
from tests.causal.test_restore import loss_fn, perturbed

# the "test" Llama: 2 layers, hidden D = 16, H = 4 query heads, K = 2 key/value heads, head dim d = 4
D, H, d = 16, 4, 4
ALL = [(layer, h) for layer in range(2) for h in range(H)]


@pytest.fixture(scope="module")
def pair():
    before = tiny_llama("test", seed=0)
    return before, perturbed(before, lambda n: ".self_attn." in n, scale=0.3)


def test_a_head_is_its_q_rows_and_o_columns(pair):
    before, after = pair
    patch = head_patch(before, after, [(1, 2)])
    assert set(patch) == {"model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.o_proj.weight"}
    assert patch_size(patch) == 2 * d * D
    params, old = dict(after.named_parameters()), dict(before.named_parameters())
    with patched(after, patch):
        q, o = params["model.layers.1.self_attn.q_proj.weight"], params["model.layers.1.self_attn.o_proj.weight"]
        assert torch.equal(q[8:12], old["model.layers.1.self_attn.q_proj.weight"][8:12])
        assert torch.equal(o[:, 8:12], old["model.layers.1.self_attn.o_proj.weight"][:, 8:12])
        assert not torch.equal(q[4:8], old["model.layers.1.self_attn.q_proj.weight"][4:8])


def test_grouped_query_attention_kv_rows_are_restored_with_the_group_only_when_asked(pair):
    before, after = pair
    # heads 0 and 1 share key/value head 0 (group size H / K = 2): its k and v rows are counted once
    assert patch_size(head_patch(before, after, [(0, 0), (0, 1)])) == 2 * (2 * d * D)
    assert patch_size(head_patch(before, after, [(0, 0), (0, 1)], kv=True)) == 2 * (2 * d * D) + 2 * d * D
    assert patch_size(head_patch(before, after, [(0, 0), (0, 2)], kv=True)) == 2 * (2 * d * D) + 2 * (2 * d * D)


def test_every_head_is_the_q_and_o_matrices_and_with_kv_all_of_attention(pair):
    before, after = pair
    q_and_o = recovery(before, after, loss_fn, lambda n: "q_proj" in n or "o_proj" in n)
    assert head_recovery(before, after, loss_fn, ALL) == pytest.approx(q_and_o, abs=1e-12)
    assert head_recovery(before, after, loss_fn, ALL, kv=True) == pytest.approx(1.0, abs=1e-6)
    assert head_recovery(before, after, loss_fn, []) == 0.0
    with pytest.raises(IndexError):
        head_patch(before, after, [(0, H)])
    with pytest.raises(IndexError):
        head_patch(before, after, [(2, 0)])


def test_a_lora_head_is_restored_in_weight_space():
    before = apply_lora(tiny_llama("test", seed=5), r=2, alpha=4)
    after = perturbed(before, lambda n: ".lora_" in n, scale=0.8)
    a0 = {k: v.clone() for k, v in after.state_dict().items()}
    name = "model.layers.0.self_attn.q_proj.weight"
    w_before = before.get_base_model().get_submodule("model.layers.0.self_attn.q_proj").base_layer.weight
    effective_before = w_before + effective_update(before)[name]
    patch = head_patch(before, after, [(0, 3)])
    with patched(after, patch):
        effective = after.get_base_model().get_submodule("model.layers.0.self_attn.q_proj").base_layer.weight \
            + effective_update(after)[name]
        assert torch.allclose(effective[12:16], effective_before[12:16], atol=1e-6)  # head 3: the before's
        assert not torch.allclose(effective[:12], effective_before[:12], atol=1e-3)  # other heads: the after's
    assert all(torch.equal(v, a0[k]) for k, v in after.state_dict().items())
    assert head_recovery(before, after, loss_fn, ALL, kv=True) == pytest.approx(1.0, abs=1e-5)  # all of delta W
    assert patch_size(patch) == 2 * d * D  # entries of the effective weight (q rows + o columns)


def test_plain_and_lora_heads_agree_when_the_update_is_the_same():
    """Merged into plain weights, a LoRA update restores head by head to the same recovery."""
    base = tiny_llama("test", seed=7)
    lora_before = apply_lora(copy.deepcopy(base), r=2, alpha=4)
    lora_after = perturbed(lora_before, lambda n: ".lora_" in n, scale=0.8)
    plain_before = copy.deepcopy(lora_before).merge_and_unload()
    plain_after = copy.deepcopy(lora_after).merge_and_unload()
    heads = [(0, 1), (1, 3)]
    assert head_recovery(lora_before, lora_after, loss_fn, heads) == pytest.approx(
        head_recovery(plain_before, plain_after, loss_fn, heads), abs=1e-5)
