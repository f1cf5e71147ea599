"""Chapter 05 (attention heads): every glued number and judging word, from the chapter's tables.

Rules (the constants below):

- two fractions of severe heads (the lower against the upper half of the model, earlier old tasks
  against the just-trained one) differ only when they are more than ``MARGIN`` (5 percentage
  points) apart; otherwise "about as many" / "about equally";
- the pairs "differ widely" when their severe fractions span at least ``WIDE`` (10 percentage
  points), else they are "alike";
- a pair has "almost no head disrupted beyond noise" when at most ``NOISE_LEVEL`` (10 %, twice
  the 5 % that noise alone would flag) of its heads are severe;
- the share of a fixed threshold's count that "any training causes" is :func:`~forgetting.ledger.prose.share_word` of the
  larger null fraction over the real stage's fraction at that threshold (capped at 1); the curves
  "run close together" when that share is "most" or "all" at both the threshold and half of it;
- the pair with "the sharpest early forgetting" is the one with the largest early loss rise;
- head disruption and early forgetting "go together" only when the rank correlation's interval lies
  above 0 (:func:`~forgetting.ledger.prose.sign_word`); an interval that includes 0 shows no association.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from forgetting.book.narrative._text import listing, num, pct
from forgetting.ledger.prose import comparison_word, share_word, sign_word

MARGIN = 0.05
WIDE = 0.10
NOISE_LEVEL = 0.10
PAPER_RANGE = (0.15, 0.23)  # forgetting.viz.heads.PAPER_RANGE
ADJACENT = "old task = the task trained just before"
EVERY = "every earlier task"


def severity_words(fractions: pd.DataFrame, pair_table: pd.DataFrame, tasks: list[str], n_seeds: int) -> dict[str, str]:
    """The severe fraction overall, per pair and per layer, and its profile over depth.

    ``fractions``: :func:`forgetting.viz.heads.bootstrap_over_heads` of both scopes (``scope``, ``layer``,
    ``fraction``, ``ci_low``, ``ci_high``, ``n_heads``); ``pair_table``:
    :func:`forgetting.mechanisms.heads.severe_fractions` over every earlier task (``stage``, ``old_task``,
    ``layer``, ``fraction``, ``n_severe``, ``n_heads``); ``tasks``: the sequence's tasks in order.
    """
    fr = fractions.set_index(["scope", "layer"])
    adj = fr.loc[(ADJACENT, "all")]
    per_pair = pair_table[pair_table["layer"] == "all"]
    earlier = per_pair[[old != tasks[int(s) - 2] for s, old in zip(per_pair["stage"], per_pair["old_task"])]]
    if len(earlier):
        rate = float(earlier["n_severe"].sum() / earlier["n_heads"].sum())
        more = comparison_word(rate, float(adj["fraction"]), MARGIN, more="more", less="fewer", same="about as many")
        earlier_sentence = (f"For an old task that was trained earlier still, the nulls continue the last task, not the "
                            f"old one: a weaker control, under which {more} heads look severe ({pct(rate)} against "
                            f"{pct(adj['fraction'])}).")
    else:
        earlier_sentence = "Every analysed old task is the one trained just before its stage."

    def layers(scope):
        rows = fractions[(fractions["scope"] == scope) & (fractions["layer"] != "all")]
        return rows.assign(order=rows["layer"].astype(int)).sort_values("order").set_index("layer")["fraction"]

    layers_adj, layers_all = layers(ADJACENT), layers(EVERY)
    half = len(layers_all) // 2
    lower, upper = float(layers_all.iloc[:half].mean()), float(layers_all.iloc[half:].mean())
    side = comparison_word(lower, upper, MARGIN, more="lower", less="upper", same="same")
    half_sentence = {"lower": "the lower half of the model is hit more", "upper": "the upper half of the model is hit more",
                     "same": "the lower and the upper half of the model are hit about equally"}[side]
    verdict = {"upper": "severe heads are more frequent in the upper half of the model, not in the lower layers the "
                        "paper names",
               "lower": "severe heads are more frequent in the lower half of the model, as the paper reports",
               "same": "severe heads are about as frequent in the lower as in the upper half of the model, so the "
                       "paper's lower-layer susceptibility does not show"}[side]
    values = per_pair["fraction"]
    differ = ("" if len(values) < 2 else "the pairs differ widely" if values.max() - values.min() >= WIDE
              else "the pairs are alike")
    whiskers = ("With one seed, the whiskers only say how much the fraction depends on which heads were measured; "
                "the full profile adds the spread over seeds" if n_seeds == 1 else
                f"The whiskers pool the heads of {n_seeds} seeds and still say nothing about the spread between "
                "seeds, which an interval over seeds gives")
    return {
        "n_seeds": str(n_seeds), "adj_fraction": pct(adj["fraction"]),
        "adj_ci": f"{pct(adj['ci_low'])} to {pct(adj['ci_high'])}", "adj_n": str(int(adj["n_heads"])),
        "all_fraction": pct(fr.loc[(EVERY, "all"), "fraction"]),
        "pair_fractions": listing(f"{pct(v)} (stage {int(s)}, {o})" for s, o, v in
                                  zip(per_pair["stage"], per_pair["old_task"], per_pair["fraction"])),
        "earlier_sentence": earlier_sentence,
        "layers_adj": listing(pct(v) for v in layers_adj), "layers_all": listing(pct(v) for v in layers_all),
        "lower_half": pct(lower), "upper_half": pct(upper), "half_sentence": half_sentence,
        "layer_verdict": verdict, "pairs_differ": differ or "there is one pair", "whisker_sentence": whiskers,
    }


def threshold_words(curves: pd.DataFrame) -> dict[str, str]:
    """What a fixed JS threshold calls severe in the first pair, for the real stage and the nulls.

    ``curves``: :func:`forgetting.viz.heads.threshold_curves` (``pair``, ``source``, ``threshold``,
    ``fraction``).
    """
    pair = curves["pair"].iloc[0]
    first = curves[curves["pair"] == pair]
    obs = first[first["source"] == "observed"]
    band = obs[obs["fraction"].between(*PAPER_RANGE)]["threshold"]
    cut = float(band.min()) if len(band) else float(first["threshold"].median())

    def at(t):
        grid = first["threshold"].iloc[(first["threshold"] - t).abs().argmin()]
        row = first[first["threshold"] == grid].set_index("source")["fraction"]
        nulls = row.drop("observed")
        share = float(nulls.max()) / float(row["observed"]) if row["observed"] > 0 else math.nan  # may exceed 1
        text = " and ".join(f"{pct(row[s])} ({s.split(': ')[1]})" for s in nulls.index)
        return float(row["observed"]), text, share

    obs_cut, null_cut, share_cut = at(cut)
    obs_half, null_half, share_half = at(cut / 2)
    if len(band):
        where = f"of {band.min():.2f} bits" if band.min() == band.max() else f"between {band.min():.2f} and {band.max():.2f} bits"
        band_sentence = (f"For {pair}, a fixed JS threshold {where} reproduces the paper's 15 to 23 percent; there the "
                         f"nulls, which forgot nothing, would have {null_cut} of their heads \"severe\".")
    else:
        band_sentence = (f"For {pair}, no threshold of the grid gives the paper's 15 to 23 percent; at the grid's median "
                         f"threshold, {cut:.2f} bits, {pct(obs_cut)} of the real heads and {null_cut} of the nulls' "
                         "are \"severe\".")
    if math.isnan(share_cut):
        curves_sentence = "At that threshold no real head is counted, so the comparison with the nulls says nothing."
    else:
        capped = lambda x: min(1.0, x) if math.isfinite(x) else 0.0
        close = share_word(capped(share_cut)) in ("most", "all") and share_word(capped(share_half)) in ("most", "all")
        curves_sentence = ((("The curves run close together: " if close else "")
                            + f"at that threshold the nulls reach {pct(share_cut)} of the real stage's fraction, so "
                            f"{share_word(capped(share_cut))} of what a fixed threshold counts is the movement that any "
                            "training causes") + (", and only the gap between the red curve and the others is the new "
                                                  "task's doing." if share_cut < 1 else
                                                  "; the red curve does not rise above the others there."))
    reach = (f"the nulls, which forgot nothing, reach {pct(share_cut)} and {pct(share_half)} of the real fraction at "
             "that threshold and at half of it")
    meaning = ((f"That the paper's 15 to 23 percent can be reproduced by a fixed threshold means little: such a "
                f"threshold picks any fraction, and {reach}.") if len(band) else
               (f"A fixed threshold of this grid does not even reproduce the paper's 15 to 23 percent for the first "
                f"pair; whatever it gives is picked by the threshold, and {reach}."))
    return {"band_sentence": band_sentence, "half_cut": f"{cut / 2:.2f}",
            "obs_at_half": pct(obs_half), "null_at_half": null_half, "curves_sentence": curves_sentence,
            "meaning_threshold": meaning}


def timing_words(timing: pd.DataFrame, rho: Any, steps_per_task: int) -> dict[str, str]:
    """Early forgetting against the severe fraction, pair by pair.

    ``timing``: one row per pair (``stage``, ``old_task``, ``severe_fraction``, ``early_rise``,
    ``total_rise``, ``first_eval_step``; steps count from the start of the sequence); ``rho``: the Spearman
    correlation of the severe fraction with the early rise (``r``, ``ci_low``, ``ci_high``, ``p_value``).
    """
    sharp = timing.loc[timing["early_rise"].idxmax()]
    top = timing.loc[timing["severe_fraction"].idxmax()]
    steps = int(sharp["first_eval_step"] - steps_per_task * (int(sharp["stage"]) - 1))
    head = f"In stage {int(sharp['stage'])}, {sharp['old_task']}"
    if sharp["early_rise"] <= 0:
        early = (f"No pair's loss rises at the first evaluation of its stage (the largest change is "
                 f"{sharp['early_rise']:+.2f} nats per token, for {sharp['old_task']} in stage {int(sharp['stage'])})")
    elif sharp["total_rise"] >= sharp["early_rise"]:
        early = (f"{head} loses {pct(sharp['early_rise'] / sharp['total_rise'])} of its total loss rise "
                 f"({num(sharp['early_rise'])} of {num(sharp['total_rise'])} nats per token) in the first {steps} "
                 "steps, the sharpest early forgetting of the run")
    else:
        early = (f"{head}'s loss rises by {num(sharp['early_rise'])} nats per token in the first {steps} steps, the "
                 f"sharpest early forgetting of the run, more than over the whole stage ({sharp['total_rise']:+.2f})")
    low = sharp["severe_fraction"] <= NOISE_LEVEL
    early += (f", yet only {pct(sharp['severe_fraction'])} of its heads are severe (noise alone would flag about 5 %)."
              if low else f", and {pct(sharp['severe_fraction'])} of its heads are severe.")
    side = sign_word(rho.ci_low, rho.ci_high, above="above", below="below", neither="neither")
    top_text = (f"the pair with the most severe heads ({top['old_task']} in stage {int(top['stage'])}, "
                f"{pct(top['severe_fraction'])}) changes its loss by {top['early_rise']:+.2f} nats per token in the "
                "first evaluation of the stage")
    if low:
        meaning = ("Most telling is the timing: the most abrupt forgetting of the run comes with almost no head "
                   f"disrupted beyond noise ({pct(sharp['severe_fraction'])}), while {top_text}.")
    else:
        meaning = (f"The timing: the most abrupt forgetting of the run comes with {pct(sharp['severe_fraction'])} of "
                   f"the heads severe, and {top_text}.")
    meaning += {
        "neither": (" On this model head disruption and early forgetting are not shown to go together (the rank "
                    "correlation's interval includes 0); the change that forgets may lie elsewhere (the chapters on "
                    "gradients and drift look there)."),
        "above": (" Across pairs the severe fraction and the early loss rise go together (the rank correlation's "
                  "interval lies above 0), the paper's direction."),
        "below": (" Across pairs they go against each other (the rank correlation's interval lies below 0): more "
                  "disrupted heads, less early forgetting."),
    }[side]
    return {
        "early_sentence": early, "rho": num(rho.r), "rho_ci": f"{num(rho.ci_low)} to {num(rho.ci_high)}",
        "rho_p": num(rho.p_value), "n_pairs": str(len(timing)), "meaning_timing": meaning,
    }


__all__ = ["severity_words", "threshold_words", "timing_words"]
