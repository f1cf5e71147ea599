"""Where does forgetting live? The restoration studies of one pair of models, as one long table.

For a pair (``before`` = the model at the end of stage s-1, which had just learnt the old task;
``after`` = the end of stage s, which learnt the new task) and the old task's loss L (mean over target
tokens of its eval examples), every row is the recovery (:mod:`forgetting.causal.restore`)

    recovery(S) = (L(after) - L(after[S <- before])) / (L(after) - L(before))

of one set S of parameters, restored to their before-values in the after-model. The studies
(column ``study``; ``part`` names S):

- ``layer``: every parameter of decoder block i (``layer 0`` ...);
- ``group``: ``all`` (every parameter: recovery 1 up to float rounding, a check), ``attention`` (every
  attention parameter of every block), ``mlp``, ``embeddings`` (+ ``lm_head`` when untied), ``norms``
  (:mod:`forgetting.causal.parts`);
- ``matrix``: one matrix type over all blocks (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``,
  ``gate_proj``, ``up_proj``, ``down_proj`` for Llama);
- ``heads_severe``: the k attention heads most disrupted by stage s (part ``k=<k>``), ranked by the
  mechanism report's combined disruption score (``head_severity``, metric ``combined``, its ``z``,
  highest first), restored as in :mod:`forgetting.causal.heads` (q rows and o columns of each head);
- ``heads_random``: ``draws`` random sets of k heads with the same multiset of layers as the severe set
  (for each layer holding c of the severe heads, c heads of that layer drawn uniformly without
  replacement), ``draw = 0..draws-1``; numpy ``default_rng([*seed, k])``, so the draws are fixed by the
  run's seed, the stage and k;
- ``union``: attention and MLP together (part ``attention+mlp``);
- ``interaction``: ``recovery(union) - recovery(attention) - recovery(mlp)`` (part ``attention x mlp``;
  ``loss_restored`` is NaN, ``n_params`` that of the union): 0 where the two restorations add up, > 0
  where each needs the other to bring the old task back;
- ``spurious`` / ``spurious_control``: the re-training probe of :mod:`forgetting.causal.spurious`.

Columns (:data:`CAUSAL_COLUMNS`) are listed with their meaning there; ``draw`` is -1 except for
``heads_random``, ``heads`` lists the restored heads (``"L1H3 L2H0"``) on head rows and is ``""`` elsewhere.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from torch import nn

from forgetting.causal.heads import Head, head_label, head_patch
from forgetting.causal.parts import model_parts
from forgetting.causal.restore import (
    LossFn,
    Patch,
    loss_value,
    parameter_patch,
    patch_size,
    recovery_ratio,
    restored_loss,
)
from forgetting.models.geometry import attention_geometry

__all__ = ["CAUSAL_COLUMNS", "STUDIES", "causal_row", "random_heads", "ranked_heads", "restoration_rows"]

STUDIES = ("layer", "group", "matrix", "heads_severe", "heads_random", "union", "interaction", "spurious",
           "spurious_control")

#: The columns of a causal table, each with its meaning.
CAUSAL_COLUMNS = {
    "stage": "int: the stage s whose training is partly undone (s >= 2)",
    "new_task": "str: the task trained in stage s",
    "old_task": "str: the task trained in stage s-1, whose loss is measured",
    "study": f"str: one of {STUDIES}",
    "part": "str: what is restored ('layer 0', 'attention', 'q_proj', 'k=5', 'attention+mlp', 'n=8', ...)",
    "draw": "int: the random draw (heads_random), -1 otherwise",
    "heads": "str: the restored heads ('L1H3 L2H0') on head rows, '' otherwise",
    "n_params": "int: parameter entries restored (spurious: entries re-trained)",
    "loss_before": "float: L(before), the old task's loss at the end of stage s-1 (nats per target token)",
    "loss_after": "float: L(after), at the end of stage s",
    "loss_restored": "float: L(after with the part restored) (spurious: L of the re-trained model; NaN for interaction)",
    "recovery": "float: (loss_after - loss_restored) / (loss_after - loss_before)",
}


def ranked_heads(head_severity: pd.DataFrame, stage: int, old_task: str) -> list[Head]:
    """The heads of (``stage``, ``old_task``) in the mechanism report's ``head_severity`` table, most
    disrupted first: metric ``combined`` (observed rows, ``null == ""`` where there is a ``null`` column),
    by ``z`` descending, NaN last, ties by (layer, head). Empty when the table has no such rows."""
    if head_severity.empty:
        return []
    rows = head_severity[(head_severity["metric"] == "combined") & (head_severity["stage"] == stage)
                         & (head_severity["old_task"] == old_task)]
    if "null" in rows:
        rows = rows[rows["null"] == ""]
    rows = rows.assign(_z=rows["z"].fillna(-np.inf)).sort_values(["_z", "layer", "head"], ascending=[False, True, True],
                                                                 kind="mergesort")
    return [(int(layer), int(head)) for layer, head in zip(rows["layer"], rows["head"])]


def random_heads(layers: Sequence[int], num_heads: int, rng: np.random.Generator) -> list[Head]:
    """One random set of heads with the multiset of layers ``layers``: for each layer holding c of them,
    c of its ``num_heads`` heads uniformly without replacement (layers in increasing order)."""
    out: list[Head] = []
    for layer, count in sorted(Counter(layers).items()):
        out += [(layer, int(h)) for h in sorted(rng.choice(num_heads, size=count, replace=False))]
    return out


def causal_row(study: str, part: str, n_params: int, loss_restored: float, losses: tuple[float, float], *,
               draw: int = -1, heads: str = "") -> dict:
    """One row of the table from ``study`` on (:data:`CAUSAL_COLUMNS`); ``losses`` = (L(before), L(after));
    the recovery is NaN where ``loss_restored`` is."""
    loss_before, loss_after = losses
    recovery = math.nan if math.isnan(loss_restored) else recovery_ratio(loss_before, loss_after, loss_restored)
    return {"study": study, "part": part, "draw": draw, "heads": heads, "n_params": int(n_params),
            "loss_before": loss_before, "loss_after": loss_after, "loss_restored": loss_restored, "recovery": recovery}


def restoration_rows(
    before: nn.Module,
    after: nn.Module,
    loss_fn: LossFn,
    *,
    ranked: Sequence[Head] = (),
    ks: Sequence[int] | None = None,
    draws: int = 20,
    seed: Sequence[int] = (0,),
    losses: tuple[float, float] | None = None,
) -> list[dict]:
    """The rows of every restoration study but the spurious probe (module docstring), for one pair.

    Args:
        before, after: the models at the end of stages s-1 and s (one architecture, plain or peft).
        loss_fn: ``loss_fn(model)`` -> the old task's loss.
        ranked: heads most disrupted first (:func:`ranked_heads`); empty: no head rows.
        ks: set sizes of the head studies (default ``(5, H)``, H = query heads in one layer), each capped
            at the number of ranked heads.
        draws: random head sets per k. seed: the start of the random draws' seed (``[*seed, k]``).
        losses: ``(L(before), L(after))`` when already known (saves two forward passes).

    Returns:
        dicts with the columns of :data:`CAUSAL_COLUMNS` from ``study`` on (the caller adds the pair's keys).
    """
    losses = losses or (loss_value(loss_fn, before), loss_value(loss_fn, after))
    recovery_ratio(*losses, losses[1])  # undefined recovery: fail before any forward pass

    def restore(patch: Patch) -> tuple[int, float]:
        return patch_size(patch), (restored_loss(after, patch, loss_fn) if patch else losses[1])

    rows, by_part, parts = [], {}, model_parts(after)
    for part in parts:
        n, loss = restore(parameter_patch(before, after, part.select))
        rows.append(causal_row(part.study, part.part, n, loss, losses))
        by_part[(part.study, part.part)] = rows[-1]
    groups = {p.part: p.select for p in parts if p.study == "group"}
    if "attention" in groups and "mlp" in groups:
        n, loss = restore(parameter_patch(before, after, lambda name: groups["attention"](name) or groups["mlp"](name)))
        rows.append(causal_row("union", "attention+mlp", n, loss, losses))
        interaction = (rows[-1]["recovery"] - by_part[("group", "attention")]["recovery"]
                       - by_part[("group", "mlp")]["recovery"])
        rows.append({**causal_row("interaction", "attention x mlp", n, math.nan, losses), "recovery": interaction})
    if ranked:
        heads_per_layer = attention_geometry(after).num_heads
        wanted = ks if ks is not None else (5, heads_per_layer)
        for k in dict.fromkeys(min(int(k), len(ranked)) for k in wanted):
            severe = list(ranked[:k])
            n, loss = restore(head_patch(before, after, severe))
            rows.append(causal_row("heads_severe", f"k={k}", n, loss, losses, heads=head_label(severe)))
            rng = np.random.default_rng([*seed, k])
            for draw in range(draws):
                heads = random_heads([layer for layer, _ in severe], heads_per_layer, rng)
                n, loss = restore(head_patch(before, after, heads))
                rows.append(causal_row("heads_random", f"k={k}", n, loss, losses, draw=draw, heads=head_label(heads)))
    return rows
