"""Chapter 07's words (the dynamics inside a stage), computed from its tables.

:func:`timing_sentence` and :func:`trajectory_words` take the dynamics' onsets and the trajectory
table (one value per measure and step, :func:`forgetting.viz.dynamics.trajectory_table` pivoted to
``step x measure``). Rules:

- *timing*: with ``f = t50(forgetting) / stage steps``: ``f <= 0.25`` "front-loaded, a jump rather than
  a slope"; ``f >= 0.75`` "late in the stage"; otherwise "spread over the stage rather than one jump";
- *interference*: the gradient cosine at the start is "conflict" when negative, "no conflict" otherwise;
  it "switches itself off" when it starts negative and its end value is above half its start value
  (less than half the conflict is left), otherwise it "persists";
- *curvature*: it "overshoots" when the peak of ``lambda_max`` is above both its start and its end by
  more than 10 % of the peak and the peak is not the last point; otherwise it "rises" (end > start) or
  "falls"; per unit of loss (``lambda_max / loss``) it "falls" or "rises" by the sign of end - start;
- *order*: a mechanism reaches half of its change "no later than the forgetting" when its mean ``t50``
  is at most the forgetting's (ties count: with snapshots every few steps a shared window is a tie);
- *depth*: the block whose drift stands "furthest beyond the reseed null" is the one with the largest
  ``(1 - CKA observed) - (1 - CKA reseed)`` over blocks 1..L; when no block exceeds its null (largest
  excess <= 0), the sentence says that no block's drift stands beyond it instead.
"""

from __future__ import annotations

import pandas as pd

from forgetting.ledger.prose import count_text

MECHANISMS = ("drift", "grad_cosine", "lambda_max", "head_js")


def timing_sentence(t50_fraction: float) -> str:
    """The timing clause for forgetting whose half-change step is ``t50_fraction`` of the stage."""
    if not 0 <= t50_fraction <= 1:
        raise ValueError(f"t50 as a fraction of the stage must be in [0, 1], got {t50_fraction}")
    if t50_fraction <= 0.25:
        return "forgetting here is front-loaded, a jump rather than a slope"
    if t50_fraction >= 0.75:
        return "forgetting here comes late in the stage"
    return "forgetting here is spread over the stage rather than one jump"


def trajectory_words(traj: pd.DataFrame) -> dict[str, str]:
    """Glue values for chapter 07's description of the trajectories (module docstring for the rules).

    ``traj``: index = step, columns include ``grad_cosine``, ``lambda_max`` and, when measured,
    ``lambda_max_per_loss``.
    """
    cos = traj["grad_cosine"].dropna()
    start, end = float(cos.iloc[0]), float(cos.iloc[-1])
    words = {
        "cos_start": f"{start:.2f}", "cos_end": f"{end:.2f}",
        "cos_start_word": "conflict" if start < 0 else "no conflict: the gradients point the same way",
        "interference_heading": ("Interference switches itself off." if start < 0 and end > start / 2
                                 else "Interference persists."),
    }
    lam = traj["lambda_max"].dropna()
    peak = float(lam.max())
    peak_step = lam.idxmax()
    lam_start, lam_end = float(lam.iloc[0]), float(lam.iloc[-1])
    overshoots = peak - max(lam_start, lam_end) > 0.1 * peak and peak_step != lam.index[-1]
    words.update({
        "lambda_start": f"{lam_start:.0f}", "lambda_peak": f"{peak:.0f}", "lambda_peak_step": str(int(peak_step)),
        "lambda_end": f"{lam_end:.0f}",
        "curvature_heading": ("Curvature overshoots." if overshoots
                              else "Curvature rises." if lam_end > lam_start else "Curvature falls."),
    })
    if "lambda_max_per_loss" in traj.columns:
        per_loss = traj["lambda_max_per_loss"].dropna()
        words["per_loss_word"] = "falls" if float(per_loss.iloc[-1]) < float(per_loss.iloc[0]) else "rises"
    else:
        words["per_loss_word"] = "is not measured"
    words["raw_word"] = ("the opposite of \"flattening\" in raw terms" if lam_end > lam_start
                         else "\"flattening\" in raw terms")
    return words


def onset_words(t50: pd.Series, steps_per_task: int) -> dict[str, str]:
    """Glue values for when forgetting and each mechanism reach half of their change.

    ``t50``: mean half-change step per measure (index includes ``forgetting``; the mechanisms of
    ``MECHANISMS`` that were measured). Keys: ``t50_forgetting``, ``t50_fraction``, ``t50_<mechanism>``,
    ``timing_clause`` and ``meaning_timing`` (a whole sentence; the *order* rule).
    """
    forgetting = float(t50["forgetting"])
    fraction = forgetting / steps_per_task
    timing = timing_sentence(fraction)
    mechanisms = [m for m in MECHANISMS if m in t50.index]
    no_later = sum(bool(t50[m] <= forgetting) for m in mechanisms)
    words = {"t50_forgetting": f"{forgetting:.0f}", "t50_fraction": f"{100 * fraction:.0f} %",
             "timing_clause": timing,
             "meaning_timing": (f"{timing[0].upper()}{timing[1:]}, and {count_text(no_later, len(mechanisms))} "
                                "mechanisms reach half of their change no later than the forgetting does.")}
    words.update({f"t50_{m}": f"{t50[m]:.0f}" if m in t50.index else "n/a" for m in MECHANISMS})
    return words


def depth_words(beyond: pd.Series) -> dict[str, str]:
    """The block whose drift stands furthest beyond the reseed null (the *depth* rule).

    ``beyond``: index = block (1..L), value = observed drift minus the reseed null's, in 1 - CKA.
    Keys: ``depth_sentence`` (a whole sentence), ``deepest_layer``, ``beyond_max``, ``n_layers``.
    """
    beyond = beyond.dropna()
    if beyond.empty:
        raise ValueError("depth_words: no block has both an observed and a reseed drift")
    block, excess, n_layers = int(beyond.idxmax()), float(beyond.max()), int(beyond.index.max())
    if excess > 0:
        sentence = (f"In our runs the block whose drift stands furthest beyond the reseed null is block {block} "
                    f"of {n_layers} (1 - CKA beyond the null by {excess:.2f});")
    else:
        sentence = (f"In our runs no block's drift stands beyond the reseed null (the largest excess, "
                    f"{excess:.2f} in 1 - CKA, is at block {block} of {n_layers});")
    return {"depth_sentence": sentence, "deepest_layer": str(block), "beyond_max": f"{excess:.2f}",
            "n_layers": str(n_layers)}
