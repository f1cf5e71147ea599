"""Gradient interference: known-answer tests for task gradients, per-head/matrix/layer alignment, conflict
rates, nulls, the first-order forgetting estimate, one backward pass per batch, GQA, MoE and LoRA."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import forgetting
from forgetting.evaluate import prepare_task
from forgetting.mechanisms import gradients as gr
from forgetting.models.geometry import attention_geometry, base_model
from forgetting.models.lora import apply_lora, effective_update, lora_layers
from forgetting.runs.snapshots import save_snapshot
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples
from forgetting.tasks.families import make_task


def _tasks(tokenizer, n: int = 16):
    return [prepare_task(make_task(name, n_train=n, n_eval=8), tokenizer).train for name in ("recall_city", "update_city")]


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = forgetting.load_model("tiny")
    old, new = _tasks(tokenizer)
    g_old = gr.task_gradients(model, old, batch_size=8)
    g_new = gr.task_gradients(model, new, batch_size=8)
    return SimpleNamespace(model=model, tokenizer=tokenizer, old=old, new=new, g_old=g_old, g_new=g_new,
                           alignment=gr.gradient_alignment(g_old, g_new, model=model))


class _CallCounter:
    """Counts forward and backward passes through ``lm_head`` (every pass of the model goes through it)."""

    def __init__(self, model):
        head = base_model(model).lm_head
        self.forward = self.backward = 0
        self._handles = [
            head.register_forward_hook(lambda *_: self._add("forward")),
            head.register_full_backward_pre_hook(lambda *_: self._add("backward")),
        ]

    def _add(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)

    def close(self) -> None:
        for h in self._handles:
            h.remove()


# --- a toy linear model: closed-form gradient ------------------------------------------------------


class _Toy(nn.Module):
    """logits_t = W onehot(x_t) + b: the gradient of the mean target-token CE has a closed form."""

    def __init__(self, vocab: int):
        super().__init__()
        self.lm = nn.Linear(vocab, vocab)
        self.vocab = vocab

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.lm(nn.functional.one_hot(input_ids, self.vocab).float()))


def _toy_examples(vocab: int) -> EncodedExamples:
    g = torch.Generator().manual_seed(1)
    n, width = 5, 7
    ids = torch.randint(0, vocab, (n, width), generator=g)
    mask = torch.zeros(n, width, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX)
    for i, (length, start) in enumerate([(7, 3), (5, 2), (6, 4), (4, 1), (7, 5)]):  # unequal target counts
        mask[i, :length] = 1
        labels[i, start:length] = ids[i, start:length]
    return EncodedExamples(ids, mask, labels, labels != IGNORE_INDEX)


def test_toy_linear_model_gradient_matches_closed_form():
    vocab = 6
    torch.manual_seed(0)
    model, ex = _Toy(vocab), _toy_examples(vocab)
    W, b = model.lm.weight.detach().double().numpy(), model.lm.bias.detach().double().numpy()
    dW, db, n_tokens = np.zeros_like(W), np.zeros_like(b), 0
    for i in range(len(ex)):  # dL/dlogits_t = (softmax(z_t) - e_{y_t}) / |T| at positions t predicting a target
        for t in range(ex.input_ids.shape[1] - 1):
            y = int(ex.labels[i, t + 1])
            if y == IGNORE_INDEX:
                continue
            x = int(ex.input_ids[i, t])
            z = W[:, x] + b
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            p[y] -= 1
            dW[:, x] += p
            db += p
            n_tokens += 1
    for batch_size in (2, 5):  # the batch split must not change the mean-over-all-tokens gradient
        g = gr.task_gradients(model, ex, batch_size=batch_size)
        np.testing.assert_allclose(g["lm.weight"].double().numpy(), dW / n_tokens, atol=1e-7)
        np.testing.assert_allclose(g["lm.bias"].double().numpy(), db / n_tokens, atol=1e-7)
    g2 = gr.task_gradients(model, ex, batch_size=2, max_examples=2, params=["lm.bias"])
    assert list(g2) == ["lm.bias"]
    table = gr.gradient_alignment(g, g)  # no geometry: matrix rows and aggregates, no heads
    assert set(table.unit) == {"matrix", "model"} and np.allclose(table.cosine, 1.0)


# --- per-head slices, GQA, self-alignment ------------------------------------------------------------


def test_per_head_slices_partition_each_matrix(tiny):
    df = tiny.alignment
    heads, matrices = df[df.unit == "head"], df[df.unit == "matrix"].set_index("name")
    assert len(heads) > 0
    for (name, kind), rows in heads.groupby(["name", "kind"]):
        m = matrices.loc[name]
        assert m.kind == kind
        assert math.isclose((rows.norm_a**2).sum(), m.norm_a**2, rel_tol=1e-12)
        assert math.isclose((rows.norm_b**2).sum(), m.norm_b**2, rel_tol=1e-12)
        assert math.isclose(rows["dot"].sum(), m["dot"], rel_tol=1e-9, abs_tol=1e-15)
        assert rows.numel.sum() == m.numel == tiny.g_old[name].numel()


def test_grouped_query_heads_are_indexed_by_kv_head(tiny):
    geometry = attention_geometry(tiny.model)
    assert (geometry.num_heads, geometry.num_kv_heads) == (8, 4)
    heads = tiny.alignment[tiny.alignment.unit == "head"]
    counts = heads.groupby(["layer", "kind", "head_type"]).size()
    for layer in range(4):
        assert counts[(layer, "q", "query")] == 8 and counts[(layer, "o", "query")] == 8
        assert counts[(layer, "k", "kv")] == 4 and counts[(layer, "v", "kv")] == 4
    assert sorted(heads[heads.kind == "k"]["head"].unique()) == [0, 1, 2, 3]
    assert (heads.numel == 16 * 128).all()


def test_cosine_with_itself_is_one_and_with_its_negative_minus_one(tiny):
    same = gr.gradient_alignment(tiny.g_old, tiny.g_old, model=tiny.model)
    opposite = gr.gradient_alignment(tiny.g_old, {n: -t for n, t in tiny.g_old.items()}, model=tiny.model)
    for table, expected in ((same, 1.0), (opposite, -1.0)):
        defined = table.cosine.notna()
        assert defined.mean() > 0.99  # only units the loss does not reach have zero norm
        assert set(table[defined].unit) == set(gr.UNITS) - {"expert"}
        np.testing.assert_allclose(table.cosine[defined], expected, atol=1e-12)
    assert gr.conflict_rate(opposite, unit="head").conflict_rate.item() == 1.0
    assert gr.conflict_rate(same, unit="matrix").conflict_rate.item() == 0.0


def test_units_are_classified_and_aggregates_add_up(tiny):
    df = tiny.alignment
    assert list(df.columns) == list(gr.ALIGNMENT_COLUMNS)
    matrices = df[df.unit == "matrix"]
    assert len(matrices) == len(list(tiny.model.parameters()))
    kinds = dict(zip(matrices.name, matrices.kind))
    assert kinds["model.embed_tokens.weight"] == "embed" and kinds["lm_head.weight"] == "lm_head"
    assert kinds["model.layers.2.self_attn.k_proj.weight"] == "k"
    assert kinds["model.layers.2.mlp.down_proj.weight"] == "down"
    assert kinds["model.layers.2.input_layernorm.weight"] == "norm" and kinds["model.norm.weight"] == "norm"
    assert matrices[matrices.name == "model.embed_tokens.weight"].layer.isna().all()
    whole = df[(df.unit == "model") & (df.group == "all")].iloc[0]
    assert math.isclose(whole["dot"], matrices["dot"].sum(), rel_tol=1e-12)
    assert math.isclose(whole.norm_a, math.sqrt((matrices.norm_a**2).sum()), rel_tol=1e-12)
    flat = lambda g: torch.cat([t.double().reshape(-1) for t in g.values()])  # noqa: E731
    a, b = flat(tiny.g_old), flat(tiny.g_new)
    assert math.isclose(whole.cosine, float(a @ b / (a.norm() * b.norm())), rel_tol=1e-9)
    layer2 = df[(df.unit == "layer") & (df.layer == 2)].set_index("group")
    in_layer2 = matrices[matrices.layer == 2]
    assert set(layer2.index) == {"attention", "mlp", "norm", "all"}
    assert math.isclose(layer2.loc["attention", "dot"], in_layer2[in_layer2.group == "attention"]["dot"].sum(), rel_tol=1e-12)
    assert math.isclose(layer2.loc["all", "dot"], in_layer2["dot"].sum(), rel_tol=1e-12)


def test_mismatched_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match="no tensor name in common"):
        gr.gradient_alignment({"x": torch.ones(2)}, {"y": torch.ones(2)})
    with pytest.raises(ValueError, match="shape"):
        gr.gradient_alignment({"x": torch.ones(2)}, {"x": torch.ones(3)})
    with pytest.raises(ValueError, match="batch_size"):
        gr.task_gradients(tiny.model, tiny.old, batch_size=0)
    with pytest.raises(ValueError, match="unit"):
        gr.conflict_rate(tiny.alignment, unit="heads")


# --- one backward pass per batch ---------------------------------------------------------------------


def test_per_head_alignment_costs_one_backward_per_task_and_batch(tiny):
    counter = _CallCounter(tiny.model)
    try:
        table = gr.task_alignment(tiny.model, tiny.old, tiny.new, batch_size=5, max_examples=12)  # 3 batches each
        assert (counter.forward, counter.backward) == (6, 6)
        gr.gradient_alignment(tiny.g_old, tiny.g_new, model=tiny.model)
        assert (counter.forward, counter.backward) == (6, 6)  # slicing heads costs no pass
    finally:
        counter.close()
    assert (table.unit == "head").sum() == 96
    assert all(p.grad is None for p in tiny.model.parameters())  # .grad is left alone
    assert not tiny.model.training


def test_gradient_does_not_depend_on_the_batch_split(tiny):
    g4 = gr.task_gradients(tiny.model, tiny.old, batch_size=4)
    for name, t in tiny.g_old.items():
        torch.testing.assert_close(g4[name], t, rtol=1e-4, atol=1e-7)
    attention = gr.task_gradients(tiny.model, tiny.old, batch_size=16, params="attention_qkvo")
    assert len(attention) == 16 and all("self_attn" in n for n in attention)


# --- conflict rates and nulls --------------------------------------------------------------------


def test_conflict_rate_counts_negative_cosines_and_steps():
    df = pd.DataFrame({
        "unit": ["head"] * 4 + ["matrix"], "name": ["w"] * 5, "layer": [0, 0, 1, 1, 0], "group": "attention",
        "kind": "q", "part": "weight", "head": [0, 1, 0, 1, None], "head_type": "query",
        "cosine": [-0.2, 0.3, -0.1, float("nan"), 0.5],
    })
    overall = gr.conflict_rate(df, unit="head")
    assert overall.n_units.item() == 3 and overall.n_conflict.item() == 2
    by_layer = gr.conflict_rate(df, unit="head", by=["layer"]).set_index("layer")
    assert by_layer.conflict_rate.tolist() == [0.5, 1.0]
    steps = pd.concat([df.assign(step=0), df.assign(step=5, cosine=[0.1, -0.3, -0.4, 0.2, 0.5])])
    per_head = gr.step_conflict_rate(steps, unit="head").set_index(["layer", "head"])
    assert per_head.loc[(0, 0)].conflict_rate == 0.5 and per_head.loc[(1, 0)].conflict_rate == 1.0
    assert per_head.loc[(1, 1)].n_steps == 1 and per_head.loc[(1, 1)].conflict_rate == 0.0


def test_split_half_null_is_seeded_and_compares_with_old_vs_new(tiny):
    null = gr.split_half_null(tiny.model, tiny.old, batch_size=8, n_splits=2, seed=3, heads=False)
    again = gr.split_half_null(tiny.model, tiny.old, batch_size=8, n_splits=1, seed=3, heads=False)
    assert sorted(null.split.unique()) == [0, 1]
    np.testing.assert_allclose(again.cosine, null[null.split == 0].cosine.to_numpy(), rtol=1e-6)
    assert null.cosine.dropna().between(-1, 1).all()
    assert not np.allclose(null[null.split == 0].cosine, null[null.split == 1].cosine)
    compared = gr.compare_with_null(tiny.alignment, null)
    assert len(compared) == len(tiny.alignment)
    row = compared[(compared.unit == "model") & (compared.group == "all")].iloc[0]
    c = null[(null.unit == "model") & (null.group == "all")].cosine
    assert row.n_splits == 2 and math.isclose(row.null_cosine, c.mean())
    if row.null_cosine > 0:
        assert math.isclose(row.reliability, 2 * c.mean() / (1 + c.mean()))
        assert math.isclose(row.corrected_cosine, row.cosine / math.sqrt(row.reliability))
    assert compared[compared.unit == "head"].null_cosine.isna().all()  # the null had no head rows


def test_update_alignment_uses_the_descent_direction(tiny):
    delta = {n: torch.randn_like(t) for n, t in tiny.g_new.items()}
    upd = gr.update_alignment(delta, tiny.g_new, model=tiny.model, heads=False)
    raw = gr.gradient_alignment(delta, tiny.g_new, model=tiny.model, heads=False)
    np.testing.assert_allclose(upd.cosine, -raw.cosine, atol=1e-12)
    whole = upd[(upd.unit == "model") & (upd.group == "all")]["dot"].item()
    assert math.isclose(whole, -gr.first_order_change(tiny.g_new, delta), rel_tol=1e-9)


# --- first-order forgetting estimate ------------------------------------------------------------------


def test_first_order_estimate_matches_a_small_step(tiny, tmp_path):
    model = tiny.model
    save_snapshot(model, tmp_path / "a", {"step": 0})
    lr = 5e-3 / gr.first_order_change(tiny.g_old, tiny.g_new)  # predicted change of the old loss: -0.005
    assert lr > 0
    with torch.no_grad():  # one small gradient-descent step on the new task
        originals = {n: p.detach().clone() for n, p in model.named_parameters()}
        for n, p in model.named_parameters():
            p.add_(tiny.g_new[n], alpha=-lr)
    save_snapshot(model, tmp_path / "b", {"step": 1})
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(originals[n])
    row = gr.observed_vs_predicted(model, tmp_path / "a", [tmp_path / "b"], tiny.old, batch_size=8).iloc[0]
    assert row.step_b == 1 and abs(row.observed) > 1e-3
    assert abs(row.relative_error) < 0.03, row.to_dict()
    assert math.isclose(row.predicted, -lr * gr.first_order_change(tiny.g_old, tiny.g_new), rel_tol=1e-3)
    assert math.isnan(row.predicted_effective)
    for n, p in model.named_parameters():  # the model's weights are back
        assert torch.equal(p, originals[n])


# --- mixture of experts and LoRA -----------------------------------------------------------------------


def test_mixture_of_experts_fused_tensors_are_matrices_and_experts():
    model, tokenizer = forgetting.load_model("tiny-moe")
    old, new = _tasks(tokenizer, n=8)
    counter = _CallCounter(model)
    try:
        df = gr.task_alignment(model, old, new, batch_size=8)
        assert counter.backward == 2
    finally:
        counter.close()
    matrices = df[df.unit == "matrix"]
    fused = matrices[matrices.kind == "experts"]
    assert len(fused) == 8 and set(fused.part) == {"gate_up_proj", "down_proj"}
    assert set(matrices[matrices.name.str.contains("router")].kind) == {"router"}
    experts = df[df.unit == "expert"]
    assert len(experts) == 8 * 4 and set(experts.head_type) == {"expert"}
    for name, rows in experts.groupby("name"):
        m = fused.set_index("name").loc[name]
        assert math.isclose((rows.norm_a**2).sum(), m.norm_a**2, rel_tol=1e-12)
    assert (df.unit == "head").sum() == 96


def test_lora_alignment_on_adapters_and_effective_update():
    base, tokenizer = forgetting.load_model("tiny")
    torch.manual_seed(0)
    model = apply_lora(base, r=4, alpha=8)
    with torch.no_grad():  # LoRA starts with B = 0 (then dL/dA = 0); give B a value
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    old, new = _tasks(tokenizer, n=8)
    counter = _CallCounter(model)
    try:
        adapter, effective = gr.lora_task_gradients(model, old, batch_size=8)
        assert counter.backward == 1
    finally:
        counter.close()
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)  # refrozen
    assert set(effective) == set(effective_update(model))
    name = "model.layers.1.self_attn.q_proj.weight"
    layer = lora_layers(model)[name]
    A, B, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
    G = effective[name]
    prefix = "base_model.model.model.layers.1.self_attn.q_proj"
    torch.testing.assert_close(adapter[f"{prefix}.lora_B.default.weight"], s * G @ A.detach().T, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(adapter[f"{prefix}.lora_A.default.weight"], s * B.detach().T @ G, rtol=1e-4, atol=1e-8)

    _, effective_new = gr.lora_task_gradients(model, new, batch_size=8)
    adapter_new = gr.task_gradients(model, new, batch_size=8)
    in_adapter = gr.gradient_alignment(adapter, adapter_new, model=model)
    heads = in_adapter[in_adapter.unit == "head"]
    assert set(zip(heads.kind, heads.part)) == {("q", "lora_B"), ("k", "lora_B"), ("v", "lora_B"), ("o", "lora_A")}
    assert len(heads) == 96
    for name_, rows in heads.groupby("name"):
        m = in_adapter[(in_adapter.unit == "matrix") & (in_adapter.name == name_)].iloc[0]
        assert math.isclose((rows.norm_a**2).sum(), m.norm_a**2, rel_tol=1e-12)
    in_weights = gr.update_alignment(effective_update(model), effective_new, model=model)
    w_heads = in_weights[in_weights.unit == "head"]
    assert len(w_heads) == 96 and set(w_heads.part) == {"weight"} and w_heads.cosine.notna().all()


def test_lora_observed_vs_predicted_has_both_estimates(tmp_path):
    base, tokenizer = forgetting.load_model("tiny")
    torch.manual_seed(0)
    model = apply_lora(base, r=4, alpha=8)
    old, new = _tasks(tokenizer, n=8)
    save_snapshot(model, tmp_path / "a", {"step": 0})
    adapter_new = gr.task_gradients(model, new, batch_size=8)
    with torch.no_grad():  # a descent step on B (dL/dA = 0 while B = 0) and a small random change of A
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(adapter_new[n], alpha=-5e-4)
            elif "lora_A" in n:
                p.add_(torch.randn_like(p), alpha=1e-3)
    save_snapshot(model, tmp_path / "b", {"step": 3})
    row = gr.observed_vs_predicted(model, tmp_path / "a", tmp_path / "b", old, batch_size=8).iloc[0]
    assert abs(row.observed) > 1e-3
    for predicted in (row.predicted, row.predicted_effective):  # adapter space and weight space
        assert abs(predicted - row.observed) < 0.05 * abs(row.observed), row.to_dict()


# --- along training of a new task (a run: forgetting.runs, forgetting.analysis.gradients) ------------------


def test_stage_alignment_along_training_every_k_steps(tmp_path):
    # run-level code; imported here so that the pure measures above are collected and run even when the
    # run-level modules fail to import
    from forgetting.analysis.gradients import stage_alignment
    from forgetting.runs import Run
    from forgetting.spec import parse_spec
    from forgetting.train.sequence import run_experiment
    from tests.conftest import small_spec

    spec = small_spec(snapshots={"every": 3}, eval={"every": 6, "batch_size": 64, "heldout_corpus": False})
    out = run_experiment(parse_spec(spec), tmp_path / "run", progress=False)
    folders = Run.open(out).stage_snapshots(2)
    assert [f.name for f in folders] == ["stage01-recall_city", "stage02-update_city-step000009", "stage02-update_city"]
    df = stage_alignment(out, 2, batch_size=8, max_examples=8, heads=True, progress=False)
    assert sorted(df.step.unique()) == [6, 9, 12]
    assert set(df.old_task) == {"recall_city"} and set(df.new_task) == {"update_city"}
    rates = gr.step_conflict_rate(df, unit="head")
    assert len(rates) == 96 and (rates.n_steps == 3).all()
    whole = gr.step_conflict_rate(df, unit="model")
    whole = whole[whole.group == "all"].iloc[0]
    cosines = df[(df.unit == "model") & (df.group == "all")].cosine
    assert whole.conflict_rate == (cosines < 0).mean()
    delta = gr.snapshot_delta(folders[0], folders[-1])
    assert len(delta) == len(df[(df.unit == "matrix") & (df.step == 6)])
    assert all(t.abs().sum() > 0 for t in delta.values())  # full fine-tuning moves every tensor
