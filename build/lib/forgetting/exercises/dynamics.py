"""Checkers for chapter 07 (how the mechanisms interact over training)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from forgetting.dynamics import onset_steps
from forgetting.exercises import ExerciseFeedback

# A series whose final value is below its peak and whose steps are not 0, 1, 2, ...: taking the final
# value instead of the peak, or returning an index instead of a step, give different answers.
_STEPS = np.array([0, 5, 10, 20, 40, 80])
_SERIES = np.array([0.0, 0.5, 1.8, 4.0, 3.0, 2.0])


def check_t50(fn: Callable[[np.ndarray, np.ndarray], float]) -> str:
    """Check a reader's ``fn(steps, values) -> t50``: the first step where ``|x - x0|`` reaches half its maximum."""
    table = pd.DataFrame({"step": _STEPS, "value": _SERIES, "measure": "x", "layer": -1})
    want = float(onset_steps(table)["t50"].iloc[0])
    got = fn(_STEPS.copy(), _SERIES.copy())
    try:
        got = float(got)
    except (TypeError, ValueError):
        raise ExerciseFeedback(f"return one number (a step), got {got!r}") from None
    if np.isclose(got, want):
        return f"Correct: t50 = {want:g}, the first step where the change reaches half of its largest value."
    moved = np.abs(_SERIES - _SERIES[0])
    if np.isclose(got, float(np.argmax(moved >= 0.5 * moved.max()))):
        raise ExerciseFeedback("you returned the position in the array; return the step at that position "
                               "(snapshots are not evenly spaced)")
    final = _STEPS[np.argmax(moved >= 0.5 * abs(_SERIES[-1] - _SERIES[0]))]
    if np.isclose(got, final):
        raise ExerciseFeedback("you took half of the FINAL change; use half of the LARGEST change, since "
                               "a measure can overshoot and come back (as curvature does after forgetting)")
    raise ExerciseFeedback(f"for steps {_STEPS.tolist()} and values {_SERIES.tolist()} t50 is {want:g}, "
                           f"you gave {got:g}")


def check_verdict(fn: Callable[[float, float, tuple[float, float]], str]) -> str:
    """Check a reader's ``fn(low, high, paper_range) -> verdict`` for an interval against a claimed range:
    ``"consistent"`` if they overlap, ``"smaller"`` if the interval lies below, ``"larger"`` if above."""
    cases = [((0.10, 0.20), (0.32, 0.47), "smaller"), ((0.30, 0.35), (0.32, 0.47), "consistent"),
             ((0.50, 0.60), (0.32, 0.47), "larger"), ((0.20, 0.60), (0.32, 0.47), "consistent")]
    for (low, high), paper, want in cases:
        got = fn(low, high, paper)
        if got == want:
            continue
        if (low, high) == (0.20, 0.60):
            raise ExerciseFeedback("an interval that contains the whole claimed range is consistent with it: "
                                   "overlap is the test, not containment of one end")
        raise ExerciseFeedback(f"interval [{low}, {high}] against the claimed {paper}: want {want!r}, got {got!r}")
    return "Correct: an interval overlapping the claimed range is consistent; otherwise it is smaller or larger."


def state_case() -> tuple[dict, dict]:
    """Two state dicts ``(after, before)`` of a 2-layer Llama-style model (tiny tensors, every entry of
    ``after`` 1 and of ``before`` 0), with the names ``model.named_parameters()`` gives: attention
    projections, MLP projections, the two norms of each block (one of them is named
    ``post_attention_layernorm``: testing ``"attention" in name`` picks it up), the embeddings and the final norm."""
    import torch

    names = ["model.embed_tokens.weight"]
    for i in range(2):
        names += [f"model.layers.{i}.self_attn.{m}_proj.weight" for m in "qkvo"]
        names += [f"model.layers.{i}.mlp.{m}_proj.weight" for m in ("gate", "up", "down")]
        names += [f"model.layers.{i}.input_layernorm.weight", f"model.layers.{i}.post_attention_layernorm.weight"]
    names += ["model.norm.weight", "lm_head.weight"]
    return ({n: torch.ones(2, 2) for n in names}, {n: torch.zeros(2, 2) for n in names})


def _case_geometry():
    from transformers import LlamaConfig

    from forgetting.models.geometry import attention_geometry  # deferred: imports torch and transformers

    return attention_geometry(LlamaConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                          num_key_value_heads=1, intermediate_size=16, vocab_size=10))


def check_restore_group(fn: Callable[[dict, dict, str], dict]) -> str:
    """Check ``fn(after, before, group) -> dict``: a new state dict equal to ``after`` except that every
    parameter of ``group`` (``"attention"`` or ``"mlp"``, as :func:`forgetting.causal.parts.place` reads a
    parameter name) is taken from ``before``; ``after`` itself must be left unchanged."""
    import torch

    from forgetting.causal.parts import place  # deferred: imports torch

    geometry = _case_geometry()
    for group in ("attention", "mlp"):
        after, before = state_case()
        got = fn(after, before, group)
        if not isinstance(got, dict):
            raise ExerciseFeedback(f"return a dict {{parameter name: tensor}} (a state dict), got {type(got).__name__}")
        if any(float(t.sum()) != 4.0 for t in after.values()):
            raise ExerciseFeedback("your function changed `after` in place; build a new dict (after = "
                                   "{name: t.clone() ...}) so that the snapshot is still there for the next comparison")
        missing = sorted(set(after) - set(got))
        if missing:
            raise ExerciseFeedback(f"the result lacks {len(missing)} parameter(s), e.g. {missing[0]}: return EVERY "
                                   "parameter, the restored ones from `before` and the rest from `after`")
        restored = {n for n, t in got.items() if float(torch.as_tensor(t).sum()) == 0.0}
        want = {n for n in after if place(n, geometry).group == group}
        if restored == want:
            continue
        if group == "attention" and restored == want | {n for n in after if "attention" in n}:
            raise ExerciseFeedback("you also restored post_attention_layernorm: testing '\"attention\" in name' "
                                   "catches the norm after the attention block. The attention module is "
                                   "'.self_attn.' in a Llama model (forgetting.causal.parts.place reads it from the geometry)")
        extra, lacking = sorted(restored - want), sorted(want - restored)
        raise ExerciseFeedback(f"for group {group!r} restore exactly the {len(want)} parameters of that group; "
                               + (f"you also restored {extra[:3]}" if extra else f"you left out {lacking[:3]}"))
    return "Correct: the group's parameters from before the stage, everything else from after it."
