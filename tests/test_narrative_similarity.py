"""Chapter 06's words never contradict the numbers they carry (:mod:`forgetting.book.narrative.similarity`).

The narrative functions get synthetic tables with the chapter's columns (similarity matrix, pair table,
task effects, declared tests and ledger rows, correlations, jackknife, partial correlations, quadratic
fits, pair- and task-bootstrap rows) and many perturbed versions of them: intervals made to include
or exclude 0 on either side, correlations undefined, measures missing, exact match saturated or not,
jackknife signs flipped. For each version every rule is recomputed from the numbers and the words
are checked against it: a list names exactly the measures that pass its rule, "all negative" only
when every present measure is negative, "nearly gone" only at or below the threshold, and so on.
"""

from __future__ import annotations

import math
import re
from itertools import permutations
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from forgetting import paths
from forgetting.book.narrative import similarity as ns
from forgetting.ledger.prose import count_text, share_word
from tests.test_narrative import N_CASES, _no_placeholders

MEASURES = ["gradient_cosine", "gradient_cosine_attention", "representation", "representation_subspace",
            "token_overlap", "answer_overlap", "fisher", "alignment_at_a", "update_alignment"]
BASE = [m for m in MEASURES if m not in ns.AFTER_A]
FORGETTING = ("forgetting_loss", "forgetting_exact", "forgetting_answer")


def _listed(text: str, lead: str, tail: str = "") -> list[str]:
    """The measure names listed between ``lead`` and ``tail`` in ``text`` (as names, not substrings)."""
    body = text.split(lead, 1)[1] if lead else text
    body = body.split(tail, 1)[0] if tail else body
    return [x.strip() for x in body.split(", ")]


def _names(measures) -> list[str]:
    return [ns.NAMES[m] for m in measures]


def _interval(rng, r=None):
    """A Pearson row: r with an interval that includes 0, or lies above or below it; sometimes undefined."""
    if rng.uniform() < 0.08:
        return {"r": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_boot_valid": 0}
    kind = rng.choice(["above", "below", "across"])
    low, high = sorted(rng.uniform(0.01, 1, 2))
    if kind == "below":
        low, high = -high, -low
    elif kind == "across":
        low, high = -rng.uniform(0, 1), rng.uniform(0, 1)
    r = float(rng.uniform(low, high)) if r is None else r
    return {"r": r, "ci_low": float(low), "ci_high": float(high), "n_boot_valid": int(rng.integers(0, 2001))}


def _tables(rng):
    n_tasks = int(rng.integers(3, 7))
    pool = ["recall_city", "update_city", "recall_job", "sort", "add", "copy", "reverse"]
    tasks = list(rng.permutation(pool)[:n_tasks]) if rng.uniform() < 0.5 else ["recall_city", "update_city",
                                                                                *pool[2:n_tasks]]
    sym = {m: {} for m in ("token_overlap", "fisher", "gradient_cosine", "representation_subspace")}
    rows = []
    for a in tasks:
        for b in tasks:
            for m, values in sym.items():
                key = tuple(sorted((a, b)))
                if key not in values:
                    values[key] = 1.0 if a == b else float(rng.uniform(-1, 1) if m == "gradient_cosine"
                                                           else rng.uniform(0, 1))
                rows.append({"task_a": a, "task_b": b, "measure": m, "layer": np.nan, "value": values[key]})
                rows.append({"task_a": a, "task_b": b, "measure": m, "layer": 1, "value": float(rng.uniform())})
    similarities = pd.DataFrame(rows)
    pairs = list(permutations(tasks, 2))
    n = len(pairs)
    before = rng.uniform(0.1, 1, n)
    after = rng.uniform(0, rng.choice([0.05, 0.1, 0.5]), n) * rng.choice([0, 1])
    table = pd.DataFrame({"task_a": [a for a, _ in pairs], "task_b": [b for _, b in pairs],
                          "exact_a_before": before, "forgetting_exact": np.clip(before - after, 0, None),
                          "forgetting_answer": rng.uniform(0, 1, n), "forgetting_loss": rng.uniform(0, 12, n),
                          "answer_a_before": rng.uniform(0, 1, n),
                          "token_overlap": [sym["token_overlap"][tuple(sorted(p))] for p in pairs],
                          "alignment_at_a": rng.normal(0, rng.choice([0.01, 0.1, 0.5]), n)})
    effects = pd.DataFrame({"forgetting": list(FORGETTING), "by_a": rng.choice([0.2, 0.55, 0.6, 0.98], 3),
                            "by_b": rng.uniform(0, 0.4, 3), "additive": rng.uniform(0.4, 1, 3), "n": n})
    present = [m for m in MEASURES if rng.uniform() > 0.1] or ["fisher"]
    corr = [{"similarity": m, "forgetting": f, "method": method, **_interval(rng)}
            for m in present for f in FORGETTING for method in ("pearson", "spearman")]
    correlations = pd.DataFrame(corr)
    if correlations[(correlations.method == "pearson") & (correlations.forgetting == "forgetting_answer")]["r"].isna().all():
        correlations.loc[0, ["similarity", "forgetting", "method", "r", "ci_low", "ci_high"]] = [
            present[0], "forgetting_answer", "pearson", 0.5, 0.1, 0.9]
    return tasks, similarities, table, effects, correlations


def _tests(rng):
    prim = [{"predictor": p, "forgetting": "forgetting_loss", "primary": True, "claim": c, **_interval(rng)}
            for c, p in (("5", "fisher"), ("5b", "gradient_conflict"))]
    n_sec = int(rng.integers(0, 15))
    p = rng.choice([0.001, 0.03, 0.049, 0.05, 0.2, np.nan], n_sec)
    sec = [{"predictor": f"m{i}", "forgetting": "forgetting_answer", "primary": False, "claim": "", **_interval(rng)}
           for i in range(n_sec)]
    tests = pd.DataFrame(prim + sec)
    tests["p_holm"] = [0.01, 0.5, *p]
    verdicts = list(ns.VERDICTS)
    rows = {k: SimpleNamespace(verdict=str(rng.choice(verdicts))) for k in ("similarity", "alignment")}
    return tests, rows


def _jackknife(rng, tasks):
    full = float(rng.uniform(-1, 1))
    rs = full + rng.normal(0, rng.choice([0.05, 0.3, 1.0]), len(tasks))
    rs = np.where(rng.uniform(size=len(tasks)) < 0.1, np.nan, np.clip(rs, -1, 1))
    if rng.uniform() < 0.05:
        rs[:] = np.nan
    return pd.DataFrame({"left_out": [*tasks, "(none)"], "r": [*rs, full], "n": 6})


def _peaks(rng):
    rows = []
    for m in ("token_overlap", "representation_subspace", "fisher", "gradient_cosine"):
        for f in ("forgetting_answer", "forgetting_loss"):
            b2 = float(rng.normal(0, 5))
            low, high = sorted(b2 + rng.normal(0, rng.choice([0.5, 20]), 2))
            low, high = min(low, b2), max(high, b2)
            inside = b2 < 0 and rng.uniform() < 0.7
            verdict = ("intermediate peak" if inside and high < 0 else "peak not resolved" if inside
                       else "no intermediate peak")
            r2 = float(rng.uniform(0, 0.8))
            rows.append({"similarity": m, "forgetting": f, "b2": b2, "b2_ci_low": low, "b2_ci_high": high,
                         "verdict": verdict, "r2_linear": r2, "r2_quadratic": r2 + float(rng.uniform(0, 0.2))})
    return pd.DataFrame(rows)


def _check(rng) -> list[dict[str, str]]:
    tasks, similarities, table, effects, correlations = _tables(rng)
    out = []

    # -- the conflict pair and the agreement of token overlap with Fisher
    w = ns.similarity_pair_words(similarities, tasks)
    agg = similarities[similarities.layer.isna() & (similarities.task_a < similarities.task_b)]
    wide = agg.pivot_table(index=["task_a", "task_b"], columns="measure", values="value")
    conflict = ("recall_city", "update_city") if {"recall_city", "update_city"} <= set(tasks) else tuple(tasks[:2])
    key = tuple(sorted(conflict))
    assert w["conflict_pair"] == f"{conflict[0]} and {conflict[1]}"
    for m, short in (("token_overlap", "tokens"), ("fisher", "fisher")):
        value, others = wide.loc[key, m], wide[m].drop(key)
        assert w[f"conflict_{short}"] == f"{value:.2f}"
        assert w[f"conflict_{short}_rank"] == f"higher than for {count_text(int((others < value).sum()), len(others))} other task pairs"
    assert w["conflict_grad_clause"].startswith(", a positive one") == (wide.loc[key, "gradient_cosine"] > 0)
    assert ("same questions" in w["conflict_about"]) == (conflict == ("recall_city", "update_city"))
    rho = wide["token_overlap"].rank().corr(wide["fisher"].rank())
    agree = w["agree_sentence"]
    assert f"{rho:.2f}" in agree and f"over the {len(wide)} task pairs" in agree
    assert ("largely agree" in agree) == (rho >= ns.AGREE)
    assert ("disagree" in agree) == (rho < 0)
    out.append(w)

    # -- the sweep's ranges and exact match after B
    sw = ns.sweep_words(table)
    after = (table.exact_a_before - table.forgetting_exact).max()
    assert sw["exact_after_max"] == f"{after:.2f}"
    r_rep = table.exact_a_before.corr(table.forgetting_exact)
    assert ("mostly repeats" in sw["exact_clause"]) == (r_rep >= ns.REPEATS)
    if math.isfinite(r_rep):
        assert f"r = {r_rep:.2f}" in sw["exact_clause"]
    assert sw["n_pairs"] == str(len(table)) and sw["n_tasks"] == str(len(tasks))
    lo, hi = sw["answer_forget_range"].split(" to ")
    assert float(lo) <= float(hi)
    out.append(sw)

    # -- task effects
    ew = ns.task_effect_words(effects)
    by_a = effects.set_index("forgetting").loc["forgetting_exact", "by_a"]
    assert ew["exact_by_a"] == f"{100 * by_a:.0f} %"
    assert ("mostly a property of A" in ew["exact_a_clause"]) == (by_a >= 0.6)
    additive = effects.set_index("forgetting").loc["forgetting_answer", "additive"]
    assert ew["answer_left"] == f"{100 * (1 - additive):.0f} %"
    out.append(ew)

    # -- the declared tests and their verdicts
    tests, rows = _tests(rng)
    dw = ns.declared_words(tests, rows, "ordered task pairs (4 tasks x 1 seeds)")
    prim = tests[tests.primary].set_index("claim")
    for claim, k, rule in (("5", "fisher", "similarity"), ("5b", "conflict", "alignment")):
        row = prim.loc[claim]
        expected = ("is undefined" if not math.isfinite(row.r) else "lies above 0" if row.ci_low > 0 else
                    "lies below 0" if row.ci_high < 0 else "includes 0")
        assert dw[f"declared_{k}_sign"] == expected
        assert dw[f"declared_{k}"] == ("undefined" if not math.isfinite(row.r) else
                                       f"{row.r:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]")
        verdict = rows[rule].verdict
        assert dw[f"declared_{k}_verdict"].endswith(verdict)
    sec = tests[~tests.primary]
    k = int((sec.p_holm < 0.05).sum())
    if len(sec):
        assert count_text(k, len(sec)) + " secondary" in dw["secondary_sentence"]
    assert ("undefined" in dw["secondary_sentence"]) == bool(sec.p_holm.isna().any())
    out.append(dw)

    # -- the exploratory correlations
    cw = ns.correlation_words(correlations, table, MEASURES)
    pear = correlations[correlations.method == "pearson"]
    answer = pear[pear.forgetting == "forgetting_answer"].set_index("similarity")
    loss = pear[pear.forgetting == "forgetting_loss"].set_index("similarity")
    defined = answer.dropna(subset=["r"])
    best = defined["r"].abs().idxmax()
    assert ns.strongest_measure(correlations) == best
    assert cw["best_r"] == f"{answer.loc[best, 'r']:.2f} [{answer.loc[best, 'ci_low']:.2f}, {answer.loc[best, 'ci_high']:.2f}]"
    for m in MEASURES:
        if m not in answer.index or not math.isfinite(answer.loc[m, "r"]):
            assert cw[f"r_ans_{m}"] == "undefined"
    positive = [m for m in MEASURES if m in defined.index and defined.loc[m, "ci_low"] > 0]
    if positive:
        assert _listed(cw["positive_sentence"], "are: ", ".") == _names(positive)
    else:
        assert cw["positive_sentence"] == "No measure's interval lies wholly above 0."
    consistent = [m for m in MEASURES if m in defined.index
                  and defined.loc[m, "ci_low"] <= ns.PAPER_R <= defined.loc[m, "ci_high"]]
    if consistent:
        assert _listed(cw["paper_sentence"], "interval of ", ".") == _names(consistent)
    else:
        assert "no measure's interval" in cw["paper_sentence"]
    wide_m = [m for m in MEASURES if m in defined.index and defined.loc[m, "ci_high"] - defined.loc[m, "ci_low"] > ns.WIDE]
    if wide_m:
        assert _listed(cw["wide_sentence"], "intervals of ", " are wider") == _names(wide_m)
    else:
        assert cw["wide_sentence"].startswith("No measure's interval")
    med = table.alignment_at_a.abs().median()
    assert cw["alignment_size"].startswith("small") == (med < ns.SMALL_COS)
    base = [m for m in BASE if m in loss.index and math.isfinite(loss.loc[m, "r"])]
    r = loss.loc[base, "r"]
    n_neg, n_pos = int((r < 0).sum()), int((r > 0).sum())
    sign = cw["loss_sign"]
    if base:
        assert sign.endswith(f"({n_neg} of {len(base)} negative)")  # the measures present, not a fixed 7
        assert sign.startswith("all negative") == (n_neg == len(base))
        assert sign.startswith("all positive") == (n_pos == len(base))
        assert sign.startswith("mostly negative") == (n_neg < len(base) and n_neg / len(base) >= 0.6)
        if sign.startswith("of mixed sign"):
            assert n_neg / len(base) < 0.6 and n_pos / len(base) < 0.6
        assert [x.rsplit(" ", 3)[0] for x in re.split(r"(?<=\]|d), ", cw["loss_list"])] == _names(base)
    else:
        assert sign == "undefined for every measure"
    out.append(cw)

    # -- the jackknife
    jk = _jackknife(rng, tasks)
    jw = ns.jackknife_words(jk)
    full = jk.loc[jk.left_out == "(none)", "r"].iloc[0]
    dropped = jk[jk.left_out != "(none)"].dropna(subset=["r"])
    if len(dropped):
        assert jw["jk_range"] == f"{dropped.r.min():.2f} to {dropped.r.max():.2f}"
        move = (dropped.r - full).abs()
        assert jw["jk_task"] == dropped.loc[move.idxmax(), "left_out"]
        flips = dropped.loc[np.sign(dropped.r) != np.sign(full), "left_out"].tolist()
        assert ("keeps its sign" in jw["jk_sign_sentence"]) == (not flips)
        assert all(t in jw["jk_sign_sentence"] for t in flips)
        assert ("moving r by up to" in jw["jk_caveat"]) == (move.max() > ns.JK_MOVE)
    else:
        assert "cannot" in jw["jk_sign_sentence"]
    out.append(jw)

    # -- partial correlations
    part = pd.DataFrame([{"similarity": m, **_interval(rng)}
                         for m in dict.fromkeys([best, "representation_subspace", "token_overlap", "fisher"])])
    pw = ns.partial_words(part, best)
    row = part.set_index("similarity").loc[best]
    assert pw["partial_best_sign"] == ("is undefined" if not math.isfinite(row.r) else "lies above 0"
                                       if row.ci_low > 0 else "lies below 0" if row.ci_high < 0 else "includes 0")
    out.append(pw)

    # -- the quadratic fits
    peaks = _peaks(rng)
    kw = ns.peak_words(peaks)
    n_peak = int((peaks.verdict == "intermediate peak").sum())
    assert kw["n_peak"] == str(n_peak) and kw["n_unresolved"] == str(int((peaks.verdict == "peak not resolved").sum()))
    open_ci = int(((peaks.b2_ci_low <= 0) & (peaks.b2_ci_high >= 0)).sum())
    assert count_text(open_ci, len(peaks)) + " fits include 0" in kw["peak_width_sentence"]
    assert ("hard to pin down" in kw["peak_width_sentence"]) == (share_word(open_ci / len(peaks)) in ("most", "all"))
    assert ("no intermediate-similarity peak" in kw["peak_meaning"]) == (n_peak == 0)
    out.append(kw)

    # -- pair bootstrap against task bootstrap
    naive, clustered = (pd.DataFrame([{**_interval(rng), "p_value": float(rng.uniform())}]) for _ in range(2))
    clustered.loc[0, "n_boot_valid"] = int(rng.choice([2000, 1999, 1319, 150]))
    rw = ns.resampling_words(naive, clustered, n_tasks=len(tasks))
    nw = naive.ci_high[0] - naive.ci_low[0]
    cwid = clustered.ci_high[0] - clustered.ci_low[0]
    if math.isfinite(nw) and math.isfinite(cwid):
        assert rw["width_word"] == ("narrower than" if nw - cwid < -ns.WIDTH_MARGIN else "wider than"
                                    if nw - cwid > ns.WIDTH_MARGIN else "about as wide as")
    valid = int(clustered.n_boot_valid[0])
    assert rw["boot_sentence"].startswith("Every one") == (valid == 2000)
    if valid < 2000:
        assert rw["boot_sentence"].startswith(share_word((2000 - valid) / 2000).capitalize())
    honest = rw["honest_sentence"]
    if math.isfinite(clustered.r[0]):
        assert ("pins this correlation down" in honest) == (cwid <= ns.PRECISE)
        if cwid > ns.PRECISE:
            includes = clustered.ci_low[0] <= 0 <= clustered.ci_high[0]
            assert ("neither the direction nor the size" in honest) == includes
    assert rw["min_p"] == f"1/{math.factorial(len(tasks))} = {1 / math.factorial(len(tasks)):.2g}"
    out.append(rw)

    # -- what it means
    steps = int(rng.choice([50, 100]))
    mw = ns.meaning_words(correlations, table, effects, MEASURES, steps=steps, profile=str(rng.choice(["quick", "full"])))
    ok = [m for m in BASE if m in answer.index and math.isfinite(answer.loc[m, "r"])]
    a_up = [m for m in ok if answer.loc[m, "ci_low"] > 0]
    a_down = [m for m in ok if answer.loc[m, "ci_high"] < 0]
    summary = mw["answer_summary"]
    assert summary.startswith("do not clearly predict") == (not a_up and not a_down)
    if a_up and not a_down:
        assert _listed(summary, "positively with ", ", with intervals") == _names(a_up)
    if a_down and not a_up:
        assert _listed(summary, "negatively with ", ", with intervals") == _names(a_down)
    okl = [m for m in BASE if m in loss.index and math.isfinite(loss.loc[m, "r"])]
    l_up = [m for m in okl if loss.loc[m, "ci_low"] > 0]
    l_down = [m for m in okl if loss.loc[m, "ci_high"] < 0]
    assert ("share little that lose more" in mw["loss_summary"]) == bool(l_down)
    assert ("more similar pairs lose more" in mw["loss_summary"]) == bool(l_up)
    if l_down:
        clause = mw["loss_summary"].split("intervals below 0, for ", 1)[1].split("; and ")[0]
        assert clause.endswith(")") and _listed(clause[:-1], "") == _names(l_down)
    opposite = [m for m in BASE if (m in a_up and m in l_down) or (m in a_down and m in l_up)]
    assert mw["disagree_lead"].startswith("For ") == bool(opposite)
    grad = answer.reindex([m for m in ns.GRADIENT]).dropna(subset=["r"])
    clear = [m for m in grad.index if grad.loc[m, "ci_low"] > 0 or grad.loc[m, "ci_high"] < 0]
    if len(grad) and not clear:
        assert mw["grad_verdict"].startswith("all have intervals that include 0")
    elif clear and len(clear) < len(grad):
        assert _listed(mw["grad_verdict"], "only for ") == _names(clear)
    align = table.alignment_at_a.abs()
    k = int((align < ns.SMALL_COS).sum())
    assert f"for {share_word(k / len(align))} pairs ({count_text(k, len(align))})" in mw["small_alignment_share"]
    assert ("has saturated" in mw["saturation_sentence"]) == (after <= ns.SATURATED)
    assert mw["saturation_sentence"].startswith(f"after {steps} steps")
    best_pair = wide["token_overlap"].idxmax()
    assert mw["top_overlap_pair"].startswith(f"{best_pair[0]} and {best_pair[1]}")
    out.append(mw)

    for words in out:
        _no_placeholders(words)
        assert "nan" not in " ".join(words.values()).lower().split()
    return out


@pytest.mark.parametrize("case", range(N_CASES))
def test_similarity_words_follow_their_rules(case):
    _check(np.random.default_rng(6000 + case))


def test_loss_sign_counts_the_measures_present():
    """Five measures, all negative: "all negative", whatever the chapter's list of nine (the old rule needed 7)."""
    rows = [{"similarity": m, "forgetting": f, "method": "pearson", "r": -0.5, "ci_low": -0.9, "ci_high": -0.1}
            for m in BASE[:5] for f in ("forgetting_answer", "forgetting_loss")]
    table = pd.DataFrame({"alignment_at_a": [0.01, 0.02]})
    words = ns.correlation_words(pd.DataFrame(rows), table, MEASURES)
    assert words["loss_sign"] == "all negative (5 of 5 negative)"


def test_every_glued_word_of_the_chapter_comes_from_its_narrative():
    """Every ``{glue:text}`` name of chapter 06 is a key its narrative returns, no key goes unused, and the
    chapter has no ``glue("...`` call of its own."""
    text = (paths.REPO_ROOT / "chapters" / "06_task_similarity.md").read_text(encoding="utf-8")
    used = set(re.findall(r"\{glue:text\}`([a-z_0-9]+)`", text))
    returned = set().union(*(w.keys() for w in _check(np.random.default_rng(0))))
    returned.add("model_scale")  # forgetting.book.narrative.scale (tests/test_narrative_measuring.py)
    assert used == returned, f"glued but not returned: {sorted(used - returned)}; unused: {sorted(returned - used)}"
    assert not re.search(r"\bglue\(\s*\"", text)
