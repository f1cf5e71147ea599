"""Attention-head disruption: known answers for the building blocks, parity of hook ablation with weight
zeroing, self-comparison, padding invariance, weight slices, and calibration of severity against a null."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.evaluate import prepare_task
from forgetting.mechanisms import heads
from forgetting.models import load_model
from forgetting.models.geometry import attention_geometry
from forgetting.models.lora import apply_lora
from forgetting.tasks import make_task
from forgetting.tasks.encoding import EncodedExamples
from forgetting.train.loop import target_loss_sum


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_model("tiny")
    examples = prepare_task(make_task("recall_city", n_train=8, n_eval=12, seed=0), tok).eval
    return model, tok, examples


@pytest.fixture(scope="module")
def tiny_record(tiny):
    model, _, examples = tiny
    return heads.head_activity(model, examples, batch_size=64, ablation="mean")


# --- known answers ---------------------------------------------------------------------------------


def test_js_divergence_known_answers():
    p = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert torch.allclose(heads.js_divergence(p, p), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    one_hot_a, one_hot_b = torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0, 0.0])
    assert heads.js_divergence(one_hot_a, one_hot_b).item() == pytest.approx(1.0, abs=1e-12)
    # disjoint halves of a uniform row are also 1 bit apart; a half overlap is 1/2 bit:
    # JS(u{0,1}, u{1,2}) = 1/2 (1/2 log2(1/2 / 1/4) + 1/2 log2 1) * 2 = 1/2
    u01, u12 = torch.tensor([0.5, 0.5, 0.0]), torch.tensor([0.0, 0.5, 0.5])
    assert heads.js_divergence(u01, u12).item() == pytest.approx(0.5, abs=1e-12)


def test_js_divergence_masks_and_renormalises_keys():
    p = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.5, 0.3, 0.0, 0.2], dtype=torch.float64)  # weight on a masked key is dropped and the rest renormalised
    mask = torch.tensor([1, 1, 1, 0])
    expected = heads.js_divergence(torch.tensor([0.5, 0.5]), torch.tensor([0.625, 0.375]))  # 0.3/0.8, 0.5/0.8
    assert heads.js_divergence(p, q, mask).item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_entropy_of_uniform_row_is_log2_n(n):
    row = torch.zeros(20)
    row[:n] = 1.0 / n
    assert heads.attention_entropy(row).item() == pytest.approx(math.log2(n), abs=1e-12)
    masked = torch.ones(20) / 20  # uniform over 20, masked to the first n keys: uniform over n
    mask = torch.arange(20) < n
    assert heads.attention_entropy(masked, mask).item() == pytest.approx(math.log2(n), abs=1e-12)


# --- records and disruption ------------------------------------------------------------------------


def test_record_shapes_and_rows(tiny, tiny_record):
    model, _, examples = tiny
    g = attention_geometry(model)
    rec = tiny_record
    n_tokens = int(examples.attention_mask.sum())
    L, H, N, T = rec.attention.shape
    assert (L, H, N, T) == (g.num_layers, g.num_heads, n_tokens, examples.input_ids.shape[1])
    assert rec.outputs.shape == (L, H, N, g.head_dim)
    # every kept attention row sums to 1 over its visible keys and puts no weight beyond them
    assert torch.allclose(rec.attention.sum(-1), torch.ones(L, H, N), atol=1e-5)
    assert float(rec.attention[..., ~rec.key_mask].abs().max()) == 0.0
    assert int(rec.keep.sum()) == n_tokens - len(examples)  # position 0 of each example is dropped
    assert rec.ablation_loss.shape == (L, H) and rec.weights["k"].shape == (L, g.num_kv_heads, g.head_dim, g.hidden_size)
    w = rec.row_weights()
    assert float(w.sum()) == pytest.approx(1.0)


def test_model_against_itself_has_zero_disruption_and_nothing_is_severe(tiny_record):
    df = heads.head_disruption(tiny_record, tiny_record)
    v = df.set_index("metric")["value"]
    for metric in ("js_divergence", "entropy_change", "weight_change", "weight_change_q", "ablation_effect_change"):
        assert np.abs(v[metric].to_numpy()).max() == 0.0, metric
    assert np.allclose(v["output_similarity"], 1.0, atol=1e-12)
    assert np.allclose(v["output_cka"], 1.0, atol=1e-9)
    # against a null with spread, nothing of a zero disruption is severe; against a zero null neither
    rng = np.random.default_rng(0)
    null = df.assign(value=np.abs(rng.normal(size=len(df))) * 0.1 + np.where(df.metric.str.startswith("output"), 0.5, 0.0))
    for n in (null, df):
        severe = heads.severe_heads(df, n, alpha=0.05)
        assert not severe["severe"].any()


def test_padding_does_not_change_the_result(tiny):
    model, tok, examples = tiny
    extra = 5
    pad_id = tok.pad_token_id
    padded = EncodedExamples(
        torch.nn.functional.pad(examples.input_ids, (0, extra), value=pad_id),
        torch.nn.functional.pad(examples.attention_mask, (0, extra), value=0),
        torch.nn.functional.pad(examples.labels, (0, extra), value=-100),
        torch.nn.functional.pad(examples.answer_mask, (0, extra), value=False),
    )
    # a perturbed copy of the model gives a nonzero disruption to compare
    other, _ = load_model("tiny")
    with torch.no_grad():
        torch.manual_seed(0)
        for p in other.model.layers[1].self_attn.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kw = dict(batch_size=5, ablation=None)  # several batches; ablation passes trim padding (EncodedExamples.select)
    plain = heads.head_disruption(heads.head_activity(model, examples, **kw), heads.head_activity(other, examples, **kw))
    more = heads.head_disruption(heads.head_activity(model, padded, **kw), heads.head_activity(other, padded, **kw))
    assert plain["value"].abs().sum() > 0
    assert np.allclose(plain["value"], more["value"], atol=2e-5, rtol=1e-4)


def test_hook_ablation_equals_zeroing_the_o_proj_columns(tiny):
    model, _, examples = tiny
    g = attention_geometry(model)
    layer, head = 2, 5
    ids, mask = examples.input_ids[:4], examples.attention_mask[:4]
    with torch.no_grad(), heads.ablate_heads(model, [(layer, head)], mode="zero"):
        hooked = model(input_ids=ids, attention_mask=mask).logits
    zeroed, _ = load_model("tiny")
    ref = g.projection(layer, "o")
    with torch.no_grad():
        ref.weight(zeroed)[ref.head_index(head)] = 0.0
        expected = zeroed(input_ids=ids, attention_mask=mask).logits
        intact = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(hooked, expected, atol=1e-5)
    assert not torch.allclose(hooked, intact, atol=1e-3)


def test_batched_ablation_losses_equal_one_head_at_a_time(tiny, tiny_record):
    model, _, examples = tiny
    n_tokens = int((examples.labels[:, 1:] != -100).sum())
    for layer, head in [(0, 3), (3, 7)]:
        with torch.no_grad(), heads.ablate_heads(model, [(layer, head)], mode="mean", means=tiny_record.head_means):
            loss = float(target_loss_sum(model, examples, "cpu")) / n_tokens
        assert tiny_record.ablation_loss[layer, head].item() == pytest.approx(loss, rel=1e-5)
    # batch_size that packs several heads per pass gives the same numbers
    packed = heads.ablation_losses(model, examples, mode="mean", means=tiny_record.head_means, batch_size=48)
    assert torch.allclose(packed, tiny_record.ablation_loss, rtol=1e-5)


def test_weight_change_of_one_q_slice_is_local(tiny):
    model, _, _ = tiny
    g = attention_geometry(model)
    before = heads.head_weights(model, g)
    after = {k: v.clone() for k, v in before.items()}
    after["q"][1, 6] *= 1.5  # layer 1, query head 6: relative change 0.5 on its q slice
    wc = heads.weight_change(before, after, g)
    expected_total = 0.5 * before["q"][1, 6].norm() / torch.sqrt(
        sum(before[k][1, i].square().sum() for k, i in (("q", 6), ("k", 3), ("v", 3), ("o", 6)))
    )
    assert wc["weight_change_q"][1, 6].item() == pytest.approx(0.5, rel=1e-6)
    assert wc["weight_change"][1, 6].item() == pytest.approx(expected_total.item(), rel=1e-6)
    others = wc["weight_change"].clone()
    others[1, 6] = 0
    assert others.abs().max() == 0.0
    # a change to kv head 2 of layer 0 shows in both query heads that read it (GQA: 8 q heads, 4 kv heads)
    after = {k: v.clone() for k, v in before.items()}
    after["v"][0, 2] += 0.01
    changed = (heads.weight_change(before, after, g)["weight_change"] > 0).nonzero().tolist()
    assert changed == [[0, 4], [0, 5]]


def test_weight_change_through_the_model_matches_perturbation(tiny):
    model, _, _ = tiny
    other, _ = load_model("tiny")
    g = attention_geometry(model)
    ref = g.projection(2, "q")
    with torch.no_grad():
        ref.weight(other)[ref.head_index(4)] += 0.1
    wc = heads.weight_change(heads.head_weights(model), heads.head_weights(other), g)["weight_change_q"]
    assert wc[2, 4] > 0 and int((wc > 0).sum()) == 1


# --- severity against a null -----------------------------------------------------------------------


def _synthetic(rng, n_layers: int, n_heads: int, **extra) -> pd.DataFrame:
    layer = np.repeat(np.arange(n_layers), n_heads)
    head = np.tile(np.arange(n_heads), n_layers)
    frames = []
    for metric, draw in (
        ("js_divergence", lambda n: rng.beta(2, 20, n) * (1 + layer / n_layers)),  # layers differ in scale
        ("entropy_change", lambda n: rng.normal(0, 0.3, n)),
        ("output_similarity", lambda n: 1 - rng.gamma(2, 0.05, n)),
        ("ablation_effect_change", lambda n: rng.standard_t(5, n) * 0.01),
        ("weight_change", lambda n: rng.lognormal(-3, 0.3, n)),
    ):
        frames.append(pd.DataFrame({"layer": layer, "head": head, "kv_head": head // 2, "metric": metric,
                                    "value": draw(len(layer)), **extra}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("by", ["layer", "all"])
def test_fraction_flagged_is_about_alpha_when_real_is_drawn_from_the_null(by):
    rng = np.random.default_rng(1)
    alpha = 0.05
    null = pd.concat([_synthetic(rng, 4, 250, replicate=r) for r in range(4)], ignore_index=True)
    real = _synthetic(rng, 4, 250)
    severe = heads.severe_heads(real, null, alpha=alpha, by=by)
    rates = severe.groupby("metric")["severe"].mean()
    assert set(rates.index) == {"js_divergence", "entropy_change", "output_similarity", "ablation_effect_change",
                                "weight_change", "combined"}
    # 1000 heads: binomial sd sqrt(.05 * .95 / 1000) = 0.007
    assert np.all(np.abs(rates.to_numpy() - alpha) < 0.025), rates
    # and a real disruption shifted far beyond the null is flagged everywhere
    shifted = real.copy()
    js = shifted.metric == "js_divergence"
    shifted.loc[js, "value"] += 1.0
    assert heads.severe_heads(shifted, null, alpha=alpha, by=by).query("metric == 'js_divergence'")["severe"].all()


def test_severe_needs_to_clear_every_null_kind():
    rng = np.random.default_rng(2)
    small = _synthetic(rng, 2, 200)
    large = small.assign(value=np.where(small.metric == "js_divergence", small.value + 0.5, small.value))
    real = _synthetic(rng, 2, 200)
    real.loc[real.metric == "js_divergence", "value"] += 0.3  # beyond the small null, inside the large one
    one = heads.severe_heads(real, {"continue": small}, metrics=["js_divergence"], combine=())
    both = heads.severe_heads(real, {"continue": small, "reseed": large}, metrics=["js_divergence"], combine=())
    assert one["severe"].mean() > 0.9
    assert both["severe"].mean() < 0.1


def test_fractions_and_confidence_intervals_over_seeds():
    rows = []
    for seed, flags in enumerate(([1, 0, 0, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1])):
        rows.append(pd.DataFrame({"layer": [0] * 4 + [1] * 4, "head": list(range(4)) * 2, "kv_head": 0,
                                  "metric": "combined", "score": 0.0, "z": 0.0, "threshold": 0.0, "p_value": 1.0,
                                  "n_null": 10, "severe": np.array(flags, bool), "seed": seed}))
    fractions = heads.severe_fractions(pd.concat(rows, ignore_index=True))
    overall = fractions[fractions.layer == "all"].sort_values("seed")["fraction"].tolist()
    assert overall == [3 / 8, 2 / 8, 4 / 8]
    layer0 = fractions[fractions.layer == "0"].sort_values("seed")["fraction"].tolist()
    assert layer0 == [1 / 4, 2 / 4, 0.0]
    ci = heads.severe_fraction_ci(fractions).set_index("layer")
    assert ci.loc["all", "mean"] == pytest.approx(3 / 8)
    assert ci.loc["all", "ci_low"] <= 3 / 8 <= ci.loc["all", "ci_high"] and ci.loc["all", "n_runs"] == 3


def test_correlation_with_forgetting_reads_the_timeline():
    rng = np.random.default_rng(3)
    tables = []
    for step in range(1, 9):
        base = _synthetic(rng, 2, 8)
        loss_increase = 0.1 * step
        # layer 0's JS rises with the loss increase, layer 1's does not
        base.loc[(base.metric == "js_divergence") & (base.layer == 0), "value"] += loss_increase
        tables.append(base.assign(snapshot=f"s{step}", step=step, loss_increase=loss_increase))
    timeline = pd.concat(tables, ignore_index=True)
    res = heads.disruption_forgetting_correlation(timeline, metric="js_divergence", level="layer", n_boot=200,
                                                  n_perm=200).set_index("layer")
    assert res.loc[0, "r"] == pytest.approx(1.0)
    assert abs(res.loc[1, "r"]) < 0.9
    early = heads.disruption_forgetting_correlation(timeline, level="model", max_step=4, n_boot=50, n_perm=50)
    assert early["n"].item() == 4


# --- other architectures ---------------------------------------------------------------------------


def test_moe_and_lora_models_record_and_compare():
    moe, tok = load_model("tiny-moe")
    examples = prepare_task(make_task("recall_city", n_train=8, n_eval=6, seed=0), tok).eval
    rec = heads.head_activity(moe, examples, batch_size=16, ablation="zero")
    df = heads.head_disruption(rec, rec)
    assert df.query("metric == 'js_divergence'")["value"].abs().max() == 0.0
    assert len(df.query("metric == 'ablation_effect_change'")) == 32

    model, tok = load_model("tiny")
    torch.manual_seed(0)
    lora = apply_lora(model, r=4, alpha=8)
    before = heads.head_activity(lora, examples, batch_size=16, ablation="mean")
    with torch.no_grad():  # move one adapter: only layer 1's q changes, by delta W = scaling * B A
        for name, p in lora.named_parameters():
            if "layers.1.self_attn.q_proj.lora_B" in name:
                p.add_(0.05)
    after = heads.head_activity(lora, examples, batch_size=16, ablation="mean")
    df = heads.head_disruption(before, after).set_index(["metric", "layer"])
    wq = df.loc["weight_change_q"]["value"]
    assert (wq.loc[1] > 0).all() and wq.drop(index=1).abs().max() == 0.0
    assert df.loc["weight_change_o"]["value"].abs().max() == 0.0
    assert df.loc["js_divergence"].loc[1]["value"].max() > 0  # layer 1's patterns moved
    assert df.loc["js_divergence"].loc[0]["value"].abs().max() == 0.0  # layer 0 comes before the change


# --- nulls and the analysis of a run (forgetting.nulls, forgetting.analysis.heads) ----------------------


def test_null_snapshots_and_analysis_of_a_run(tmp_path):
    # run-level code that reads snapshots of a run; imported here so that the pure measures above are
    # collected and run even when the run-level modules fail to import
    from forgetting.analysis.heads import analyze_head_disruption
    from forgetting.errors import SpecError
    from forgetting.nulls import null_snapshots
    from forgetting.runs.snapshots import snapshot_meta
    from forgetting.spec import parse_spec
    from forgetting.train.sequence import run_experiment
    from tests.conftest import small_spec

    spec = parse_spec(small_spec(data={"n_train": 16, "n_eval": 8}, eval={"every": 0, "heldout_corpus": False}))
    out = run_experiment(spec, tmp_path / "run", progress=False)
    before, after = "stage01-recall_city", "stage02-update_city"
    with pytest.raises(SpecError, match="seeds"):
        null_snapshots(out, before=before, after=after, seeds=(spec.seed,))
    folders = null_snapshots(out, before=before, after=after, seeds=(7,), every=3, progress=False)
    assert sorted(folders) == ["continue-seed7", "continue-seed7-step000003", "reseed-seed7"]
    metas = {label: snapshot_meta(folder) for label, folder in folders.items()}
    assert metas["continue-seed7"]["start"] == before and metas["continue-seed7"]["steps"] == 6
    assert metas["reseed-seed7"]["start"] == "stage00-base" and metas["reseed-seed7"]["task"] == "recall_city"
    stamp = (folders["reseed-seed7"] / "weights.safetensors").stat().st_mtime_ns
    null_snapshots(out, before=before, after=after, seeds=(7,), progress=False)  # reused, not retrained
    assert (folders["reseed-seed7"] / "weights.safetensors").stat().st_mtime_ns == stamp

    result = analyze_head_disruption(out, before=before, after=after, null_seeds=(7,), ablation=None,
                                     progress=False)
    assert result.old_task == "recall_city"
    assert set(result.null_disruption["null"]) == {"continue", "reseed"}
    combined = result.severe.query("metric == 'combined'")
    assert len(combined) == 32 and combined["n_null"].min() == 32
    overall = result.fractions.query("layer == 'all'")["fraction"].item()
    assert overall == pytest.approx(combined["severe"].mean())
    # the continue null trained the old task itself: its loss went down from the before snapshot
    assert result.null_loss["continue-seed7"] < result.loss_before


# --- the chance rate: a null judged against the other nulls ----------------------------------------


def test_chance_rate_of_iid_nulls_is_at_most_about_alpha():
    rng = np.random.default_rng(3)
    alpha = 0.05
    nulls = pd.concat([_synthetic(rng, 4, 250, null=f"seed{s}") for s in range(5)], ignore_index=True)
    rates = heads.chance_rates(nulls, alpha)
    overall = rates[rates.layer == -1].set_index("metric")
    assert set(overall.index) == {"js_divergence", "entropy_change", "output_similarity", "ablation_effect_change",
                                  "weight_change", "combined"}
    assert (overall.n_null_snapshots == 5).all()
    # each of the 5 held-out nulls (1000 heads) against 4 others: the rule's own rate, <= alpha up to noise
    assert overall.null_rate.between(0.02, alpha + 0.02).all(), overall
    assert (overall.null_rate_max >= overall.null_rate).all()
    per_layer = rates[rates.layer >= 0]
    assert sorted(set(per_layer.layer)) == [0, 1, 2, 3] and per_layer.null_rate.between(0, 0.15).all()


def test_chance_rate_known_answer_two_nulls_that_differ():
    rng = np.random.default_rng(4)
    small = _synthetic(rng, 2, 50).assign(null="continue")
    large = small.assign(null="reseed", value=np.where(small.metric == "js_divergence", small.value + 0.5, small.value))
    rates = heads.chance_rates(pd.concat([small, large]), metrics=["js_divergence"], combine=())
    row = rates[rates.layer == -1].set_index("metric").loc["js_divergence"]
    # continue judged against reseed: nothing severe; reseed judged against continue: every head severe
    assert row.null_rate == pytest.approx(0.5) and row.null_rate_max == 1.0 and row.n_null_snapshots == 2
    assert heads.chance_rates(small, metrics=["js_divergence"], combine=()).empty  # one null: no rate
