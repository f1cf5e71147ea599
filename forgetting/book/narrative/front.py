"""The chapter on what to do about forgetting: every judging word about the mitigation front, from its
tables (:mod:`forgetting.sweep.front`).

Rules (fixed with the front's code, before its runs were read):

- the baseline to **start with** is the baseline (role ``baseline``) with the largest hypervolume
  against the plain run (:func:`forgetting.sweep.front.method_summary`); when every baseline's
  hypervolume is 0, "no baseline forgets less than the plain run";
- a method **forgets less than the plain run** at a strength when its forgetting interval lies wholly
  below the plain run's mean forgetting, **more** when wholly above, else it is "not distinguishable";
- a targeted method **beats its control** at a strength when the interval of ``forgetting(targeted) -
  forgetting(control)`` (paired by seed, :func:`forgetting.sweep.front.control_differences`) lies below
  0, **loses to it** when above 0, else the two are "not distinguishable"; the sentence counts the
  strengths of each kind (:func:`~forgetting.ledger.prose.count_text`);
- a method's **cost** is its median step time as a multiple of the plain step's
  (``benchmarks/results/mitigations.json``), "about as cheap as a plain step" when at most
  ``CHEAP`` (1.1x).
"""

from __future__ import annotations

import pandas as pd

from forgetting.book.narrative._text import num
from forgetting.ledger.prose import count_text

CHEAP = 1.1


def start_with(summary: pd.DataFrame) -> str:
    """The sentence naming the baseline to start with (module docstring)."""
    baselines = summary[summary["role"] == "baseline"]
    if baselines.empty or float(baselines["hypervolume"].max()) <= 0:
        return "no baseline forgets less than the plain run"
    best = baselines.loc[baselines["hypervolume"].idxmax()]
    return (f"{best['method']} (hypervolume {num(best['hypervolume'], 3)}; at strength {best['best_strength']:g} "
            f"it forgets {num(best['best_forgetting'])} and learns {num(best['learning_at_best'])})")


def against_plain(points: pd.DataFrame, method: str) -> str:
    """How many of ``method``'s strengths forget less / more than the plain run (module docstring)."""
    plain = float(points.loc[points["method"] == "plain", "forgetting"].mean())
    rows = points[points["method"] == method]
    less = int((rows["forgetting_high"] < plain).sum())
    more = int((rows["forgetting_low"] > plain).sum())
    n = len(rows)
    return f"forgets less than the plain run at {count_text(less, n)} strengths and more at {count_text(more, n)}"


def against_control(differences: pd.DataFrame, method: str) -> str:
    """How many strengths ``method`` beats, loses to or ties with its random control (module docstring)."""
    rows = differences[differences["method"] == method]
    if rows.empty:
        return f"{method} has no control runs to compare with"
    n = len(rows)
    beats = int((rows["forgetting_high"] < 0).sum())
    loses = int((rows["forgetting_low"] > 0).sum())
    control = rows["control"].iloc[0]
    return (f"{method} forgets less than {control} at {count_text(beats, n)} strengths, more at "
            f"{count_text(loses, n)}, and the two are not distinguishable at {count_text(n - beats - loses, n)}")


def cost_text(ratio: float) -> str:
    """A step's cost relative to the plain step in words (module docstring)."""
    return "about as cheap as a plain step" if ratio <= CHEAP else f"{ratio:.1f}x a plain step"
