"""Chapter 03 (representational drift): every glued number and judging word, from the chapter's tables.

Rules (the constants below):

- a pair's drift "stands clear of both nulls" when every intermediate layer's observed CKA is below
  both nulls' (``clear_layers == n_layers`` of :func:`forgetting.viz.drift.drift_summary`); the excess
  drift is "absent" for a pair whose mean drop is no larger than the larger null's (``excess <= 0``),
  and the text names those pairs or says that there are none;
- the nulls "grow with depth" when the larger null's drop at the last layer exceeds the one after the
  first block by more than ``DEPTH_MARGIN`` (0.02); heads "change more in the upper layers" (or
  more than the residual stream) when the mean CKAs differ by more than ``CKA_MARGIN`` (0.02);
- the biased estimator "overstates the similarity" when the debiased drop exceeds the biased one by
  more than ``CKA_MARGIN``; the readout and the estimator "change the number" when the
  intermediate-layer drops of the readouts and estimators span more than ``READOUT_SPREAD`` (0.05);
- the part of the drop "training does anyway" is :func:`~forgetting.ledger.prose.share_word` of the larger null's mean drop
  over the observed mean drop (capped at 1).
"""

from __future__ import annotations

import math

import pandas as pd

from forgetting.book.narrative._text import listing, num, pct
from forgetting.ledger.prose import comparison_word, count_text, share_word

PAPER_DROP = (0.32, 0.47)  # forgetting.viz.drift.PAPER_DROP
DEPTH_MARGIN = 0.02
CKA_MARGIN = 0.02
READOUT_SPREAD = 0.05
OBSERVED = "observed (before vs after)"  # forgetting.viz.drift.SOURCES[""]


def _null_max(summary: pd.DataFrame) -> pd.Series:
    cols = [c for c in ("continue_drop", "reseed_drop") if c in summary]
    return summary[cols].max(axis=1) if cols else pd.Series(0.0, index=summary.index)


def drift_words(summary: pd.DataFrame, middle) -> dict[str, str]:
    """The intermediate-layer drops of all pairs, the first pair's against its nulls, the clear and the
    unclear pairs, and "What it means" about drift and its excess over the nulls.

    ``summary``: :func:`forgetting.viz.drift.drift_summary` (``pair``, ``old_task``, ``new_task``, ``drop``,
    ``continue_drop``, ``reseed_drop``, ``excess``, ``clear_layers``, ``n_layers``); ``middle``: the
    intermediate layers.
    """
    low, high = PAPER_DROP
    n = len(summary)
    first = summary.iloc[0]
    k_range = int(((summary["drop"] >= low) & (summary["drop"] <= high)).sum())
    words = {
        "middle_layers": listing(middle),
        "n_pairs": str(n),
        "drop_min": num(summary["drop"].min()), "drop_max": num(summary["drop"].max()),
        "drop_mean": num(summary["drop"].mean()),
        "n_in_range": count_text(k_range, n),
        "first_pair": f"{first['old_task']} while training {first['new_task']}",
        "first_drop": num(first["drop"]),
        "first_continue": num(first.get("continue_drop", math.nan)),
        "first_reseed": num(first.get("reseed_drop", math.nan)),
    }
    clear = summary[summary["clear_layers"] == summary["n_layers"]]
    if len(clear):
        by = (f"{num(clear['excess'].min())} to {num(clear['excess'].max())}" if len(clear) > 1
              else num(clear["excess"].iloc[0]))
        words["clear_sentence"] = (f"The drop stands clear of both nulls in every intermediate layer for "
                                   f"{count_text(len(clear), n)} pairs ({listing(clear['pair'], '; ')}), by {by} "
                                   "beyond the larger null.")
    else:
        words["clear_sentence"] = ("In no pair does the drop stand clear of both nulls in every intermediate layer "
                                   f"(at most {int(summary['clear_layers'].max())} of "
                                   f"{int(summary['n_layers'].max())} layers in a pair).")
    absent = summary[summary["excess"] <= 0]
    if len(absent):
        words["unclear_sentence"] = (
            f"For {listing(absent['pair'], '; ')} the mean drop is no larger than the larger null's: there the old "
            "task's representations move as much as they would under continued training or retraining of the "
            "previous task, and nothing in this measurement singles out the new task.")
    else:
        words["unclear_sentence"] = (f"Every pair's mean drop exceeds the larger null's, by at least "
                                     f"{num(summary['excess'].min())}.")
    words["meaning_drift"] = (
        f"On our model the old task's intermediate-layer representations drift by {words['drop_min']} to "
        f"{words['drop_max']} in CKA when the next task trains; {words['n_in_range']} pairs fall inside the paper's "
        "range.")
    if len(absent) == 0:
        presence = f"it is present in every pair (at least {num(summary['excess'].min())})"
    elif len(absent) == n:
        presence = f"it is absent (no larger than a null's) for all {n} pairs" if n > 1 else "it is absent"
    else:
        presence = f"it is absent (no larger than a null's) for {len(absent)} of {n} pairs"
    words["meaning_excess"] = (
        f"Only the excess over both nulls is drift caused by the new task: {num(summary['excess'].mean())} on "
        f"average against a raw drop of {words['drop_mean']}, and {presence}.")
    return words


def layer_words(by_layer: pd.DataFrame, summary: pd.DataFrame, middle) -> dict[str, str]:
    """Which layers drift most, whether the nulls grow with depth, and "What it means" about the nulls.

    ``by_layer``: indexed by layer (0 = the embedding output), columns ``drop``, ``null_drop`` (the larger
    null's), ``excess``, each the mean over pairs; ``summary`` as for :func:`drift_words`.
    """
    last = int(by_layer.index.max())
    null_first, null_last = float(by_layer["null_drop"].iloc[1]), float(by_layer["null_drop"].iloc[-1])
    grows = null_last - null_first > DEPTH_MARGIN
    peak = int(by_layer["excess"].idxmax())
    where = ("in an intermediate layer" if peak in set(middle) else "at the last block's output" if peak == last
             else "at the embedding output")
    null, drop = float(_null_max(summary).mean()), float(summary["drop"].mean())
    share = max(0.0, min(1.0, null / drop)) if drop > 0 else 1.0
    meaning = (f"Of that drop, {share_word(share)} ({pct(share)}) is what training does anyway: continuing the "
               "previous task or retraining it with another seed moves the representations too (the larger null's "
               f"mean drop is {num(null)} against {num(drop)} observed)" + (", more so in deeper layers." if grows
                                                                             else "."))
    return {
        "meaning_nulls": meaning,
        "deepest_drop_layer": str(int(by_layer["drop"].idxmax())),
        "deepest_excess_layer": str(peak),
        "last_layer": str(last),
        "null_first": num(null_first), "null_last": num(null_last),
        "null_trend": "but the nulls grow with depth too" if grows else "while the nulls do not grow with depth",
        "null_trend_end": ("deeper layers move more under any training" if grows
                           else "the depth profile of the drop is not the nulls'"),
        "peak_sentence": (f"Here the peak is {where}" + (f"; with {last} blocks the two are hardly apart."
                                                                  if last <= 6 else ".")),
    }


def readout_words(readouts: pd.DataFrame, middle, n_examples: int, n_features: int) -> dict[str, str]:
    """The first pair's intermediate-layer drop under each readout and estimator.

    ``readouts``: :func:`forgetting.mechanisms.drift.cka_by_layer` rows for several readouts (``readout``,
    ``debiased``, ``layer``, ``cka``, ``note``).
    """
    mid = readouts[readouts["layer"].isin(list(middle))].groupby(["readout", "debiased"])["cka"].mean()
    drop = {key: 1 - float(mid.get(key, math.nan)) for key in
            (("mean", False), ("mean", True), ("last", False), ("tokens", False))}
    biased, debiased = drop[("mean", False)], drop[("mean", True)]
    if debiased - biased > CKA_MARGIN:
        clause = (f"with {n_examples} examples and {n_features} features the biased estimator overstates the "
                  "similarity")
    elif biased - debiased > CKA_MARGIN:
        clause = "here the debiased estimator finds more similarity than the biased one"
    else:
        clause = f"with {n_examples} examples and {n_features} features the two estimators nearly agree"
    notes = readouts.loc[readouts["note"] != "", ["readout", "layer", "note"]].drop_duplicates(["readout", "layer"])
    undefined = (f"CKA is undefined for {listing((f'{r.readout} readout, layer {r.layer}: {r.note}' for r in notes.itertuples()), '; ')}."
                 if len(notes) else "CKA is defined for every readout and layer here.")
    values = [v for v in drop.values() if math.isfinite(v)]
    spread = max(values) - min(values) if values else 0.0
    span = f"from {num(min(values))} to {num(max(values))}" if values else "n/a"
    readout_sentence = (f"The number also depends on the readout and the estimator: for the first pair it runs {span}."
                        if spread > READOUT_SPREAD else
                        f"For the first pair the readout and the estimator change the number little ({span}).")
    return {
        "ro_mean": num(biased), "ro_mean_debiased": num(debiased), "ro_last": num(drop[("last", False)]),
        "ro_tokens": num(drop[("tokens", False)]), "debias_clause": clause, "undefined_sentence": undefined,
        "readout_sentence": readout_sentence,
    }


def head_drift_words(per_head: pd.DataFrame, table: pd.DataFrame, old_task: str) -> dict[str, str]:
    """Head output CKA at the first analysed stage, against the residual stream and over depth.

    ``per_head``: :func:`forgetting.viz.drift.head_cka_table` (``layer``, ``head``, ``stage``, ``observed``
    and a column per null); ``table``: :func:`forgetting.viz.drift.drift_table`. Head ``l`` writes into the
    residual stream after block ``l``, drift layer ``l + 1``.
    """
    stage = int(per_head["stage"].min())
    layer = per_head[per_head["stage"] == stage].groupby("layer").mean(numeric_only=True)
    null_cols = [c for c in ("continue null", "reseed null") if c in layer]
    first_cka, last_cka = float(layer["observed"].iloc[0]), float(layer["observed"].iloc[-1])
    stream = table[(table["source"] == OBSERVED) & (table["stage"] == stage) & (table["old_task"] == old_task)]
    stream = stream.set_index("layer")["cka"].reindex([int(x) + 1 for x in layer.index])
    head_mean, stream_mean = float(layer["observed"].mean()), float(stream.mean())
    vs_stream = comparison_word(stream_mean, head_mean, CKA_MARGIN, more="more than", less="less than",
                                same="about as much as")
    depth = comparison_word(first_cka, last_cka, CKA_MARGIN, more="more in the upper layers",
                            less="more in the lower layers", same="about as much in the lower as in the upper layers")
    return {
        "head_stage": str(stage),
        "head_cka_first_layer": num(first_cka), "head_cka_last_layer": num(last_cka),
        "head_null_last_layer": " and ".join(f"{num(layer[c].iloc[-1])} ({c})" for c in null_cols) or "n/a",
        "head_sentence": (f"The individual heads' outputs change {vs_stream} the residual stream they write into "
                          f"(mean CKA {num(head_mean)} against {num(stream_mean)}), and {depth}."),
    }


__all__ = ["drift_words", "head_drift_words", "layer_words", "readout_words"]
