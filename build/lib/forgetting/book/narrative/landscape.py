"""Chapter 04 (loss landscape): every glued number and judging word, from the chapter's tables.

Rules (the constants below):

- a curvature or loss "rose" / "fell" by the sign of after - before; the old minimum reads "sharper"
  when its top eigenvalue (or the top eigenvalue per unit of loss) rose, "flatter" when it fell;
- the most negative eigenvalue is "small next to the top one" when its magnitude is at most
  ``SMALL`` (10 %) of the top one; above that the point is "saddle-like", and at
  ``BOTH_SIGNS`` (50 %) or more "with strong curvature of both signs";
- at matched loss the forgetting path is "flatter" when the median ratio of top eigenvalues is below
  1, "sharper" above; the text says when the points fall on both sides of 1, and says that no
  comparison is possible when no point matches;
- a step is "about as long as" another when their lengths are within a factor ``SAME_LENGTH``
  (1.25); its direction is "of its own" at an angle of 60 to 120 degrees, "onward" below 60, "partly
  back" above 120;
- the new task's loss is "already" low halfway along the segment when it has fallen by at least half
  of its fall over the whole segment; its minimum is "inside the segment" at 0 < alpha < 1;
- the plane holds a better point only when its best summed loss is below both snapshots' sums by more
  than ``PLANE_MARGIN`` (0.01 nats per token);
- the Taylor estimate "holds" where ``|predicted / actual - 1| <=`` ``TOLERANCE`` (10 %).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from forgetting.book.narrative._text import num, pct
from forgetting.ledger.prose import count_text

SMALL = 0.10
BOTH_SIGNS = 0.5
SAME_LENGTH = 1.25
PLANE_MARGIN = 0.01
TOLERANCE = 0.10


def curvature_words(curvature: pd.DataFrame, task_a: str, task_b: str) -> dict[str, str]:
    """Top eigenvalue and top eigenvalue per unit of loss before and after each stage, and the first pair.

    ``curvature``: ``analysis_for(...)["curvature"]`` rows (``stage``, ``old_task``, ``snapshot`` before /
    after, ``loss``, ``lambda_max``, ``lambda_max_per_loss``, ``seed``), averaged over seeds here.
    """
    mean = curvature.groupby(["stage", "old_task", "snapshot"])[["loss", "lambda_max", "lambda_max_per_loss"]].mean()
    wide = mean.unstack("snapshot")
    change = {c: wide[(c, "after")] - wide[(c, "before")] for c in ("loss", "lambda_max", "lambda_max_per_loss")}
    n, k_up = len(wide), int((change["lambda_max"] > 0).sum())
    k_down = int((change["lambda_max"] < 0).sum())
    first = mean.loc[(2, task_a)]
    d = {c: float(first.loc["after", c] - first.loc["before", c]) for c in change}
    loss_verb = "raised" if d["loss"] > 0 else "lowered" if d["loss"] < 0 else "left unchanged"
    pattern = d["lambda_max"] > 0 and d["lambda_max_per_loss"] < 0
    lead = "The first pair shows the pattern plainly" if pattern else "The first pair"
    sharp = lambda x: "sharper" if x > 0 else "flatter" if x < 0 else "neither sharper nor flatter"
    meaning = f"the old task's curvature rose in {count_text(k_up, n)} pairs"
    if k_down:
        meaning += " and fell in the others" if k_up + k_down == n else f" and fell in {k_down}"
    lmax = "rose" if d["lambda_max"] > 0 else "fell" if d["lambda_max"] < 0 else "stayed"
    if d["loss"] > 0 and d["lambda_max"] > 0:
        meaning += (", and in the first pair it rose together with the loss: a higher top eigenvalue after forgetting "
                    "says mostly that the loss is higher")
    else:
        loss = "rose" if d["loss"] > 0 else "fell" if d["loss"] < 0 else "stayed"
        meaning += f"; in the first pair it {lmax} while the loss {loss}"
    return {
        "n_pairs": str(n), "n_lambda_up": str(k_up),
        "n_per_loss_down": str(int((change["lambda_max_per_loss"] < 0).sum())),
        "a_loss_before": num(first.loc["before", "loss"]), "a_loss_after": num(first.loc["after", "loss"]),
        "a_lmax_before": num(first.loc["before", "lambda_max"], 0), "a_lmax_after": num(first.loc["after", "lambda_max"], 0),
        "a_ratio_before": num(first.loc["before", "lambda_max_per_loss"], 0),
        "a_ratio_after": num(first.loc["after", "lambda_max_per_loss"], 0),
        "task_a": task_a, "task_b": task_b, "n_seeds": str(curvature["seed"].nunique()),
        "first_lead": lead, "loss_verb": loss_verb,
        "reading_sentence": (f"Read with λmax alone, the old minimum became {sharp(d['lambda_max'])}; read per unit of "
                             f"loss, {sharp(d['lambda_max_per_loss'])}."),
        "meaning_lambda": meaning,
    }


def _neg_share(row: pd.Series) -> float:
    """|lambda_min| / lambda_max where lambda_min < 0, else 0."""
    return max(0.0, -float(row["lambda_min"])) / abs(float(row["lambda_max"]))


def spectrum_words(spectrum: pd.DataFrame) -> dict[str, str]:
    """Both ends of the spectrum and the trace at after-A and after-B.

    ``spectrum``: indexed by ``"after A"`` / ``"after B"``, columns ``lambda_max``, ``lambda_min``, ``trace``,
    ``trace_stderr``.
    """
    before, after = spectrum.loc["after A"], spectrum.loc["after B"]
    rb, ra = _neg_share(before), _neg_share(after)
    if before["lambda_min"] >= 0:
        before_clause = "not negative: a minimum"
    elif rb <= SMALL:
        before_clause = (f"small next to the top one ({pct(rb)} of it in magnitude): a minimum, up to the noise of a "
                         "finite sample")
    else:
        before_clause = f"{pct(rb)} of the top one in magnitude: not a clean minimum even there"
    if ra > SMALL:
        after_clause = (f"the model sits on a saddle-like slope of the old task's loss, with negative curvature "
                        f"{pct(ra)} the size of the positive" + (": strong curvature of both signs" if ra >= BOTH_SIGNS
                                                                 else ""))
        saddle = (f"After forgetting the model is no longer at a minimum of the old task (the negative eigenvalue, "
                  f"{pct(ra)} of the top one in magnitude, says so)")
    else:
        after_clause = f"still small next to the top one ({pct(ra)} of it in magnitude)"
        saddle = (f"After forgetting the old task's most negative curvature is still small ({pct(ra)} of the top one "
                  "in magnitude)")
    larger = "the negative one" if -after["lambda_min"] > after["lambda_max"] else "the top one"
    if abs(after["trace"]) < 2 * after["trace_stderr"]:
        note = "which is within two standard errors of zero: at this budget, the sign of the sum is not known"
    elif after["trace"] < 0:
        note = "negative beyond two standard errors: the directions of negative curvature outweigh the positive ones"
    else:
        note = "still positive beyond two standard errors: the positive curvatures outweigh the negative ones"
    words = {"lmin_before": num(before["lambda_min"], 0), "lmin_after": num(after["lambda_min"], 0),
             "lmax_after_here": num(after["lambda_max"], 0), "before_clause": before_clause,
             "after_clause": after_clause, "power_larger": larger, "trace_note": note, "meaning_saddle": saddle}
    for key, row in (("trace_before", before), ("trace_after", after)):
        words[key] = f"{num(row['trace'], 0)} (standard error {num(row['trace_stderr'], 0)})"
    return words


def matched_words(matched: pd.DataFrame, learn: pd.DataFrame, task_a: str) -> dict[str, str]:
    """Curvature of the forgetting path against the learning path at the same loss.

    ``matched``: the forgetting path's points inside the learning path's loss range, with ``ratio`` (top
    eigenvalue over the learning path's at the same loss); ``learn``: the learning path (``loss``).
    """
    n = len(matched)
    words = {"learn_loss_range": f"{num(learn['loss'].min())} to {num(learn['loss'].max())}"}
    if n == 0:
        words.update(matched_sentence=(
            "No point of the forgetting path has a loss in that range, so the two paths cannot be compared at "
            "matched loss here."), meaning_matched=(
            "The comparison at matched loss, the fairer one, cannot be made for the first pair: no point of the "
            f"forgetting path reaches a loss of the learning path of {task_a}."))
        return words
    median, lo, hi = float(matched["ratio"].median()), float(matched["ratio"].min()), float(matched["ratio"].max())
    span = num(lo) if n == 1 else f"{num(lo)} to {num(hi)}"
    where = "At the one point" if n == 1 else f"At the {n} points"
    words.update(matched_sentence=(
        f"{where} of the forgetting path whose loss falls in that range, the top eigenvalue is {span} times that "
        f"of the learning path at the same loss (median {num(median)}; the learning path's values are interpolated "
        "between its points on log-log axes)."))
    sides = "" if (hi < 1 or lo > 1 or n == 1) else "; the points fall on both sides of 1"
    verdict = "flatter" if median < 1 else "sharper" if median > 1 else "neither flatter nor sharper"
    text = (f"The comparison at matched loss is the fairer one: for the first pair, the region the model moves into "
            f"while it forgets {task_a} is {verdict} than the region it crossed while it learned {task_a} at the same "
            f"loss (median ratio {num(median)}{sides}).")
    if median < 1:
        text += " That is a kind of flattening, but of the path, not of the old minimum."
    elif median > 1:
        text += " At matched loss, then, there is no flattening along the path either."
    words["meaning_matched"] = text
    return words


def segment_words(line: pd.DataFrame, task_a: str, task_b: str) -> dict[str, str]:
    """Both tasks' losses on the segment after-A -> after-B.

    ``line``: :func:`forgetting.mechanisms.landscape.interpolate_1d` (``alpha``, ``task``, ``loss``), with
    alpha 0 and 1 among its points.
    """
    pivot = line.pivot(index="alpha", columns="task", values="loss")
    cross = pivot[(pivot.index >= 0) & (pivot.index <= 1)]
    mid = cross.index[np.abs(cross.index - 0.5).argmin()]
    b0, b_mid, b1 = (float(cross.loc[a, task_b]) for a in (cross.index.min(), mid, cross.index.max()))
    already = b0 > b1 and (b0 - b_mid) >= 0.5 * (b0 - b1)
    total = cross.sum(axis=1)
    b_alpha = float(cross[task_b].idxmin())
    b_best = float(cross[task_b].min())
    end = float(cross.index.max())
    if 0 < b_alpha < end and b_best < b1:
        a_there, a_end = float(cross.loc[b_alpha, task_a]), float(cross.loc[end, task_a])
        inside = (f"Note also that {task_b}'s held-out loss is lowest inside the segment, {num(b_best)} at α = "
                  f"{b_alpha:.3g}, against {num(b1)} at the end of its own training: a point on the straight line, "
                  "which training never visited, serves the new task's held-out examples better than where training "
                  "ended")
        inside += (f", and costs the old task less ({task_a}'s loss {num(a_there)} there against {num(a_end)} at the "
                   "end)." if a_there < a_end else ".")
    else:
        inside = f"{task_b}'s held-out loss on the segment is lowest where its training ended ({num(b1)})."
    return {
        "b_loss_mid": num(b_mid), "a_loss_mid": num(float(cross.loc[mid, task_a])), "mid_alpha": f"{mid:g}",
        "mid_already": "already " if already else "", "best_alpha": f"{float(total.idxmin()):.3g}",
        "best_sum": num(float(total.min())), "inside_sentence": inside,
        "sum_after_a": num(float(pivot.loc[0.0].sum())), "sum_after_b": num(float(pivot.loc[1.0].sum())),
    }


def plane_words(plane: pd.DataFrame, line: pd.DataFrame, task_b: str, task_a: str) -> dict[str, str]:
    """The plane through base, after-A and after-B: the step lengths, their angle and the best point.

    ``plane``: :func:`forgetting.mechanisms.landscape.plane_2d` (``x``, ``y``, ``loss`` per task; ``attrs``
    ``points`` with ``origin``, ``a``, ``b``); ``line`` as for :func:`segment_words`.
    """
    pts = plane.attrs["points"]
    summed = plane.groupby(["x", "y"])["loss"].sum()
    best = summed.idxmin()
    dist = lambda p: float(np.hypot(best[0] - p[0], best[1] - p[1]))
    nearest = min((("base", pts["origin"]), ("after A", pts["a"]), ("after B", pts["b"])), key=lambda kv: dist(kv[1]))[0]
    step = np.subtract(pts["b"], pts["a"])
    d_ab, d_oa = float(np.hypot(*step)), float(np.hypot(*pts["a"]))
    angle = float(np.degrees(np.arccos(step[0] / d_ab))) if d_ab > 0 else math.nan
    ratio = d_ab / d_oa if d_oa > 0 else math.inf
    length = ("about as long as" if 1 / SAME_LENGTH <= ratio <= SAME_LENGTH else f"{ratio:.1f} times as long as")
    direction = ("the new task moves the weights in a direction of their own, not back along the way the old task came"
                 if 60 <= angle <= 120 else "the new task moves the weights largely onward, along the way the old "
                 "task came" if angle < 60 else "the new task moves the weights partly back along the way the old "
                 "task came")
    pivot = line.pivot(index="alpha", columns="task", values="loss")
    sum_a, sum_b, s_best = float(pivot.loc[0.0].sum()), float(pivot.loc[1.0].sum()), float(summed.min())
    if s_best < min(sum_a, sum_b) - PLANE_MARGIN:
        plane_sentence = (f"but {num(s_best)} at the best point of this grid (nearest to the {nearest} snapshot): "
                          "weights that do better at both tasks together lie in the same plane"
                          + (", a short way from where sequential training ended." if nearest == "after B" else "."))
    else:
        plane_sentence = (f"and {num(s_best)} at the best point of this grid (nearest to the {nearest} snapshot): "
                          "the plane holds no point that does both tasks together better than the snapshots.")
    return {
        "step_sentence": (f"The step of {task_b} (length {d_ab:.1f} in weight space) is {length} the whole "
                          f"fine-tuning of {task_a} from the base model ({d_oa:.1f}), and it makes an angle of "
                          f"{angle:.0f} degrees with it: {direction}."),
        "plane_sentence": plane_sentence,
    }


def taylor_words(taylor: pd.DataFrame) -> dict[str, str]:
    """The second-order estimate against the observed loss change, over the full step and a tenth of it.

    ``taylor``: one row per fraction ``t`` (0.1 and 1.0 among them) with ``predicted`` and ``actual``.
    """
    by_t = taylor.set_index("t")
    last, small = by_t.loc[1.0], by_t.loc[0.1]
    err = lambda row: abs(row["predicted"] / row["actual"] - 1) if row["actual"] != 0 else math.inf
    e1, e01 = err(last), err(small)
    share = lambda row: pct(row["predicted"] / row["actual"]) if row["actual"] != 0 else "n/a"
    if e1 <= TOLERANCE:
        sentence = ("The quadratic picture holds over the whole step: the old task's curvature describes the "
                    "landscape the new task moves it through.")
        meaning = (f"The Taylor estimate is within {pct(e1)} of the observed change over the whole step: here the "
                   "curvature at the old minimum does predict the forgetting.")
    else:
        sentence = ("The quadratic picture holds only near the old minimum: forgetting happens beyond the region where "
                    "the old task's curvature describes the landscape." if e01 <= TOLERANCE else
                    f"Even over a tenth of the step the estimate is off by {pct(e01)}: the quadratic picture holds, "
                    "if at all, only closer to the old minimum than that.")
        meaning = ("The Taylor estimate shows why curvature at the old minimum is a poor predictor of forgetting here: "
                   "the step of the new task leaves the quadratic region.")
    pred = float(last["predicted"])
    return {
        "taylor_actual": num(float(last["actual"])),
        "taylor_pred_clause": f"a rise of {num(pred)}" if pred >= 0 else f"a fall of {num(-pred)}",
        "taylor_share": share(last), "taylor_small_share": share(small),
        "small_verb": "still explains" if e01 <= TOLERANCE else "explains",
        "taylor_sentence": sentence, "meaning_taylor": meaning,
    }


__all__ = ["curvature_words", "matched_words", "plane_words", "segment_words", "spectrum_words", "taylor_words"]
