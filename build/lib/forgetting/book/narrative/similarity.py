"""Chapter 06 (task similarity): every glued number and judging word, from the chapter's tables.

Rules (the constants below):

- a correlation's interval lies "above 0" / "below 0" when it excludes 0 on that side, else it
  "includes 0" (:func:`~forgetting.ledger.prose.sign_word`); an undefined r (NaN) is "undefined";
- the conflict pair's token overlap and Fisher cosine are ranked among the other unordered task pairs
  ("higher than for k of the n other pairs", :func:`~forgetting.ledger.prose.count_text`); its gradient
  cosine is "positive" when > 0;
- token overlap and the Fisher embedding "largely agree" on which pairs are similar when their rank
  correlation over the unordered pairs is at least ``AGREE`` (0.5), "agree only loosely" when it is in
  [0, 0.5), and "disagree" when it is negative;
- the exact-match drop "mostly repeats how well A had been learned" when its Pearson r with A's exact
  match before B, over the pairs, is at least ``REPEATS`` (0.9); exact match "has saturated" when A's
  best exact match after B is at most ``SATURATED`` (0.1);
- a variance share is "mostly a property of A" when :func:`~forgetting.ledger.prose.share_word` of it
  is "most" or "all";
- the strongest measure is the base-model or sweep measure whose answer-match Pearson r is largest in
  magnitude (:func:`strongest_measure`);
- an interval "spans most of [-1, 1]" when it is wider than ``WIDE`` (1.5);
- the paper's r = 0.87 is "consistent" with a measure when it lies inside that measure's interval;
- the gradient alignment after A is "small" when the median ``|cos(g_A, g_B)|`` is below ``SMALL_COS``
  (0.1); a pair's alignment is "near 0" when ``|cos| < SMALL_COS``;
- the loss correlations of the base-model measures are "all negative" / "all positive" when every
  defined r has that sign, "mostly negative" / "mostly positive" when at least 60 % have it (the "most"
  of :func:`~forgetting.ledger.prose.share_word`), "of mixed sign" otherwise; the count of measures is
  the number actually present, not a fixed one;
- a measure "predicts" a forgetting measure when its interval excludes 0; the two forgetting measures
  "disagree in sign" for a measure whose answer-match and loss intervals exclude 0 on opposite sides;
- the jackknife "changes sign" when r without some task has the opposite sign of r with all tasks; single
  tasks "move r a lot" when one moves it by more than ``JK_MOVE`` (0.2);
- a curvature interval "includes 0" as above; the curve is "hard to pin down" when most (share_word)
  of the fits' curvature intervals include 0 or are undefined;
- one bootstrap interval is "narrower" / "wider" than another when their widths differ by more than
  ``WIDTH_MARGIN`` (0.05), else "about as wide";
- a correlation is "pinned down" when its task-bootstrap interval is at most ``PRECISE`` (0.5) wide;
  a wider interval shows its direction only when it excludes 0;
- a share of undefined bootstrap resamples is worded by :func:`~forgetting.ledger.prose.share_word`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from forgetting.book.narrative._text import listing, num, pct
from forgetting.ledger.prose import comparison_word, count_text, share_word, sign_word

PAPER_R = 0.87
AGREE = 0.5
SATURATED = 0.1
REPEATS = 0.9
WIDE = 1.5
SMALL_COS = 0.1
JK_MOVE = 0.2
WIDTH_MARGIN = 0.05
PRECISE = 0.5
CONFLICT = ("recall_city", "update_city")  # the same questions, different answers
AFTER_A = ("alignment_at_a", "update_alignment")  # measured along the sweep, not at the base model
GRADIENT = ("gradient_cosine", "gradient_cosine_attention", *AFTER_A)
NAMES = {"gradient_cosine": "gradient cosine", "gradient_cosine_attention": "gradient cosine (attention)",
         "representation": "centroid cosine", "representation_subspace": "subspace cosine",
         "token_overlap": "token overlap", "answer_overlap": "answer overlap", "fisher": "Fisher embedding",
         "alignment_at_a": "gradient alignment after A", "update_alignment": "update alignment"}
LONG = {"representation_subspace": "subspace cosine of the representations",
        "representation": "centroid cosine of the representations"}
VERDICTS = {"holds": "holds", "holds partly": "holds partly", "not supported": "is not supported",
            "contradicted": "is contradicted"}


def _name(measure: str) -> str:
    return NAMES.get(measure, measure.replace("_", " "))


def _names(measures: Sequence[str]) -> str:
    return listing(_name(m) for m in measures)


def _fmt(row: Any) -> str:
    """``"r [low, high]"``, or ``"undefined"`` when r is NaN (a constant column or too few pairs)."""
    if not math.isfinite(row.r):
        return "undefined"
    return f"{row.r:.2f} [{num(row.ci_low)}, {num(row.ci_high)}]"


def _side(low: float, high: float, r: float = 0.0) -> str:
    """``"above"`` / ``"below"`` / ``"neither"`` / ``"undefined"``."""
    if not math.isfinite(r):
        return "undefined"
    return sign_word(low, high, above="above", below="below", neither="neither")


def _sign_clause(row: Any) -> str:
    return {"above": "lies above 0", "below": "lies below 0", "neither": "includes 0",
            "undefined": "is undefined"}[_side(row.ci_low, row.ci_high, row.r)]


def _pearson(correlations: pd.DataFrame, forgetting: str) -> pd.DataFrame:
    sel = correlations[(correlations["method"] == "pearson") & (correlations["forgetting"] == forgetting)]
    return sel.set_index("similarity")


def strongest_measure(correlations: pd.DataFrame, forgetting: str = "forgetting_answer") -> str:
    """The similarity measure whose Pearson r with ``forgetting`` is largest in magnitude (defined r only)."""
    rows = _pearson(correlations, forgetting).dropna(subset=["r"])
    if rows.empty:
        raise ValueError(f"no defined Pearson correlation with {forgetting}")
    return str(rows["r"].abs().idxmax())


def _unordered(similarities: pd.DataFrame, measure: str) -> pd.Series:
    agg = similarities[similarities["layer"].isna() & (similarities["measure"] == measure)]
    agg = agg[agg["task_a"] != agg["task_b"]]
    key = [tuple(sorted(p)) for p in zip(agg["task_a"], agg["task_b"])]
    return agg.assign(pair=key).groupby("pair")["value"].mean()


def similarity_pair_words(similarities: pd.DataFrame, tasks: Sequence[str]) -> dict[str, str]:
    """The conflict pair's similarities at the base model, and whether token overlap and Fisher agree.

    ``similarities``: :func:`forgetting.mechanisms.similarity.similarity_matrix` (``task_a``, ``task_b``,
    ``measure``, ``layer``, ``value``); ``tasks``: the sweep's tasks.
    """
    conflict = CONFLICT if set(CONFLICT) <= set(tasks) else tuple(tasks[:2])
    key = tuple(sorted(conflict))
    words = {"conflict_pair": f"{conflict[0]} and {conflict[1]}",
             "conflict_about": ("ask the same questions about the same people and differ only in the answers"
                                if conflict == CONFLICT else "are the first two tasks of the sweep")}
    for measure, short in (("token_overlap", "tokens"), ("fisher", "fisher"), ("gradient_cosine", "grad")):
        values = _unordered(similarities, measure)
        value = float(values.get(key, math.nan))
        words[f"conflict_{short}"] = num(value)
        others = values.drop(key, errors="ignore")
        if short != "grad":
            words[f"conflict_{short}_rank"] = (f"higher than for {count_text(int((others < value).sum()), len(others))} "
                                               "other task pairs" if len(others) and math.isfinite(value)
                                               else "with no other pair to rank it against")
    grad = float(_unordered(similarities, "gradient_cosine").get(key, math.nan))
    if conflict == CONFLICT and grad > 0:
        words["conflict_grad_clause"] = (", a positive one: before fine-tuning, the model has learned neither task's "
                                         "question format, and the first thing both tasks teach is the same (answer a "
                                         "question about a person with a city)")
    elif conflict == CONFLICT:
        words["conflict_grad_clause"] = (", not a positive one: even before fine-tuning the two tasks' first steps "
                                         "already pull apart")
    else:
        words["conflict_grad_clause"] = ", a positive one" if grad > 0 else ", not a positive one"
    tokens, fisher = _unordered(similarities, "token_overlap"), _unordered(similarities, "fisher")
    both = pd.concat([tokens, fisher], axis=1, keys=["t", "f"]).dropna()
    rho = float(both["t"].rank().corr(both["f"].rank())) if len(both) >= 3 else math.nan
    if not math.isfinite(rho):
        words["agree_sentence"] = ("Token overlap and the Fisher embedding cannot be compared over so few task pairs "
                                   "(their rank correlation is undefined).")
    else:
        how = ("largely agree on" if rho >= AGREE else "agree only loosely on" if rho >= 0 else "disagree on")
        words["agree_sentence"] = (f"Token overlap and the Fisher embedding {how} which pairs are similar (a rank "
                                   f"correlation of {rho:.2f} over the {len(both)} task pairs).")
    return words


def _range(values: pd.Series, digits: int = 2) -> str:
    values = values.dropna()
    return "not measured" if values.empty else f"{values.min():.{digits}f} to {values.max():.{digits}f}"


def sweep_words(table: pd.DataFrame) -> dict[str, str]:
    """Counts and ranges of the sweep's pair table (:func:`forgetting.sweep.statistics.pair_table`)."""
    after = float((table["exact_a_before"] - table["forgetting_exact"]).max())
    both = table[["exact_a_before", "forgetting_exact"]].dropna()
    r = float(both["exact_a_before"].corr(both["forgetting_exact"])) if len(both) >= 3 else math.nan
    if not math.isfinite(r):
        clause = ", and over so few or so constant pairs its drop cannot be compared with how well A had been learned"
    elif r >= REPEATS:
        clause = (f", so its drop mostly repeats how well A had been learned (the two correlate with r = {r:.2f} "
                  "over the pairs)")
    else:
        clause = (f"; its drop does not simply repeat how well A had been learned (the two correlate with r = {r:.2f} "
                  f"over the pairs, below {REPEATS:g})")
    return {
        "n_pairs": str(len(table)),
        "n_tasks": str(len(set(table["task_a"]) | set(table["task_b"]))),
        "exact_before_range": _range(table["exact_a_before"]),
        "exact_after_max": num(after),
        "exact_clause": clause,
        "answer_forget_range": _range(table["forgetting_answer"]),
        "loss_forget_range": _range(table["forgetting_loss"], 1),
    }


def task_effect_words(effects: pd.DataFrame) -> dict[str, str]:
    """Shares of variance explained by A, by B and by both (:func:`forgetting.sweep.statistics.task_effects`)."""
    eff = effects.set_index("forgetting")
    by_a = float(eff.loc["forgetting_exact", "by_a"])
    word = share_word(min(1.0, max(0.0, by_a))) if math.isfinite(by_a) else "n/a"
    clause = ("it is mostly a property of A, not of the pair" if word in ("most", "all")
              else "so A alone does not account for most of it")
    additive = float(eff.loc["forgetting_answer", "additive"])
    return {
        "exact_by_a": pct(by_a), "exact_a_clause": clause,
        "answer_by_a": pct(eff.loc["forgetting_answer", "by_a"]),
        "answer_by_b": pct(eff.loc["forgetting_answer", "by_b"]),
        "answer_additive": pct(additive), "answer_left": pct(1 - additive),
        "loss_by_a": pct(eff.loc["forgetting_loss", "by_a"]),
    }


def declared_words(tests: pd.DataFrame, rows: Mapping[str, Any], units: str) -> dict[str, str]:
    """The declared primary correlations, their ledger verdicts and the Holm-corrected secondaries.

    ``tests``: :func:`forgetting.sweep.statistics.similarity_tests` (``primary``, ``claim``, ``r``, ``ci_low``,
    ``ci_high``, ``p_holm``); ``rows``: ``{"similarity": row, "alignment": row}`` of
    :func:`forgetting.ledger.judge.judge` (``verdict``); ``units``: what the primary interval is over.
    """
    primary = tests[tests["primary"]].set_index("claim")
    words = {"declared_units": units}
    for claim, key, rule in (("5", "fisher", "similarity"), ("5b", "conflict", "alignment")):
        row = primary.loc[claim]
        words[f"declared_{key}"] = _fmt(row)
        words[f"declared_{key}_sign"] = _sign_clause(row)
        words[f"declared_{key}_verdict"] = VERDICTS.get(rows[rule].verdict, rows[rule].verdict)
    secondary = tests[~tests["primary"]]
    p = pd.to_numeric(secondary["p_holm"], errors="coerce")
    k, n, undefined = int((p < 0.05).sum()), len(secondary), int(p.isna().sum())
    text = (f"After Holm's adjustment, {count_text(k, n)} secondary correlations "
            f"{'stays' if k == 1 else 'stay'} below p = 0.05" if n else "There are no secondary correlations")
    words["secondary_sentence"] = text + (f" ({undefined} are undefined)." if undefined else ".")
    return words


def correlation_words(correlations: pd.DataFrame, table: pd.DataFrame, measures: Sequence[str]) -> dict[str, str]:
    """The exploratory correlations of every measure with the answer-match drop and the loss increase.

    ``correlations``: :func:`forgetting.sweep.statistics.similarity_correlations` (``similarity``, ``forgetting``,
    ``method``, ``r``, ``ci_low``, ``ci_high``); ``table``: the pair table (``alignment_at_a``);
    ``measures``: the measures the chapter lists.
    """
    answer, loss = _pearson(correlations, "forgetting_answer"), _pearson(correlations, "forgetting_loss")
    words = {f"r_ans_{m}": _fmt(answer.loc[m]) if m in answer.index else "undefined" for m in measures}
    best = strongest_measure(correlations)
    spear = correlations[(correlations["method"] == "spearman") & (correlations["forgetting"] == "forgetting_answer")]
    spear = spear.set_index("similarity")
    words.update(best_measure=LONG.get(best, _name(best)), best_r=_fmt(answer.loc[best]),
                 spearman_best=_fmt(spear.loc[best]) if best in spear.index else "not computed")
    defined = answer.loc[[m for m in measures if m in answer.index]].dropna(subset=["r"])
    positive = [m for m in defined.index if defined.loc[m, "ci_low"] > 0]
    consistent = [m for m in defined.index if defined.loc[m, "ci_low"] <= PAPER_R <= defined.loc[m, "ci_high"]]
    words["positive_sentence"] = (f"The measures whose whole interval is above 0 are: {_names(positive)}."
                                  if positive else "No measure's interval lies wholly above 0.")
    words["paper_sentence"] = (f"The paper's r = {PAPER_R} lies inside the interval of {_names(consistent)}."
                               if consistent else f"The paper's r = {PAPER_R} lies inside no measure's interval.")
    wide = [m for m in defined.index if defined.loc[m, "ci_high"] - defined.loc[m, "ci_low"] > WIDE]
    words["wide_sentence"] = (f"The intervals of {_names(wide)} are wider than {WIDE:g} and so span most of [-1, 1]: "
                              "those measures say nothing either way at this sample size." if wide else
                              f"No measure's interval is wider than {WIDE:g}.")
    med = float(table["alignment_at_a"].abs().median()) if "alignment_at_a" in table else math.nan
    words["median_abs_alignment"] = num(med)
    words["alignment_size"] = (f"small (below {SMALL_COS:g})" if med < SMALL_COS else
                               f"not small ({SMALL_COS:g} or more)" if math.isfinite(med) else "not measured")
    base = [m for m in measures if m not in AFTER_A and m in loss.index and math.isfinite(loss.loc[m, "r"])]
    r = loss.loc[base, "r"] if base else pd.Series(dtype=float)
    n, k_neg, k_pos = len(r), int((r < 0).sum()), int((r > 0).sum())
    if n == 0:
        sign = "undefined for every measure"
    else:
        sign = ("all negative" if k_neg == n else "all positive" if k_pos == n else
                "mostly negative" if share_word(k_neg / n) == "most" else
                "mostly positive" if share_word(k_pos / n) == "most" else "of mixed sign")
        sign += f" ({k_neg} of {n} negative)"
    words["loss_sign"] = sign
    words["loss_list"] = (listing(f"{_name(m)} {_fmt(loss.loc[m])}" for m in base) if base
                          else "no measure has a defined correlation")
    return words


def jackknife_words(jackknife: pd.DataFrame) -> dict[str, str]:
    """Leave-one-task-out correlations (:func:`forgetting.sweep.statistics.leave_one_task_out`: ``left_out``, ``r``)."""
    full = jackknife.loc[jackknife["left_out"] == "(none)", "r"]
    full = float(full.iloc[0]) if len(full) else math.nan
    dropped = jackknife[jackknife["left_out"] != "(none)"].dropna(subset=["r"])
    if dropped.empty or not math.isfinite(full):
        return {"jk_range": "undefined for every task left out", "jk_full": num(full),
                "jk_task": "any task", "jk_r": "an undefined value",
                "jk_sign_sentence": "The jackknife cannot say how much the correlation rests on single tasks.",
                "jk_caveat": "the jackknife could not be computed"}
    move = (dropped["r"] - full).abs()
    far = dropped.loc[move.idxmax()]
    flips = dropped.loc[np.sign(dropped["r"]) != np.sign(full), "left_out"].tolist()
    sign = ("It keeps its sign without any single task." if not flips else
            f"Its sign flips without {listing(flips)} ({count_text(len(flips), len(dropped))} tasks).")
    caveat = (f"the jackknife shows single tasks moving r by up to {move.max():.2f}" if move.max() > JK_MOVE else
              f"no single task moves r by more than {move.max():.2f}")
    return {"jk_range": _range(dropped["r"]), "jk_full": num(full), "jk_task": str(far["left_out"]),
            "jk_r": num(far["r"]), "jk_sign_sentence": sign, "jk_caveat": caveat}


def partial_words(partial: pd.DataFrame, best: str) -> dict[str, str]:
    """Correlations with A's learned level partialled out (``similarity``, ``r``, ``ci_low``, ``ci_high``)."""
    part = partial.set_index("similarity")
    return {"partial_best": _fmt(part.loc[best]), "partial_best_sign": _sign_clause(part.loc[best]),
            "partial_fisher": _fmt(part.loc["fisher"]), "partial_tokens": _fmt(part.loc["token_overlap"])}


def peak_words(peaks: pd.DataFrame) -> dict[str, str]:
    """The quadratic fits (one row per :func:`forgetting.sweep.statistics.quadratic_peak`)."""
    counts = peaks["verdict"].value_counts()
    n, n_peak, n_open = len(peaks), int(counts.get("intermediate peak", 0)), int(counts.get("peak not resolved", 0))
    fa = peaks[(peaks["similarity"] == "fisher") & (peaks["forgetting"] == "forgetting_answer")].iloc[0]
    open_ci = int((~((peaks["b2_ci_high"] < 0) | (peaks["b2_ci_low"] > 0))).sum())  # includes 0, or undefined
    if n and share_word(open_ci / n) in ("most", "all"):
        width = (f"The curvature intervals of {count_text(open_ci, n)} fits include 0: a three-parameter curve "
                 "through points that come in mirror-image pairs is easy to bend and hard to pin down.")
    else:
        width = (f"The curvature intervals of {count_text(open_ci, n)} fits include 0; the rest exclude it, so "
                 "for those the sign of the curvature is resolved.")
    if n_peak == 0:
        meaning = (f"We see no intermediate-similarity peak that passes the rule (none of the {n} fits)"
                   + (f"; {n_open} have a hump in the point estimate that the intervals cannot resolve" if n_open
                      else ""))
    else:
        meaning = f"{count_text(n_peak, n).capitalize()} fits show an intermediate-similarity peak by the rule"
    return {
        "n_fits": str(n), "n_peak": str(n_peak), "n_unresolved": str(n_open),
        "fisher_b2": (f"{fa['b2']:.2f} [{num(fa['b2_ci_low'])}, {num(fa['b2_ci_high'])}]"
                      if math.isfinite(fa["b2"]) else "undefined"),
        "fisher_verdict": str(fa["verdict"]),
        "fisher_r2": f"{num(fa['r2_linear'])} to {num(fa['r2_quadratic'])}",
        "peak_width_sentence": width, "peak_meaning": meaning,
    }


def resampling_words(naive: pd.DataFrame, clustered: pd.DataFrame, n_tasks: int, n_boot: int = 2000) -> dict[str, str]:
    """The pair bootstrap against the task bootstrap of the strongest correlation (one row each of
    :func:`forgetting.sweep.statistics.similarity_correlations`, with ``n_boot_valid``)."""
    nr, cr = naive.iloc[0], clustered.iloc[0]
    nw, cw = nr.ci_high - nr.ci_low, cr.ci_high - cr.ci_low
    width = comparison_word(nw, cw, WIDTH_MARGIN, more="wider than", less="narrower than", same="about as wide as")
    valid = int(cr.n_boot_valid)
    undefined = n_boot - valid
    if undefined <= 0:
        boot = f"Every one of the {n_boot} task-bootstrap resamples gave a defined value."
    else:
        boot = (f"{share_word(undefined / n_boot).capitalize()} of the task-bootstrap resamples ({undefined} of "
                f"{n_boot}) drew too few distinct tasks for a defined correlation (two tasks give two pairs, a "
                f"correlation of ±1 or undefined); only {valid} gave a value, and the percentile interval is lumpy.")
    side = _side(cr.ci_low, cr.ci_high, cr.r)
    if side == "undefined" or not math.isfinite(cw):
        honest = "The task bootstrap gives no interval here, so the sweep pins down nothing about this correlation."
    elif cw <= PRECISE:
        honest = (f"The task-bootstrap interval is {cw:.2f} wide (at most {PRECISE:g}): a sweep over {n_tasks} tasks "
                  "pins this correlation down.")
    elif side == "neither":
        honest = (f"The task-bootstrap interval is {cw:.2f} wide and includes 0: a sweep over {n_tasks} tasks shows "
                  "neither the direction nor the size of this correlation.")
    else:
        honest = (f"The task-bootstrap interval is {cw:.2f} wide and lies {side} 0: a sweep over {n_tasks} tasks "
                  "shows the direction of this correlation, not its size.")
    return {
        "naive_ci": f"[{num(nr.ci_low)}, {num(nr.ci_high)}]", "cluster_ci": f"[{num(cr.ci_low)}, {num(cr.ci_high)}]",
        "naive_p": f"{nr.p_value:.2g}", "cluster_p": f"{cr.p_value:.2g}",
        "width_word": width,
        "min_p": f"1/{math.factorial(n_tasks)} = {1 / math.factorial(n_tasks):.2g}",
        "boot_sentence": boot, "honest_sentence": honest,
    }


def _exclusive(rows: pd.DataFrame, measures: Sequence[str]) -> tuple[list[str], list[str]]:
    ms = [m for m in measures if m in rows.index and math.isfinite(rows.loc[m, "r"])]
    return ([m for m in ms if rows.loc[m, "ci_low"] > 0], [m for m in ms if rows.loc[m, "ci_high"] < 0])


def meaning_words(correlations: pd.DataFrame, table: pd.DataFrame, effects: pd.DataFrame, measures: Sequence[str],
                  *, steps: int, profile: str) -> dict[str, str]:
    """The summary of "What it means": which measures predict which forgetting, and the caveats.

    Tables as for :func:`correlation_words` and :func:`task_effect_words`; ``steps``: training steps per
    task; ``profile``: the profile the chapter ran.
    """
    answer, loss = _pearson(correlations, "forgetting_answer"), _pearson(correlations, "forgetting_loss")
    base = [m for m in measures if m not in AFTER_A]
    a_up, a_down = _exclusive(answer, base)
    l_up, l_down = _exclusive(loss, base)
    if a_up and a_down:
        ans = (f"correlate with how much of A's answers is lost in both directions: positively for {_names(a_up)}, "
               f"negatively for {_names(a_down)} (intervals that exclude 0)")
    elif a_up:
        ans = ("predict how much of A's answers is lost: the answer-match drop correlates positively with "
               f"{_names(a_up)}, with intervals above 0")
    elif a_down:
        ans = ("predict how much of A's answers is lost, but the other way round: the answer-match drop correlates "
               f"negatively with {_names(a_down)}, with intervals below 0")
    else:
        ans = ("do not clearly predict how much of A's answers is lost: every interval of the correlation with the "
               "answer-match drop includes 0")
    parts = []
    if l_down:
        parts.append("it is the pairs that share little that lose more (negative correlations, intervals below 0, "
                     f"for {_names(l_down)})")
    if l_up:
        parts.append(f"the more similar pairs lose more (positive correlations, intervals above 0, for {_names(l_up)})")
    loss_text = ("In loss, " + "; and ".join(parts)) if parts else \
        "In loss, no similarity measure has a correlation whose interval excludes 0"
    opposite = [m for m in base if (m in a_up and m in l_down) or (m in a_down and m in l_up)]
    lead = (f"For {_names(opposite)} the two forgetting measures disagree in sign. The greedy answers above show why "
            "they can:" if opposite else
            "No measure's answer-match and loss correlations exclude 0 on opposite sides, but the greedy answers "
            "above show how the two can come apart:")
    grad = answer.reindex([m for m in GRADIENT if m in measures]).dropna(subset=["r"])
    clear = [m for m in grad.index if grad.loc[m, "ci_low"] > 0 or grad.loc[m, "ci_high"] < 0]
    grad_text = ("are undefined" if grad.empty else f"exclude 0 for all of them ({_names(clear)})"
                 if len(clear) == len(grad) else f"exclude 0 only for {_names(clear)}" if clear else
                 f"all have intervals that include 0 ({_names(grad.index)})")
    align = table["alignment_at_a"].dropna() if "alignment_at_a" in table else pd.Series(dtype=float)
    k = int((align.abs() < SMALL_COS).sum())
    near = (f"is near 0 (|cos| < {SMALL_COS:g}) for {share_word(k / len(align))} pairs ({count_text(k, len(align))})"
            if len(align) else "was not measured")
    if len(align) and share_word(k / len(align)) in ("most", "all"):
        near += " (chapter 2's split-half null explains why)"
    eff = effects.set_index("forgetting")
    after = float((table["exact_a_before"] - table["forgetting_exact"]).max())
    saturation = (f"after {steps} steps of any B, A's exact match is at most {after:.2f}"
                  + (" (exact match has saturated)" if after <= SATURATED else "")
                  + f"; which task was trained first explains {pct(eff.loc['forgetting_exact', 'by_a'])} of the "
                  f"exact-match drop and {pct(eff.loc['forgetting_answer', 'by_a'])} of the answer-match drop, and "
                  "the more of it A explains, the less room is left for any pairwise predictor")
    tokens = table["token_overlap"].dropna() if "token_overlap" in table else pd.Series(dtype=float)
    top = table.loc[tokens.index].assign(key=[tuple(sorted(p)) for p in zip(table.loc[tokens.index, "task_a"],
                                                                             table.loc[tokens.index, "task_b"])])
    top = top.groupby("key")["token_overlap"].mean().sort_values(ascending=False)
    profile_text = ("Even the full profile's sweep is one small model and synthetic tasks: a test of the claim on this "
                    "model, not a replication of the paper." if profile == "full" else
                    "A correlation measured this way is a hypothesis for the `full` profile, not a replication of "
                    "the paper.")
    return {
        "answer_summary": ans, "loss_summary": loss_text, "disagree_lead": lead, "grad_verdict": grad_text,
        "small_alignment_share": near, "saturation_sentence": saturation,
        "overlap_range": _range(tokens),
        "top_overlap_pair": (f"{top.index[0][0]} and {top.index[0][1]} (token overlap {top.iloc[0]:.2f})"
                             if len(top) else "not measured"),
        "profile_sentence": profile_text,
    }
