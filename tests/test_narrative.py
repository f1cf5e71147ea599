"""The chapters' words never contradict the numbers they carry (:mod:`forgetting.book.narrative`).

Each chapter's narrative functions get synthetic tables shaped like the chapter's own (the columns
its code builds) and many perturbed versions of them: values scaled, signs flipped, rates moved
across 0.5 and across the rules' margins, intervals made to include or exclude 0, subsets emptied.
For every version the test recomputes each rule from the numbers and asserts the words say what the
rule says: "most ... conflict" only where most do, "within X %" never with X above the tolerance,
"none" never beside a list, a pair named as clear only if it is, and so on.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from forgetting import paths
from forgetting.book.narrative import drift as nd
from forgetting.book.narrative import gradients as ng
from forgetting.book.narrative import heads as nh
from forgetting.book.narrative import landscape as nl
from forgetting.book.narrative import scale as ns
from forgetting.ledger.prose import comparison_word, count_text, share_word

N_CASES = 150


def _rho(rng) -> SimpleNamespace:
    r = float(rng.uniform(-1, 1))
    low, high = sorted(rng.uniform(-1, 1, size=2))
    return SimpleNamespace(r=r, ci_low=float(low), ci_high=float(high), p_value=float(rng.uniform(0, 1)))


def _percentages(text: str, word: str) -> list[int]:
    return [int(x) for x in re.findall(rf"{word} (?:up to )?(\d+) %", text)]


def _all_text(words: dict[str, str]) -> str:
    return " ".join(words.values())


def _scale(words: dict[str, str]) -> dict[str, str]:
    """The scale words chapters 03 and 04 glue (the size of our model, the paper's; not the gap)."""
    return {k: v for k, v in words.items() if k in ("model_scale", "paper_scale", "n_blocks")}


def _no_placeholders(words: dict[str, str]) -> None:
    text = _all_text(words)
    assert "nan" not in text.split() and "None" not in text and "pair(s) none" not in text
    assert all(v.strip() not in ("none", "-", "n/a") for v in words.values())  # a list is never "none"


# ---------------------------------------------------------------- chapter 02


def _gradient_tables(rng):
    n_pairs = int(rng.integers(2, 7))
    pairs = pd.DataFrame({
        "pair": [f"stage {2 + i // 2}: t{i} vs n{i}" for i in range(n_pairs)],
        "stage": [2 + i // 2 for i in range(n_pairs)], "new_task": [f"n{i}" for i in range(n_pairs)],
        "old_task": [f"t{i}" for i in range(n_pairs)],
        "cosine_all": rng.uniform(-0.5, 0.5, n_pairs) * rng.choice([0.01, 1.0]),
        "cosine_attention": rng.uniform(-0.5, 0.5, n_pairs), "cosine_mlp": rng.uniform(-0.5, 0.5, n_pairs),
        "null_all": rng.uniform(-0.1, 0.9, n_pairs) * rng.choice([0.1, 1.0]),
    })
    n_layers = int(rng.integers(1, 5))
    rows = []
    for pair in pairs["pair"]:
        for layer in range(n_layers):
            rate = float(rng.choice([0.0, rng.uniform(0, 1), 1.0]))
            for head in range(8):
                for measure in (ng.OBSERVED, "split-half null"):
                    value = -abs(rng.normal()) if rng.uniform() < rate else abs(rng.normal())
                    rows.append({"pair": pair, "layer": layer, "head": head, "kind": "q", "measure": measure,
                                 "value": value})
    heads = pd.DataFrame(rows)
    observed = rng.uniform(0, 1, 3) if rng.uniform() < 0.7 else rng.choice([0.0, 0.3, 0.7, 1.0], 3)
    null = np.clip(observed + rng.choice([-1, 1], 3) * rng.uniform(0, 0.2, 3), 0, 1)
    conflicts = pd.DataFrame({"units": ["attention matrices", "MLP matrices", "attention heads"], "n": [96, 72, 384],
                              "observed": observed, "null": null, "excess": observed - null,
                              "mean_cosine": 0.0, "mean_null_cosine": 0.0})
    ts = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
    seg = []
    for pair in pairs["pair"]:
        slope = rng.normal() * 0.1
        for t in ts:
            observed_t = slope * t * (1 + rng.choice([0.0, 0.02, 0.5]) * t / 0.01 * rng.normal())
            seg.append({"pair": pair, "t": t, "predicted": slope * t * (1 + rng.choice([0, 0.05, 0.3, 3.0])
                                                                       * rng.normal()),
                        "observed": observed_t if rng.uniform() > 0.02 else 0.0})
    segment = pd.DataFrame(seg)
    whole = pd.DataFrame({"pair": pairs["pair"], "observed": rng.normal(size=n_pairs),
                          "predicted": rng.normal(size=n_pairs),
                          "cosine": rng.uniform(-0.3, 0.3, n_pairs) * rng.choice([0.1, 1.0])})
    return pairs, heads, conflicts, segment, whole


def _check_gradients(rng) -> list[dict[str, str]]:
    pairs, heads, conflicts, segment, whole = _gradient_tables(rng)
    words = ng.pair_words(pairs, heads)
    first = pairs.iloc[0]
    clause = words["first_null_clause"]
    assert ("hardly agree" in clause) == (first["null_all"] < ng.NOISY_NULL)
    assert ("points against it" in clause) == (first["cosine_all"] < 0)
    noisy = pairs[pairs["null_all"] < ng.NOISY_NULL]
    sentence = words["noisy_sentence"]
    if len(noisy):
        assert sentence.startswith("For ") and all(f"{p} (" in sentence for p in noisy["pair"])
        assert not any(p in sentence for p in pairs.loc[pairs["null_all"] >= ng.NOISY_NULL, "pair"])
    else:
        assert sentence.startswith("Every pair's whole-model null is at least")
    h = heads[(heads["pair"] == first["pair"]) & (heads["measure"] == ng.OBSERVED)]
    rates = h.groupby("layer")["value"].apply(lambda v: (v < 0).mean())
    layer = words["first_layer_sentence"]
    if rates.max() == 0:
        assert layer.startswith("No head")
    elif len(rates) > 1:
        assert ("not spread evenly" in layer) == (rates.max() - rates.min() > ng.UNEVEN)
        assert f"{100 * rates.max():.0f} %" in layer and f"{100 * rates.min():.0f} %" in layer

    cw = ng.conflict_words(conflicts, len(pairs))
    r = conflicts.set_index("units")
    a, m = r.loc["attention matrices", "observed"], r.loc["MLP matrices", "observed"]
    an, mn = r.loc["attention matrices", "null"], r.loc["MLP matrices", "null"]
    assert cw["attn_vs_mlp"] == ("more often than" if a - m > ng.MARGIN else "less often than" if a - m < -ng.MARGIN
                                 else "about as often as")
    assert cw["excess_verdict"] == comparison_word(a - an, m - mn, ng.MARGIN)
    assert ("disagrees more often in attention" in cw["null_sentence"]) == (an - mn > ng.MARGIN)
    assert ("higher raw rate" in cw["null_sentence"]) == (an - mn > ng.MARGIN and a - m > ng.MARGIN)
    assert ("A negative excess" in cw["null_sentence"]) == (min(a - an, m - mn) < 0)

    rho = _rho(rng)
    aw = ng.alignment_words(segment, whole, pairs, conflicts, rho)
    small = aw["small_t_sentence"]
    assert all(x <= 100 * ng.TOLERANCE for x in _percentages(small, "within") if "for every pair" in small)
    err = ng._errors(segment, 0.001)
    assert ("close to the observed change for every pair" in small) == bool((err <= ng.TOLERANCE).all())
    if "for every pair" in small:
        assert _percentages(small, "within")[0] <= 10
    else:
        assert count_text(int((err <= ng.TOLERANCE).sum()), len(err)) in small
    end_err = ng._errors(segment, 1.0)
    assert ("close to linear" in aw["linear_sentence"]) == bool((end_err <= ng.TOLERANCE).all())
    assert ("nearly orthogonal" in aw["linear_sentence"]) == bool(whole["cosine"].abs().max() <= ng.ORTHOGONAL)
    includes = rho.ci_low <= 0 <= rho.ci_high
    assert ("it is weak" in aw["rho_lead"]) == includes and aw["rho_verdict"] == ("includes 0" if includes else "excludes 0")
    assert aw["end_sign_agree"] == count_text(int((np.sign(whole["observed"]) == np.sign(whole["predicted"])).sum()),
                                              len(whole))
    meaning = aw["meaning_conflict"]
    assert f"{share_word(a)} of the attention matrices ({100 * a:.0f} %)" in meaning
    assert ("most matrices conflict" in meaning) == (min(a, m) >= 0.6)
    assert ("most matrices point the same way" in meaning) == (max(a, m) <= 0.4)
    if a - an <= ng.MARGIN and m - mn <= ng.MARGIN:
        assert "more often than the split-half null" not in meaning
    assert ("do not single out" in aw["meaning_attention"]) == ((a - an) - (m - mn) <= ng.MARGIN)
    assert ("not the size of the forgetting" in aw["meaning_alignment"]) == includes
    for w in (words, cw, aw):
        _no_placeholders(w)
    return [words, cw, aw]


@pytest.mark.parametrize("case", range(N_CASES))
def test_gradient_words_follow_their_rules(case):
    _check_gradients(np.random.default_rng(case))


# ---------------------------------------------------------------- chapter 03


def _drift_tables(rng):
    n = int(rng.integers(1, 7))
    n_layers = 3
    drop = rng.uniform(0, 0.6, n)
    cont = np.clip(drop + rng.normal(0, 0.1, n) * rng.choice([0.1, 1, 3]), 0, 1)
    reseed = np.clip(drop + rng.normal(0, 0.1, n) * rng.choice([0.1, 1, 3]), 0, 1)
    excess = drop - np.maximum(cont, reseed)
    clear = np.where(excess > 0, rng.integers(0, n_layers + 1, n), rng.integers(0, n_layers, n))
    summary = pd.DataFrame({"pair": [f"stage {2 + i}: t{i} while training n{i}" for i in range(n)],
                            "stage": range(2, 2 + n), "new_task": [f"n{i}" for i in range(n)],
                            "old_task": [f"t{i}" for i in range(n)], "drop": drop, "continue_drop": cont,
                            "reseed_drop": reseed, "excess": excess, "clear_layers": clear, "n_layers": n_layers})
    layers = range(5)
    by_layer = pd.DataFrame({"drop": rng.uniform(0, 0.5, 5), "null_drop": rng.uniform(0, 0.5, 5)}, index=layers)
    by_layer["excess"] = by_layer["drop"] - by_layer["null_drop"]
    ro = []
    for readout in ("mean", "last", "tokens"):
        for debiased in (False, True):
            for layer in layers:
                undefined = readout == "last" and layer == 0 and rng.uniform() < 0.5
                ro.append({"readout": readout, "debiased": debiased, "layer": layer,
                           "cka": np.nan if undefined else float(rng.uniform(0.3, 1)),
                           "note": "constant representation" if undefined else ""})
    readouts = pd.DataFrame(ro)
    per_head = pd.DataFrame([{"layer": lay, "head": h, "stage": s, "observed": rng.uniform(0.2, 1),
                              "continue null": rng.uniform(0.2, 1), "reseed null": rng.uniform(0.2, 1)}
                             for lay in range(4) for h in range(8) for s in (2, 3)])
    table = pd.DataFrame([{"source": nd.OBSERVED, "stage": s, "old_task": "t0", "layer": lay,
                           "cka": rng.uniform(0.2, 1)} for s in (2, 3) for lay in layers])
    return summary, by_layer, readouts, per_head, table


def _check_drift(rng) -> list[dict[str, str]]:
    summary, by_layer, readouts, per_head, table = _drift_tables(rng)
    middle = [1, 2, 3]
    w = nd.drift_words(summary, middle)
    n = len(summary)
    clear = summary[summary["clear_layers"] == summary["n_layers"]]
    absent = summary[summary["excess"] <= 0]
    if len(clear):
        assert all(p in w["clear_sentence"] for p in clear["pair"])
        assert not any(p in w["clear_sentence"] for p in summary.loc[~summary.index.isin(clear.index), "pair"])
    else:
        assert w["clear_sentence"].startswith("In no pair")
    if len(absent):
        assert all(p in w["unclear_sentence"] for p in absent["pair"])
        assert not any(p in w["unclear_sentence"] for p in summary.loc[summary["excess"] > 0, "pair"])
        assert "present in every pair" not in w["meaning_excess"]
        assert f"absent (no larger than a null's) for {'all ' if len(absent) == n > 1 else ''}" in w["meaning_excess"] \
            or (n == 1 and "it is absent" in w["meaning_excess"])
        if len(absent) < n:
            assert f"for {len(absent)} of {n} pairs" in w["meaning_excess"]
    else:
        assert w["unclear_sentence"].startswith("Every pair's mean drop exceeds")
        assert "present in every pair" in w["meaning_excess"] and "absent" not in w["meaning_excess"]
    assert "some" not in _all_text(w).split()
    in_range = int(summary["drop"].between(*nd.PAPER_DROP).sum())
    assert w["n_in_range"] == count_text(in_range, n)

    lw = nd.layer_words(by_layer, summary, middle)
    grows = by_layer["null_drop"].iloc[-1] - by_layer["null_drop"].iloc[1] > nd.DEPTH_MARGIN
    assert ("grow with depth too" in lw["null_trend"]) == grows
    assert ("more so in deeper layers" in lw["meaning_nulls"]) == grows
    share = max(0.0, min(1.0, summary[["continue_drop", "reseed_drop"]].max(axis=1).mean() / summary["drop"].mean()))
    assert lw["meaning_nulls"].startswith(f"Of that drop, {share_word(share)} (")
    peak = int(by_layer["excess"].idxmax())
    assert lw["deepest_excess_layer"] == str(peak)
    assert ("an intermediate layer" in lw["peak_sentence"]) == (peak in middle)

    rw = nd.readout_words(readouts, middle, 60, 64)
    mid = readouts[readouts["layer"].isin(middle)].groupby(["readout", "debiased"])["cka"].mean()
    biased, debiased = 1 - mid[("mean", False)], 1 - mid[("mean", True)]
    assert ("overstates the similarity" in rw["debias_clause"]) == (debiased - biased > nd.CKA_MARGIN)
    undefined = (readouts["note"] != "").any()
    assert rw["undefined_sentence"].startswith("CKA is undefined for") == undefined
    assert "none" not in rw["undefined_sentence"]
    drops = [1 - mid[k] for k in (("mean", False), ("mean", True), ("last", False), ("tokens", False))]
    drops = [d for d in drops if np.isfinite(d)]
    assert ("also depends on the readout" in rw["readout_sentence"]) == (max(drops) - min(drops) > nd.READOUT_SPREAD)

    hw = nd.head_drift_words(per_head, table, "t0")
    layer = per_head[per_head["stage"] == 2].groupby("layer")["observed"].mean()
    assert ("more in the upper layers" in hw["head_sentence"]) == (layer.iloc[0] - layer.iloc[-1] > nd.CKA_MARGIN)
    stream = table[table["stage"] == 2].set_index("layer")["cka"].reindex([1, 2, 3, 4]).mean()
    assert ("change more than the residual stream" in hw["head_sentence"]) == (stream - layer.mean() > nd.CKA_MARGIN)
    for words in (w, lw, rw, hw):
        _no_placeholders(words)
    return [w, lw, rw, hw, _scale(ns.scale_words(879_488, n_blocks=4))]


@pytest.mark.parametrize("case", range(N_CASES))
def test_drift_words_follow_their_rules(case):
    _check_drift(np.random.default_rng(1000 + case))


# ---------------------------------------------------------------- chapter 04


def _curvature(rng):
    rows = []
    for stage, olds in ((2, ["a"]), (3, ["a", "b"]), (4, ["a", "b", "c"])):
        for old in olds:
            loss, lmax = rng.uniform(0.1, 2), rng.uniform(10, 500)
            for snapshot, scale in (("before", 1.0), ("after", None)):
                f = rng.choice([0.5, 0.99, 1.0, 1.5, 3]) if scale is None else 1.0
                g = rng.choice([0.5, 1.0, 2.0]) if scale is None else 1.0
                rows.append({"stage": stage, "old_task": old, "snapshot": snapshot, "loss": loss * g,
                             "lambda_max": lmax * f, "lambda_max_per_loss": lmax * f / (loss * g), "seed": 0})
    return pd.DataFrame(rows)


def _check_landscape(rng) -> list[dict[str, str]]:
    curvature = _curvature(rng)
    cw = nl.curvature_words(curvature, "a", "b")
    first = curvature[(curvature.stage == 2)].set_index("snapshot")
    d_loss = first.loc["after", "loss"] - first.loc["before", "loss"]
    d_l = first.loc["after", "lambda_max"] - first.loc["before", "lambda_max"]
    d_r = first.loc["after", "lambda_max_per_loss"] - first.loc["before", "lambda_max_per_loss"]
    assert cw["loss_verb"] == ("raised" if d_loss > 0 else "lowered" if d_loss < 0 else "left unchanged")
    assert ("shows the pattern" in cw["first_lead"]) == (d_l > 0 and d_r < 0)
    word = lambda x: "sharper" if x > 0 else "flatter" if x < 0 else "neither"
    assert f"alone, the old minimum became {word(d_l)}" in cw["reading_sentence"]
    assert f"per unit of loss, {word(d_r)}" in cw["reading_sentence"]
    assert ("rose together with the loss" in cw["meaning_lambda"]) == (d_l > 0 and d_loss > 0)
    wide = curvature.set_index(["stage", "old_task", "snapshot"])["lambda_max"].unstack()
    up, down = int((wide["after"] > wide["before"]).sum()), int((wide["after"] < wide["before"]).sum())
    assert cw["n_lambda_up"] == str(up)
    assert ("fell in the others" in cw["meaning_lambda"]) == (down > 0 and up + down == len(wide))

    lmax_a, lmax_b = rng.uniform(10, 100, 2)
    lmin_a, lmin_b = (rng.choice([0.01, 0.08, 0.3, 0.7, 2.0]) * lmax * rng.choice([-1, -1, 1])
                      for lmax in (lmax_a, lmax_b))
    trace, se = rng.normal(0, 100), rng.uniform(1, 60)
    spectrum = pd.DataFrame({"lambda_max": [lmax_a, lmax_b], "lambda_min": [lmin_a, lmin_b], "trace": [100, trace],
                             "trace_stderr": [10, se]}, index=["after A", "after B"])
    sw = nl.spectrum_words(spectrum)
    rb, ra = max(0, -lmin_a) / lmax_a, max(0, -lmin_b) / lmax_b
    assert ("small next to the top one" in sw["before_clause"]) == (lmin_a < 0 and rb <= nl.SMALL)
    assert ("saddle-like" in sw["after_clause"]) == (ra > nl.SMALL)
    assert ("strong curvature of both signs" in sw["after_clause"]) == (ra >= nl.BOTH_SIGNS)
    assert ("no longer at a minimum" in sw["meaning_saddle"]) == (ra > nl.SMALL)
    assert sw["power_larger"] == ("the negative one" if -lmin_b > lmax_b else "the top one")
    assert ("within two standard errors" in sw["trace_note"]) == (abs(trace) < 2 * se)

    n_match = int(rng.integers(0, 5))
    ratios = rng.uniform(0.3, 1.8, n_match) * rng.choice([0.5, 1, 2])
    matched = pd.DataFrame({"ratio": ratios, "loss": rng.uniform(0.5, 1, n_match)})
    learn = pd.DataFrame({"loss": [0.3, 0.8, 1.5]})
    mw = nl.matched_words(matched, learn, "a")
    if n_match == 0:
        assert "cannot be compared" in mw["matched_sentence"] and "cannot be made" in mw["meaning_matched"]
        assert "flatter" not in mw["meaning_matched"] and "sharper" not in mw["meaning_matched"]
    else:
        med = float(np.median(ratios))
        assert (" is flatter than" in mw["meaning_matched"]) == (med < 1)
        assert (" is sharper than" in mw["meaning_matched"]) == (med > 1)
        assert ("kind of flattening" in mw["meaning_matched"]) == (med < 1)
        assert ("both sides of 1" in mw["meaning_matched"]) == (n_match > 1 and ratios.min() <= 1 <= ratios.max())

    alphas = np.linspace(-0.25, 1.25, 13)
    a_loss = 0.2 + rng.uniform(0, 2) * np.clip(alphas, 0, None) ** rng.uniform(0.5, 2)
    b_curve = rng.uniform(0.1, 2) * (1 - np.clip(alphas, None, 1)) ** rng.uniform(0.3, 3) + 0.1
    b_loss = b_curve + rng.choice([0, 0.3]) * (alphas - rng.uniform(0.3, 1.2)) ** 2
    line = pd.DataFrame([{"alpha": al, "task": t, "loss": v} for al, x, y in zip(alphas, a_loss, b_loss)
                         for t, v in (("a", x), ("b", y))])
    gw = nl.segment_words(line, "a", "b")
    inside_rows = line[(line.alpha >= 0) & (line.alpha <= 1)].pivot(index="alpha", columns="task", values="loss")
    b = inside_rows["b"]
    inside = 0 < b.idxmin() < 1 and b.min() < b.loc[1.0]
    assert ("lowest inside the segment" in gw["inside_sentence"]) == inside
    if inside:
        a_at = inside_rows.loc[b.idxmin(), "a"]
        assert ("costs the old task less" in gw["inside_sentence"]) == (a_at < inside_rows.loc[1.0, "a"])
    b0, bm, b1 = b.loc[0.0], b.loc[0.5], b.loc[1.0]
    assert (gw["mid_already"] == "already ") == (b0 > b1 and b0 - bm >= 0.5 * (b0 - b1))

    a_pt = (float(rng.uniform(1, 10)), 0.0)
    step = rng.uniform(0.2, 3) * a_pt[0]
    angle = float(rng.uniform(5, 175))
    b_pt = (a_pt[0] + step * np.cos(np.radians(angle)), step * np.sin(np.radians(angle)))
    grid = [(x, y) for x in range(-1, 3) for y in range(-1, 3)]
    plane = pd.DataFrame([{"x": x, "y": y, "task": t, "loss": rng.uniform(0.2, 3) * rng.choice([0.3, 1])}
                          for x, y in grid for t in ("a", "b")])
    plane.attrs["points"] = {"origin": (0.0, 0.0), "a": a_pt, "b": b_pt}
    pw = nl.plane_words(plane, line, "b", "a")
    ratio = step / a_pt[0]
    assert ("about as long as" in pw["step_sentence"]) == (1 / nl.SAME_LENGTH <= ratio <= nl.SAME_LENGTH)
    assert ("a direction of their own" in pw["step_sentence"]) == (60 <= angle <= 120)
    best = plane.groupby(["x", "y"])["loss"].sum().min()
    ends = line.pivot(index="alpha", columns="task", values="loss")
    better = best < min(ends.loc[0.0].sum(), ends.loc[1.0].sum()) - nl.PLANE_MARGIN
    assert pw["plane_sentence"].startswith("but ") == better
    summed = plane.groupby(["x", "y"])["loss"].sum()
    bx, by = summed.idxmin()
    nearest = min((("base", (0.0, 0.0)), ("after A", a_pt), ("after B", b_pt)),
                  key=lambda kv: np.hypot(bx - kv[1][0], by - kv[1][1]))[0]
    assert f"nearest to the {nearest} snapshot" in pw["plane_sentence"]
    assert ("a short way from where sequential training ended" in pw["plane_sentence"]) == (
        better and nearest == "after B")

    actual = rng.normal() * rng.choice([0.1, 1])
    taylor = pd.DataFrame({"t": [0.1, 0.5, 1.0], "actual": [actual * 0.1, actual * 0.5, actual],
                           "predicted": [actual * 0.1 * rng.choice([0.95, 1.3, 0.5]), actual * 0.5,
                                         actual * rng.choice([0.97, 0.2, 1.5, -1])]})
    tw = nl.taylor_words(taylor)
    e1 = abs(taylor.predicted.iloc[2] / actual - 1)
    e01 = abs(taylor.predicted.iloc[0] / taylor.actual.iloc[0] - 1)
    assert ("holds over the whole step" in tw["taylor_sentence"]) == (e1 <= nl.TOLERANCE)
    assert ("poor predictor" in tw["meaning_taylor"]) == (e1 > nl.TOLERANCE)
    assert (tw["small_verb"] == "still explains") == (e01 <= nl.TOLERANCE)
    assert tw["taylor_pred_clause"].startswith("a rise" if taylor.predicted.iloc[2] >= 0 else "a fall")
    for words in (cw, sw, mw, gw, pw, tw):
        _no_placeholders(words)
    return [cw, sw, mw, gw, pw, tw, _scale(ns.scale_words(879_488))]


@pytest.mark.parametrize("case", range(N_CASES))
def test_landscape_words_follow_their_rules(case):
    _check_landscape(np.random.default_rng(2000 + case))


# ---------------------------------------------------------------- chapter 05

TASKS = ["t0", "t1", "t2", "t3"]


def _severity(rng, n_layers):
    fr = []
    for scope in (nh.ADJACENT, nh.EVERY):
        for layer in ["all", *map(str, range(n_layers))]:
            f = float(rng.choice([0.0, rng.uniform(0, 0.5), 0.2]))
            fr.append({"scope": scope, "layer": layer, "fraction": f, "ci_low": f / 2, "ci_high": min(1, f * 2),
                       "n_heads": 96})
    fractions = pd.DataFrame(fr).sample(frac=1, random_state=int(rng.integers(1000)))  # any row order
    pairs = [(s, TASKS[j]) for s in (2, 3, 4) for j in range(s - 1)]
    keep = pairs if rng.uniform() > 0.2 else [(s, o) for s, o in pairs if o == TASKS[s - 2]]
    pt = []
    for s, o in keep:
        n_severe = int(rng.integers(0, 33))
        pt.append({"stage": s, "old_task": o, "layer": "all", "fraction": n_severe / 32, "n_severe": n_severe,
                   "n_heads": 32})
    return fractions, pd.DataFrame(pt)


def _check_heads(rng) -> list[dict[str, str]]:
    n_layers = int(rng.choice([2, 4, 12]))
    fractions, pair_table = _severity(rng, n_layers)
    w = nh.severity_words(fractions, pair_table, TASKS, n_seeds=int(rng.choice([1, 5])))
    adj = fractions[(fractions.scope == nh.ADJACENT) & (fractions.layer == "all")]["fraction"].iloc[0]
    earlier = pair_table[[o != TASKS[s - 2] for s, o in zip(pair_table.stage, pair_table.old_task)]]
    if len(earlier):
        rate = earlier.n_severe.sum() / earlier.n_heads.sum()
        assert ("under which more heads" in w["earlier_sentence"]) == (rate - adj > nh.MARGIN)
        assert ("under which fewer heads" in w["earlier_sentence"]) == (rate - adj < -nh.MARGIN)
    else:
        assert "more heads" not in w["earlier_sentence"]
    every = fractions[(fractions.scope == nh.EVERY) & (fractions.layer != "all")]
    ordered = every.assign(o=every.layer.astype(int)).sort_values("o")["fraction"].to_numpy()
    assert w["layers_all"] == ", ".join(f"{100 * v:.0f} %" for v in ordered)  # layer 10 after layer 9
    lower, upper = ordered[: n_layers // 2].mean(), ordered[n_layers // 2:].mean()
    assert ("lower half of the model is hit more" in w["half_sentence"]) == (lower - upper > nh.MARGIN)
    assert ("upper half of the model is hit more" in w["half_sentence"]) == (upper - lower > nh.MARGIN)
    assert ("as the paper reports" in w["layer_verdict"]) == (lower - upper > nh.MARGIN)
    spread = pair_table.fraction.max() - pair_table.fraction.min()
    if len(pair_table) > 1:
        assert (w["pairs_differ"] == "the pairs differ widely") == (spread >= nh.WIDE)
    assert ("With one seed" in w["whisker_sentence"]) == (w["n_seeds"] == "1")

    grid = np.linspace(0, 0.5, 41)
    rows = []
    for source, scale in (("observed", 1.0), ("null: continue", rng.uniform(0.1, 1.3)),
                          ("null: reseed", rng.uniform(0.1, 1.3))):
        top = rng.choice([0.1, 0.4, 0.9]) * scale
        for t in grid:
            rows.append({"pair": "stage 2: t0 vs t1", "stage": 2, "source": source, "threshold": t,
                         "fraction": float(np.clip(top * (1 - t / rng.choice([0.2, 0.5])), 0, 1))})
    curves = pd.DataFrame(rows)
    tw = nh.threshold_words(curves)
    obs = curves[curves.source == "observed"]
    band = obs[obs.fraction.between(*nh.PAPER_RANGE)].threshold
    assert ("reproduces the paper's" in tw["band_sentence"]) == (len(band) > 0)
    assert ("can be reproduced by a fixed threshold" in tw["meaning_threshold"]) == (len(band) > 0)
    cut = band.min() if len(band) else float(curves.threshold.median())
    at = curves[np.isclose(curves.threshold, grid[np.abs(grid - cut).argmin()])].set_index("source")["fraction"]
    if at["observed"] > 0:
        share = min(1.0, at.drop("observed").max() / at["observed"])
        assert f"so {share_word(share)} of what a fixed threshold counts" in tw["curves_sentence"]
        if share_word(share) not in ("most", "all"):
            assert "run close together" not in tw["curves_sentence"]
    else:
        assert "no real head" in tw["curves_sentence"]

    n = int(rng.integers(3, 7))
    timing = pd.DataFrame({"stage": [2 + i % 3 for i in range(n)], "old_task": [f"t{i}" for i in range(n)],
                           "severe_fraction": rng.choice([0.0, 0.05, 0.1, 0.3, 0.6], n),
                           "early_rise": rng.normal(0, 0.3, n), "total_rise": rng.normal(0.2, 0.3, n),
                           "first_eval_step": [225 + 200 * (i % 3) for i in range(n)]})
    rho = _rho(rng)
    mw = nh.timing_words(timing, rho, steps_per_task=200)
    sharp = timing.loc[timing.early_rise.idxmax()]
    if sharp.early_rise > 0:
        assert re.search(rf"\b{sharp.old_task}\b", mw["early_sentence"]) and "sharpest early forgetting" in mw["early_sentence"]
        assert "first 25 steps" in mw["early_sentence"]
        assert (" loses " in mw["early_sentence"]) == (sharp.total_rise >= sharp.early_rise)  # never above 100 %
    assert ("yet only" in mw["early_sentence"]) == (sharp.severe_fraction <= nh.NOISE_LEVEL)
    assert ("almost no head disrupted" in mw["meaning_timing"]) == (sharp.severe_fraction <= nh.NOISE_LEVEL)
    includes = rho.ci_low <= 0 <= rho.ci_high
    assert ("not shown to go together" in mw["meaning_timing"]) == includes
    assert ("rise go together" in mw["meaning_timing"]) == (rho.ci_low > 0)
    for words in (w, tw, mw):
        _no_placeholders(words)
    return [w, tw, mw]


@pytest.mark.parametrize("case", range(N_CASES))
def test_head_words_follow_their_rules(case):
    _check_heads(np.random.default_rng(3000 + case))


# ---------------------------------------------------------------- the chapters glue exactly these words

CHAPTERS = {"02_gradient_interference": _check_gradients, "03_representational_drift": _check_drift,
            "04_loss_landscape": _check_landscape, "05_attention_heads": _check_heads}


@pytest.mark.parametrize("name", sorted(CHAPTERS))
def test_every_glued_word_of_the_chapter_comes_from_its_narrative(name):
    """Every ``{glue:text}`` name of the chapter is a key its narrative functions return, and no key goes unused."""
    text = (paths.REPO_ROOT / "chapters" / f"{name}.md").read_text(encoding="utf-8")
    used = set(re.findall(r"\{glue:text\}`([a-z_0-9]+)`", text))
    returned = set().union(*(w.keys() for w in CHAPTERS[name](np.random.default_rng(0))))
    assert used == returned, f"glued but not returned: {sorted(used - returned)}; unused: {sorted(returned - used)}"
    assert not re.search(r"\bglue\(\s*\"", text)  # no glue call of its own: the words come from the narrative


# ---------------------------------------------------------------- the words of forgetting.ledger.prose


def test_comparison_word_and_count_text():
    assert comparison_word(0.30, 0.20, 0.05) == "larger than"
    assert comparison_word(0.20, 0.30, 0.05) == "smaller than"
    assert comparison_word(0.30, 0.27, 0.05) == "about the same as"
    assert comparison_word(float("nan"), 0.2, 0.05, same="=") == "="
    assert count_text(0, 6) == "none of the 6" and count_text(6, 6) == "all 6" and count_text(4, 6) == "4 of 6"
    assert count_text(1, 1) == "1 of 1"
    with pytest.raises(ValueError):
        count_text(7, 6)
    with pytest.raises(ValueError):
        comparison_word(1, 2, -0.1)
