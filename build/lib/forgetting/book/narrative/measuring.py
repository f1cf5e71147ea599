"""Chapter 01 (measuring forgetting): the words around the performance matrix, from its numbers.

Rules (the constants below):

- *backward transfer*: exact-match BWT ``b_e`` and answer-match BWT ``b_a``. When ``b_e >= 0`` exact
  match shows no forgetting on average and no share is formed. Otherwise the answer share is
  ``s = b_a / b_e``: ``s <= 0`` "answer match shows no forgetting at all"; ``0 < s < 1`` the gap is
  "the part of the forgetting that is a change of preferred output rather than a loss of the
  answer"; ``s >= 1`` "answer match loses at least as much": none of it is only a changed preference;
- *how early*: the old task's exact match right after its own stage (``learned``), along the next
  stage (``curve``: step -> value) and at that stage's end. The stage's drop is
  ``D = learned - end``; with ``D <= FLAT`` (0.02) the task "falls by no more than 0.02 over the stage". Otherwise
  the drop is "already" mostly done at the first evaluation when ``learned - curve[first] >= D / 2``,
  else "more than half" of it is "still" to come; the half-drop step is the first evaluated step with
  ``value <= learned - D / 2``;
- a missing value is "n/a" and takes no judging word.
"""

from __future__ import annotations

import math

import pandas as pd

from forgetting.book.narrative._text import num, pct

FLAT = 0.02


def transfer_words(bwt_exact: float, bwt_answer: float) -> dict[str, str]:
    """``answer_share`` and ``transfer_clause`` for BWT under exact match and answer match.

    ``transfer_clause`` completes "With answer match, BWT is <b_a>" (module docstring for the rules).
    """
    if not (math.isfinite(bwt_exact) and math.isfinite(bwt_answer)):
        return {"answer_share": "n/a", "transfer_clause": "; one of the two is not defined on this run"}
    if bwt_exact >= 0:
        return {"answer_share": "n/a",
                "transfer_clause": (": exact match shows no forgetting on average here (BWT is not negative), "
                                    "so there is no drop to split into lost answers and changed preferences")}
    share = bwt_answer / bwt_exact
    if share <= 0:
        clause = (f" ({pct(share)} of the exact-match BWT): by answer match nothing is forgotten on average, "
                  "so the whole exact-match drop is a change of preferred output rather than a loss of the answer")
    elif share < 1:
        clause = (f", that is {pct(share)} of the exact-match BWT: the gap between the two is the part of the "
                  "forgetting that is a change of preferred output rather than a loss of the answer")
    else:
        clause = (f", that is {pct(share)} of the exact-match BWT: answer match loses at least as much as "
                  "exact match, so none of the drop is only a change of preferred output")
    return {"answer_share": pct(share), "transfer_clause": clause}


def early_forgetting_words(curve: pd.Series, learned: float, end: float, stage_start: int,
                           steps_per_task: int) -> dict[str, str]:
    """How early the next stage forgets the old task (module docstring for the rules).

    Args:
        curve: the old task's exact match along the next stage, indexed by global step (ascending).
        learned: its exact match right after its own stage.
        end: its exact match at the end of the next stage.
        stage_start: the global step at which the next stage starts.
        steps_per_task: the stage's length in steps.

    Returns:
        ``first_eval_step`` (steps into the stage), ``city_at_first_eval``, ``early_clause`` (completes
        "<n> steps into the second task, exact match on the old task"), ``half_drop_steps`` and
        ``speed_clause`` (completes "training a new question about the same people").
    """
    curve = curve.dropna().sort_index()
    if curve.empty:
        raise ValueError("early_forgetting_words: the curve has no evaluated step")
    first_step, first_value = int(curve.index[0]), float(curve.iloc[0])
    words = {"first_eval_step": str(first_step - stage_start), "city_at_first_eval": num(first_value)}
    drop = learned - end
    if not math.isfinite(drop) or drop <= FLAT:
        words["early_clause"] = f"is {num(first_value)}, and over the stage it falls by no more than {FLAT}"
        words["half_drop_steps"] = "n/a"
        words["speed_clause"] = f"lowers the old question's exact match by at most {FLAT} over a stage on this run"
        return words
    half = learned - drop / 2
    reached = curve[curve <= half]
    half_steps = int(reached.index[0]) - stage_start if len(reached) else None
    words["half_drop_steps"] = str(half_steps) if half_steps is not None else "n/a"
    words["speed_clause"] = (f"moves the old question's answers: half of the exact-match drop happens within "
                             f"{half_steps} of the stage's {steps_per_task} steps" if half_steps is not None else
                             f"moves the old question's answers by {num(drop)} in exact match over the stage")
    if learned - first_value >= drop / 2:
        words["early_clause"] = (f"is already {num(first_value)} (from {num(learned)}): "
                                 f"{pct((learned - first_value) / drop)} of the stage's drop has happened")
    else:
        when = f"; half of it is reached after {half_steps} steps" if half_steps is not None else ""
        words["early_clause"] = (f"is still {num(first_value)} (from {num(learned)}): more than half of "
                                 f"the stage's drop comes later{when}")
    return words


def intransigence_words(intransigence: float, margin: float = FLAT) -> str:
    """Completes "Intransigence against the joint multi-task run is <I>": what its sign means.

    ``I = mean_k (a*_k - R[k, k])`` (:func:`forgetting.metrics.intransigence_per_task`): positive when
    sequential training learned its tasks less well than joint training, negative when better. Within
    ``margin`` of 0 the two learned about equally well.
    """
    if not math.isfinite(intransigence):
        return ": not measured on this run (no joint-training reference)"
    if intransigence > margin:
        return (": positive, so right after its own stage each task is learned less well than joint training "
                "on all of them learns it")
    if intransigence < -margin:
        return (": negative, so right after its own stage each task is learned better than by joint training "
                "(a stage trains on its task alone, the joint run on a mixture of all of them), and "
                "sequential training pays for its forgetting later, not in how well it learns")
    return f": within {margin} of 0, so sequential and joint training learn each task about equally well"


def heldout_words(before: float, after: float, vocab_size: int) -> str:
    """Completes the sentence on the pretraining corpus's held-out loss (nats per token).

    The reference is the loss of a uniform guess over the vocabulary, ``ln V``: a model whose loss is
    above it does worse than guessing: the geometric mean of the right tokens' probabilities,
    ``exp(-loss)``, is below ``1/V``. Rules: "above the uniform guess" when ``after > ln V``; otherwise
    "rises" / "falls" by the sign of ``after - before`` beyond ``FLAT``, else "about unchanged".
    """
    if not (math.isfinite(before) and math.isfinite(after)):
        return "not measured on this run"
    uniform = math.log(vocab_size)
    text = f"{num(before)} nats per token before fine-tuning, {num(after)} after the last task"
    if after > uniform:
        return (f"{text}: above the {num(uniform)} nats of a uniform guess over its {vocab_size} tokens, so on the "
                "statements it was pretrained on the model now does worse than guessing: "
                "its probability is concentrated on tokens other than the right ones (a loss above ln V means the "
                "right tokens' probabilities have a geometric mean below 1/V)")
    change = after - before
    word = "rises" if change > FLAT else "falls" if change < -FLAT else "stays about where it was"
    return f"{text}: it {word}, and stays below the {num(uniform)} nats of a uniform guess over its {vocab_size} tokens"
