"""Chapter 02 (gradient interference): every glued number and judging word, from the chapter's tables.

Rules (the constants below):

- a pair is **noisy** when its whole-model split-half null cosine is below ``NOISY_NULL`` (0.2);
  otherwise "two halves of its own data agree on a direction";
- the new task's gradient "points against" the old one when the whole-model cosine is < 0;
- the per-layer conflict of heads is "not spread evenly" when the layers' rates differ by more than
  ``UNEVEN`` (20 percentage points), else "spread about evenly";
- two rates (or excesses over the null) are "more often" / "larger" only when they differ by more
  than ``MARGIN`` (5 percentage points), else "about as often" / "about the same";
- the first-order estimate is "close" / "within X %" of the observed change only when the relative
  error ``|predicted / observed - 1|`` is at most ``TOLERANCE`` (10 %) for every pair; otherwise the
  text counts the pairs within it and says how far off the worst one is;
- the update is "nearly orthogonal" to the old gradient when every ``|cos(g_old, delta)|`` is at most
  ``ORTHOGONAL`` (0.1);
- the gradients of "most matrices conflict" / "point the same way" by :func:`~forgetting.ledger.prose.share_word` of the
  conflict rate (or of one minus it) of both attention and MLP matrices;
- alignment as a predictor of the stage's forgetting is "weak" when the rank correlation's interval
  includes 0 (:func:`~forgetting.ledger.prose.sign_word`), and follows or goes against the claim when it excludes 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from forgetting.book.narrative._text import listing, num, pct
from forgetting.ledger.prose import comparison_word, count_text, share_word, sign_word

NOISY_NULL = 0.2
UNEVEN = 0.20
MARGIN = 0.05
TOLERANCE = 0.10
ORTHOGONAL = 0.1
OBSERVED = "old vs new"  # forgetting.viz.gradients.OBSERVED: the measure of the head table's old-vs-new rows


def pair_words(pairs: pd.DataFrame, heads: pd.DataFrame) -> dict[str, str]:
    """The first pair's cosines, the spread of its heads' conflict over layers, and the noisy pairs.

    ``pairs``: :func:`forgetting.viz.gradients.pair_summary` (``pair``, ``old_task``, ``new_task``,
    ``cosine_all``, ``cosine_attention``, ``cosine_mlp``, ``null_all``); ``heads``:
    :func:`forgetting.viz.gradients.head_alignment_table` (``pair``, ``measure``, ``layer``, ``value``).
    """
    first = pairs.iloc[0]
    noisy_first = first["null_all"] < NOISY_NULL
    agree = ("two halves of its own data hardly agree on a direction" if noisy_first
             else "two halves of its own data agree on a direction")
    points = ("and the new task's gradient points against it (a negative cosine)" if first["cosine_all"] < 0
              else "and the new task's gradient does not oppose it (a cosine of 0 or more)")
    words = {
        "first_pair": f"{first['old_task']} against {first['new_task']}",
        "first_cos_all": num(first["cosine_all"]),
        "first_cos_attn": num(first["cosine_attention"]),
        "first_cos_mlp": num(first["cosine_mlp"]),
        "first_null": num(first["null_all"]),
        "first_null_clause": f"{agree}, {points}" + (", though with so noisy a gradient the cosine says little"
                                                     if noisy_first else ""),
    }
    h = heads[(heads["pair"] == first["pair"]) & (heads["measure"] == OBSERVED)]
    by_layer = h.groupby("layer")["value"].apply(lambda v: float((v < 0).mean()))
    words["first_layer_sentence"] = _layer_sentence(by_layer)
    noisy = pairs[pairs["null_all"] < NOISY_NULL]
    if len(noisy):
        named = listing((f"{p} ({num(v)})" for p, v in zip(noisy["pair"], noisy["null_all"])), "; ")
        words["noisy_sentence"] = (
            f"For {named} the whole-model null is below {NOISY_NULL:g}: the old task's gradient is mostly noise "
            "there, and the cosines of such a pair say little either way.")
    else:
        low = pairs.loc[pairs["null_all"].idxmin()]
        words["noisy_sentence"] = (
            f"Every pair's whole-model null is at least {NOISY_NULL:g} (the lowest is {num(low['null_all'])}, "
            f"for {low['pair']}): in no pair is the old task's gradient mostly noise.")
    return words


def _layer_sentence(by_layer: pd.Series) -> str:
    if by_layer.empty:
        return "No head of this pair has a defined cosine."
    hi, lo = by_layer.idxmax(), by_layer.idxmin()
    if by_layer.max() == 0:
        return "No head of the four matrices has a negative cosine, in any layer."
    if len(by_layer) == 1:
        return f"In layer {int(hi)}, {pct(by_layer.max())} of the heads of all four matrices conflict."
    if by_layer.max() - by_layer.min() > UNEVEN:
        return (f"The conflict is not spread evenly: in layer {int(hi)} a fraction {pct(by_layer.max())} of the "
                f"heads of all four matrices conflict, against {pct(by_layer.min())} in layer {int(lo)}.")
    return (f"The conflict is spread about evenly over the layers: from {pct(by_layer.min())} (layer {int(lo)}) "
            f"to {pct(by_layer.max())} (layer {int(hi)}) of the heads of all four matrices conflict.")


def _rates(conflicts: pd.DataFrame) -> dict[str, float]:
    row = conflicts.set_index("units")
    out = {}
    for key, units in (("attn", "attention matrices"), ("mlp", "MLP matrices"), ("head", "attention heads")):
        out[key], out[key + "_null"] = float(row.loc[units, "observed"]), float(row.loc[units, "null"])
        out[key + "_excess"] = out[key] - out[key + "_null"]
    return out


def conflict_words(conflicts: pd.DataFrame, n_pairs: int) -> dict[str, str]:
    """Conflict rates of attention and MLP matrices and heads, against the split-half null.

    ``conflicts``: :func:`forgetting.viz.gradients.conflict_summary` (``units``, ``observed``, ``null``).
    """
    r = _rates(conflicts)
    null_cmp = comparison_word(r["attn_null"], r["mlp_null"], MARGIN, more="more", less="less", same="same")
    raw_cmp = comparison_word(r["attn"], r["mlp"], MARGIN, more="more", less="less", same="same")
    if null_cmp == "more" and raw_cmp == "more":
        null_sentence = ("The null also disagrees more often in attention: part of attention's higher raw rate is its "
                         "noisier gradients, which is why the raw rate alone is not evidence for the claim.")
    elif null_cmp == "more":
        null_sentence = ("The null disagrees more often in attention than in the MLP: attention's gradients are the "
                         "noisier, so its raw rate overstates its conflict compared with the MLP's.")
    elif null_cmp == "less":
        null_sentence = ("The null disagrees less often in attention than in the MLP, so noise does not inflate "
                         "attention's raw rate compared with the MLP's.")
    else:
        null_sentence = ("The null disagrees about as often in attention as in the MLP, so noise does not explain a "
                         "difference between their raw rates.")
    if min(r["attn_excess"], r["mlp_excess"]) < 0:
        null_sentence += (" A negative excess means the two tasks' gradients disagree in sign less often than two "
                          "halves of the old task's own data do.")
    return {
        "n_pairs": str(int(n_pairs)),
        "attn_rate": pct(r["attn"]), "mlp_rate": pct(r["mlp"]), "head_rate": pct(r["head"]),
        "attn_null_rate": pct(r["attn_null"]), "mlp_null_rate": pct(r["mlp_null"]),
        "head_null_rate": pct(r["head_null"]),
        "attn_excess": f"{100 * r['attn_excess']:.0f}", "mlp_excess": f"{100 * r['mlp_excess']:.0f}",
        "attn_vs_mlp": comparison_word(r["attn"], r["mlp"], MARGIN, more="more often than", less="less often than",
                                       same="about as often as"),
        "excess_verdict": comparison_word(r["attn_excess"], r["mlp_excess"], MARGIN),
        "null_sentence": null_sentence,
    }


def _errors(segment: pd.DataFrame, t: float) -> pd.Series:
    """``|predicted / observed - 1|`` per pair at fraction ``t`` (inf where nothing was observed to change)."""
    at = segment[np.isclose(segment["t"], t)].set_index("pair")
    with np.errstate(divide="ignore", invalid="ignore"):
        err = (at["predicted"] / at["observed"] - 1).abs()
    return err.where(at["observed"] != 0, math.inf)


def _small_t_sentence(segment: pd.DataFrame) -> str:
    t_min = float(segment["t"].min())
    ts = [t_min] + ([0.01] if t_min < 0.01 and np.isclose(segment["t"], 0.01).any() else [])
    errs = {t: _errors(segment, t) for t in ts}
    worst = {t: float(e.max()) for t, e in errs.items()}
    if worst[t_min] <= TOLERANCE:
        text = ("For a small fraction of the stage's update the first-order estimate is close to the observed change "
                f"for every pair: within {pct(worst[t_min])} at t = {t_min:g}")
        for t in ts[1:]:
            text += (f", within {pct(worst[t])} at t = {t:g}" if worst[t] <= TOLERANCE
                     else f", but off by up to {pct(worst[t])} at t = {t:g}")
        return text + ". The gradient at the start tells how the old task's loss begins to move."
    n = len(errs[t_min])
    parts = [f"{count_text(int((e <= TOLERANCE).sum()), n)} pairs at t = {t:g} (the worst is off by {pct(worst[t])})"
             for t, e in errs.items()]
    at = segment[np.isclose(segment["t"], t_min)].set_index("pair")
    bad = errs[t_min].idxmax()
    return (f"The first-order estimate is within {pct(TOLERANCE)} of the observed change for " + " and for ".join(parts)
            + f"; the worst pair, {bad}, changes by {at.loc[bad, 'observed']:.2g} nats per token at t = {t_min:g}, "
            "so even a small fraction of the update does not follow the starting gradient for every pair.")


def alignment_words(segment: pd.DataFrame, whole: pd.DataFrame, pairs: pd.DataFrame, conflicts: pd.DataFrame,
                    rho: Any) -> dict[str, str]:
    """The first-order estimate along the update, the alignment as a predictor, and "What it means".

    ``segment``: one row per (pair, t) with ``pair``, ``t``, ``predicted``, ``observed``; ``whole``: one row
    per pair of :func:`forgetting.mechanisms.gradients.observed_vs_predicted` (``observed``, ``predicted``,
    ``cosine``); ``pairs`` and ``conflicts`` as for :func:`pair_words` / :func:`conflict_words`; ``rho``: the
    Spearman correlation of the whole-model cosine with the stage's loss change (``r``, ``ci_low``,
    ``ci_high``, ``p_value``).
    """
    t_min = float(segment["t"].min())
    first_step = segment[np.isclose(segment["t"], t_min)].set_index("pair")["observed"]
    aligned = pairs.set_index("pair")["cosine_all"].reindex(first_step.index)
    n = len(first_step)
    k_dir = int((np.sign(-aligned) == np.sign(first_step)).sum())
    end = segment[np.isclose(segment["t"], 1.0)].set_index("pair")
    ratio = end["predicted"] / end["observed"]
    end_worst = float(_errors(segment, 1.0).max())
    k_sign = int((np.sign(whole["observed"]) == np.sign(whole["predicted"])).sum())
    max_cos = float(whole["cosine"].abs().max())
    linear = (f"Even over the whole stage the loss is close to linear along the update (within {pct(end_worst)} at "
              "t = 1)" if end_worst <= TOLERANCE else
              f"Over a whole stage the loss is far from linear along the update (the estimate is off by up to "
              f"{pct(end_worst)} at t = 1)")
    linear += (f", and the stage's net update is nearly orthogonal to the old task's starting gradient "
               f"(|cos(g_old, Δθ)| ≤ {max_cos:.3f})." if max_cos <= ORTHOGONAL else
               f"; the stage's net update makes a cosine of up to {max_cos:.3f} in magnitude with the old task's "
               "starting gradient.")
    side = sign_word(rho.ci_low, rho.ci_high, above="above", below="below", neither="neither")
    lead = {"neither": "As a predictor of how much is forgotten over the whole stage it is weak:",
            "below": "As a predictor of how much is forgotten over the whole stage it points the claim's way:",
            "above": "As a predictor of how much is forgotten over the whole stage it points against the claim:"}[side]
    words = {
        "small_t_sentence": _small_t_sentence(segment),
        "end_ratio_range": f"{ratio.min():.2f} to {ratio.max():.2f}",
        "end_sign_agree": count_text(k_sign, len(whole)),
        "linear_sentence": linear,
        "first_step_agree": count_text(k_dir, n),
        "n_pairs_seg": str(n),
        "rho_lead": lead,
        "rho_forgetting": num(rho.r),
        "rho_ci": f"[{num(rho.ci_low)}, {num(rho.ci_high)}]",
        "rho_p": num(rho.p_value),
        "rho_verdict": "includes 0" if side == "neither" else "excludes 0",
    }
    words.update(_meaning(_rates(conflicts), k_dir, n, side, end_worst > TOLERANCE))
    return words


def _meaning(r: dict[str, float], k_dir: int, n: int, side: str, nonlinear: bool) -> dict[str, str]:
    a, m = r["attn"], r["mlp"]
    text = (f"At the start of each stage {share_word(a)} of the attention matrices ({pct(a)}) and {share_word(m)} "
            f"of the MLP matrices ({pct(m)}) have a negative old-vs-new cosine")
    if min(a, m) >= 0.6:
        text += ": the gradients of most matrices conflict"
    elif max(a, m) <= 0.4:
        text += ": the gradients of most matrices point the same way"
    wa, wm = (comparison_word(x, x_null, MARGIN, more="more often than", less="less often than",
                              same="about as often as") for x, x_null in ((a, r["attn_null"]), (m, r["mlp_null"])))
    text += (f"; in both, that is {wa} the split-half null disagrees with itself." if wa == wm else
             f"; in attention that is {wa} the split-half null disagrees with itself, in the MLP {wm}.")
    ea, em = r["attn_excess"], r["mlp_excess"]
    nums = f"({100 * ea:.0f} against {100 * em:.0f} percentage points)"
    if ea - em > MARGIN:
        single = ("Our data point to the attention projections: after subtracting the null, their excess conflict is "
                  f"larger than the MLP's {nums}")
    else:
        single = ("Our data do not single out the attention projections: after subtracting the null, their excess "
                  f"conflict is {comparison_word(ea, em, MARGIN)} the MLP's {nums}")
    single += (", and attention gradients are noisier to begin with." if r["attn_null"] - r["mlp_null"] > MARGIN
               else ".")
    direction = (f"The alignment at the start of a stage gives the direction in which the old task's loss starts to "
                 f"move for {count_text(k_dir, n)} pairs")
    if side == "neither":
        direction += (", but not the size of the forgetting after a whole stage (the rank correlation's interval "
                      "includes 0)" + (", where the path has left the region in which the loss is linear" if nonlinear
                                       else "") +
                      ". The paper's \"alignment predicts forgetting\" may hold across many task pairs (chapter 6 "
                      "sweeps pairs); within one short sequence on one small model it is a statement "
                      "about the first steps only.")
    elif side == "below":
        direction += (", and its rank correlation with the forgetting over a whole stage is negative beyond its "
                      "interval: more conflict, more forgetting, the claim's direction, on pairs that share tasks.")
    else:
        direction += (", but its rank correlation with the forgetting over a whole stage is positive beyond its "
                      "interval: more conflict goes with less forgetting here, against the claim.")
    return {"meaning_conflict": text, "meaning_attention": single, "meaning_alignment": direction}
