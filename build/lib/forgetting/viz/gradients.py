"""Charts and tables for gradient interference (chapter 02), from the ``gradients`` and ``gradient_null``
tables of :func:`forgetting.analysis.report.analysis_for`.

Both tables have one row per unit (matrix, head, layer, model; see
:mod:`forgetting.mechanisms.gradients`) and per analysed pair: ``stage`` (the stage whose training is
analysed), ``new_task`` (trained in that stage) and ``old_task`` (an earlier task). ``gradients``
holds ``cosine = cos(g_old, g_new)`` at the snapshot before the stage; ``gradient_null`` holds the
split-half noise floor ``cos(g_old(half 1), g_old(half 2))`` of the old task at the same snapshot.

Every chart embeds its data (a few hundred to about two thousand rows) and uses Vega-Lite params bound
to selects, so it works in the static book with no kernel and no network.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from forgetting.mechanisms.gradients import compare_with_null, conflict_rate
from forgetting.viz.charts import PAIR_KEYS, _check_analysis_table

ATTENTION_KINDS = ("q", "k", "v", "o")
MLP_KINDS = ("gate", "up", "down")
KIND_LABELS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
               "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
#: The ``measure`` label of the old-vs-new cosine in the chart tables.
OBSERVED = "old vs new"
#: The ``measure`` label of the split-half null cosine in the chart tables.
NULL = "split-half null"
ALL_PAIRS = "all pairs"


def pair_label(stage: int, new_task: str, old_task: str) -> str:
    """``"stage 2: recall_city vs recall_job"``: the old task's gradient against the new task's."""
    return f"stage {int(stage)}: {old_task} vs {new_task}"


_COLUMNS = ("unit", "name", "layer", "group", "kind", "part", "head", "head_type", "cosine", *PAIR_KEYS)


def with_null(gradients: pd.DataFrame, gradient_null: pd.DataFrame) -> pd.DataFrame:
    """``gradients`` with the split-half noise floor of each unit beside it, pair by pair.

    :func:`forgetting.mechanisms.gradients.compare_with_null` for each (stage, new_task, old_task):
    adds ``null_cosine`` (mean split-half cosine of the old task), ``reliability`` (Spearman-Brown
    ``2c / (1 + c)``), ``corrected_cosine`` (``cosine / sqrt(reliability)``) and ``pair`` (a label).
    """
    _check_analysis_table(gradients, "gradients", _COLUMNS)
    _check_analysis_table(gradient_null, "gradient_null", _COLUMNS)
    keys = list(PAIR_KEYS) + (["seed"] if "seed" in gradients.columns and "seed" in gradient_null.columns else [])
    nulls = dict(iter(gradient_null.groupby(keys, sort=False)))
    parts = []
    for key, group in gradients.groupby(keys, sort=True):
        if key not in nulls:
            raise ValueError(f"gradient_null: no rows for {dict(zip(keys, key))}; pass the tables of the same analysis")
        merged = compare_with_null(group.drop(columns=keys), nulls[key].drop(columns=keys))
        parts.append(merged.assign(**dict(zip(keys, key)), pair=pair_label(*key[:3])))
    return pd.concat(parts, ignore_index=True)


def head_alignment_table(gradients: pd.DataFrame, gradient_null: pd.DataFrame) -> pd.DataFrame:
    """Per-head cosines in long form: one row per (pair, matrix kind, layer, head, measure).

    ``measure`` is :data:`OBSERVED` (``cos(g_old, g_new)``) or :data:`NULL` (the old task's split-half
    cosine). Heads: q rows and o columns by query head, k and v rows by key/value head (grouped-query
    attention: fewer k/v heads). Only weight slices (no biases or LoRA factors).
    """
    merged = with_null(gradients, gradient_null)
    heads = merged[(merged["unit"] == "head") & (merged["part"] == "weight") & merged["kind"].isin(ATTENTION_KINDS)]
    keep = ["pair", "stage", "new_task", "old_task", "kind", "head_type", "layer", "head"]
    long = heads[keep + ["cosine", "null_cosine"]].rename(columns={"cosine": OBSERVED, "null_cosine": NULL})
    long = long.melt(id_vars=keep, value_vars=[OBSERVED, NULL], var_name="measure", value_name="value")
    long = long.groupby(keep + ["measure"], sort=True)["value"].mean().reset_index()  # the mean over seeds, if several
    long["layer"] = long["layer"].astype(int)
    long["head"] = long["head"].astype(int)
    long["matrix"] = long["kind"].map(KIND_LABELS)
    return long.dropna(subset=["value"]).reset_index(drop=True)


def _select(name: str, options: list[str], value: str, label: str) -> alt.Parameter:
    return alt.param(name=name, value=value, bind=alt.binding_select(options=options, name=label))


def head_alignment_heatmap(
    gradients: pd.DataFrame,
    gradient_null: pd.DataFrame,
    *,
    title: str = "Gradient alignment per attention head",
    subtitle: str | Sequence[str] = "",
    cell_size: int = 34,
) -> alt.LayerChart:
    """Layer x head heatmap of the gradient cosine, with three selects: the matrix (q/k/v/o), the
    analysed pair (stage, old task) and the measure (old vs new, or the split-half null).

    Red = negative cosine (the old task's gradient points against the new task's: a step on the new
    task raises the old task's loss to first order), blue = positive. The k and v matrices have only
    the key/value heads (grouped-query attention), so their grid is narrower.
    Data: pairs x (2 H + 2 K) x layers x 2 rows (:func:`head_alignment_table`).
    """
    table = head_alignment_table(gradients, gradient_null)
    pairs = list(dict.fromkeys(table.sort_values(["stage", "old_task"])["pair"]))
    matrices = [KIND_LABELS[k] for k in ATTENTION_KINDS if KIND_LABELS[k] in set(table["matrix"])]
    params = [
        _select("matrix", matrices, matrices[0], "matrix "),
        _select("pair", pairs, pairs[0], "pair (stage: old task vs new task) "),
        _select("measure", [OBSERVED, NULL], OBSERVED, "measure "),
    ]
    layers = sorted(table["layer"].unique(), reverse=True)
    heads = sorted(table["head"].unique())
    base = alt.Chart(table).transform_filter(
        "datum.matrix == matrix && datum.pair == pair && datum.measure == measure"
    ).encode(
        x=alt.X("head:O", title="head (query head for q/o, key/value head for k/v)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y("layer:O", sort=layers, title="layer (0 = first)"),
        tooltip=[alt.Tooltip("pair:N"), alt.Tooltip("matrix:N"), alt.Tooltip("layer:O"), alt.Tooltip("head:O"),
                 alt.Tooltip("head_type:N", title="head type"), alt.Tooltip("measure:N"),
                 alt.Tooltip("value:Q", title="cosine", format=".3f")],
    )
    rect = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color("value:Q", title="cosine", scale=alt.Scale(scheme="redblue", domain=[-1, 1])),
    )
    text = base.mark_text(fontSize=10).encode(
        text=alt.Text("value:Q", format=".2f"),
        color=alt.condition("abs(datum.value) > 0.6", alt.value("white"), alt.value("black")),
    )
    lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    key = ("Red: cosine < 0. Observed: the old task's gradient conflicts with the new task's; "
           "null: the two halves of the old task's data disagree.")
    lines = [s for s in lines if s] + [key]
    return alt.layer(rect, text).add_params(*params).properties(
        width=cell_size * len(heads), height=cell_size * len(layers),
        title=alt.TitleParams(title, subtitle=lines, anchor="start"),
        description=f"{title}: layer x head heatmap of gradient cosines; select the matrix, the pair and the measure.",
    )


def matrix_alignment_table(gradients: pd.DataFrame, gradient_null: pd.DataFrame) -> pd.DataFrame:
    """Per-matrix cosines of the attention and MLP projections, long form: one row per (pair, layer,
    matrix, measure), with ``group`` (attention or mlp) and ``measure`` (:data:`OBSERVED` or :data:`NULL`)."""
    merged = with_null(gradients, gradient_null)
    kinds = ATTENTION_KINDS + MLP_KINDS
    rows = merged[(merged["unit"] == "matrix") & (merged["part"] == "weight") & merged["kind"].isin(kinds)]
    keep = ["pair", "stage", "new_task", "old_task", "group", "kind", "layer"]
    long = rows[keep + ["cosine", "null_cosine"]].rename(columns={"cosine": OBSERVED, "null_cosine": NULL})
    long = long.melt(id_vars=keep, value_vars=[OBSERVED, NULL], var_name="measure", value_name="value")
    long = long.groupby(keep + ["measure"], sort=True)["value"].mean().reset_index()  # the mean over seeds, if several
    long["layer"] = long["layer"].astype(int)
    long["matrix"] = long["kind"].map(KIND_LABELS)
    return long.dropna(subset=["value"]).reset_index(drop=True)


def matrix_alignment_chart(
    gradients: pd.DataFrame,
    gradient_null: pd.DataFrame,
    *,
    title: str = "Gradient cosine per matrix type, against the split-half null",
    subtitle: str | Sequence[str] = "",
    width: int = 520,
    height: int = 260,
) -> alt.LayerChart:
    """Cosine per matrix type (q, k, v, o | gate, up, down): one point per layer, old vs new beside the
    split-half null, a bar at the mean; a select picks one analysed pair or all pairs together.

    Read it as: where the old-vs-new points sit below 0 while the null points sit well above 0, the
    old task has a reproducible gradient direction there and the new task's gradient opposes it.
    Where the null is itself near 0, the old task's gradient is noise and its cosine cannot be read.
    """
    table = matrix_alignment_table(gradients, gradient_null)
    pairs = list(dict.fromkeys(table.sort_values(["stage", "old_task"])["pair"]))
    order = [KIND_LABELS[k] for k in ATTENTION_KINDS + MLP_KINDS]
    param = _select("pair", [ALL_PAIRS, *pairs], ALL_PAIRS, "pair (stage: old task vs new task) ")
    colors = alt.Scale(domain=[OBSERVED, NULL], range=["#c0392b", "#7f8c8d"])
    base = alt.Chart(table).transform_filter(f"pair == '{ALL_PAIRS}' || datum.pair == pair")
    x = alt.X("matrix:N", sort=order, title="matrix (attention: q, k, v, o; MLP: gate, up, down)",
              axis=alt.Axis(labelAngle=0))
    bars = base.mark_bar(opacity=0.35, size=16).encode(
        x=x, xOffset=alt.XOffset("measure:N", sort=[OBSERVED, NULL]),
        y=alt.Y("mean(value):Q", title="cosine", scale=alt.Scale(domain=[-1, 1])),
        color=alt.Color("measure:N", scale=colors, title=None, legend=alt.Legend(orient="top")),
        tooltip=[alt.Tooltip("matrix:N"), alt.Tooltip("measure:N"), alt.Tooltip("mean(value):Q", title="mean cosine", format=".3f"),
                 alt.Tooltip("count():Q", title="matrices")],
    )
    points = base.mark_circle(size=38, opacity=0.9).encode(
        x=x, xOffset=alt.XOffset("measure:N", sort=[OBSERVED, NULL]), y=alt.Y("value:Q"),
        color=alt.Color("measure:N", scale=colors, title=None),
        tooltip=[alt.Tooltip("pair:N"), alt.Tooltip("matrix:N"), alt.Tooltip("layer:O"), alt.Tooltip("measure:N"),
                 alt.Tooltip("value:Q", title="cosine", format=".3f")],
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="black", strokeDash=[4, 3]).encode(y="y:Q")
    lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    lines = [s for s in lines if s] + ["Points: one matrix per layer. Bars: the mean. Below the dashed line: conflict."]
    return alt.layer(bars, points, zero).add_params(param).properties(
        width=width, height=height, title=alt.TitleParams(title, subtitle=lines, anchor="start"),
        description=f"{title}: cosine per matrix type for the old-vs-new gradients and the split-half null; select the pair.",
    )


def conflict_summary(gradients: pd.DataFrame, gradient_null: pd.DataFrame) -> pd.DataFrame:
    """Conflict rates (fraction of units with cosine < 0) of the old-vs-new alignment and of the null.

    Rows: ``attention`` and ``mlp`` matrices (unit ``matrix``, the q/k/v/o and gate/up/down weights of
    every layer, over all pairs) and attention ``heads`` (unit ``head``). Columns: ``units``,
    ``observed`` (:func:`~forgetting.mechanisms.gradients.conflict_rate` of ``gradients``), ``null``
    (the same for ``gradient_null``: how often two halves of the old task's own data disagree in sign),
    ``excess`` = observed - null, and ``mean_cosine`` / ``mean_null_cosine``.
    """
    _check_analysis_table(gradients, "gradients", _COLUMNS)
    _check_analysis_table(gradient_null, "gradient_null", _COLUMNS)
    kinds = {"attention": ATTENTION_KINDS, "mlp": MLP_KINDS}
    rows = []
    for label, unit, group in (("attention matrices", "matrix", "attention"), ("MLP matrices", "matrix", "mlp"),
                               ("attention heads", "head", "attention")):
        pick = lambda df: df[(df["unit"] == unit) & (df["group"] == group) & (df["part"] == "weight")  # noqa: E731
                             & df["kind"].isin(kinds[group])]
        obs, null = pick(gradients), pick(gradient_null)
        o, n = conflict_rate(obs, unit=unit), conflict_rate(null, unit=unit)
        rows.append({"units": label, "n": int(o["n_units"].iloc[0]), "observed": float(o["conflict_rate"].iloc[0]),
                     "null": float(n["conflict_rate"].iloc[0]), "mean_cosine": float(obs["cosine"].mean()),
                     "mean_null_cosine": float(null["cosine"].mean())})
    out = pd.DataFrame(rows)
    out["excess"] = out["observed"] - out["null"]
    return out[["units", "n", "observed", "null", "excess", "mean_cosine", "mean_null_cosine"]]


def pair_summary(gradients: pd.DataFrame, gradient_null: pd.DataFrame) -> pd.DataFrame:
    """One row per analysed pair (the mean over seeds, if several): the whole-model cosine (``model``
    unit, group ``all``), the attention and MLP cosines (``model`` unit per group) and the old task's
    split-half null cosine for the whole model (``null_all``)."""
    merged = with_null(gradients, gradient_null)
    model = merged[merged["unit"] == "model"]
    index = ["pair", *PAIR_KEYS]
    wide = model.pivot_table(index=index, columns="group", values="cosine").reset_index()
    null = model[model["group"] == "all"].groupby(index)["null_cosine"].mean().rename("null_all").reset_index()
    wide = wide.merge(null, on=index)
    keep = index + [c for c in ("all", "attention", "mlp", "null_all") if c in wide.columns]
    wide = wide[keep].rename(columns={"all": "cosine_all", "attention": "cosine_attention", "mlp": "cosine_mlp"})
    wide.columns.name = None
    return wide.sort_values(["stage", "old_task"]).reset_index(drop=True)


def first_order_chart(
    segment: pd.DataFrame,
    *,
    title: str = "First-order estimate against the observed change, along the stage's update",
    subtitle: str | Sequence[str] = "",
    width: int = 420,
    height: int = 280,
) -> alt.LayerChart:
    """The old task's loss change along the straight line from the snapshot before a stage to the one after,
    ``theta_a + t delta`` (``delta = theta_b - theta_a``): observed ``L_old(theta_a + t delta) - L_old(theta_a)``
    (solid) and the first-order estimate ``t g_old . delta`` (dashed), against t on a log axis; a select
    picks the pair.

    ``segment``: one row per (pair, t) with columns ``pair``, ``t``, ``observed``, ``predicted``.
    """
    _check_analysis_table(segment, "segment", ("pair", "t", "observed", "predicted"))
    pairs = list(dict.fromkeys(segment.sort_values(["stage", "old_task"])["pair"] if "stage" in segment else segment["pair"]))
    long = segment.melt(id_vars=["pair", "t"], value_vars=["observed", "predicted"], var_name="curve", value_name="change")
    names = {"observed": "observed L(θa + tΔ) − L(θa)", "predicted": "first order t g·Δ"}
    long["curve"] = long["curve"].map(names)
    param = _select("pair", pairs, pairs[0], "pair (stage: old task vs new task) ")
    chart = alt.Chart(long).transform_filter("datum.pair == pair").mark_line(point=True).encode(
        x=alt.X("t:Q", scale=alt.Scale(type="log"), title="fraction t of the stage's update Δ (log scale)"),
        y=alt.Y("change:Q", title="change of the old task's loss (nats/token)"),
        color=alt.Color("curve:N", title=None, legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=list(names.values()), range=["#2c3e50", "#e67e22"])),
        strokeDash=alt.StrokeDash("curve:N", legend=None,
                                  scale=alt.Scale(domain=list(names.values()), range=[[1, 0], [5, 4]])),
        tooltip=[alt.Tooltip("pair:N"), alt.Tooltip("t:Q", format=".3f"), alt.Tooltip("curve:N"),
                 alt.Tooltip("change:Q", format=".4f")],
    )
    zero = alt.Chart(pd.DataFrame({"y": [0.0]})).mark_rule(color="gray", strokeDash=[2, 2]).encode(y="y:Q")
    lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    lines = [s for s in lines if s] + ["t = 1 is the whole stage; the curves part where the loss stops being linear in t."]
    return alt.layer(zero, chart).add_params(param).properties(
        width=width, height=height, title=alt.TitleParams(title, subtitle=lines, anchor="start"),
        description=f"{title}: observed and first-order loss change against t; select the pair.",
    )


__all__ = [
    "ALL_PAIRS",
    "NULL",
    "OBSERVED",
    "conflict_summary",
    "first_order_chart",
    "head_alignment_heatmap",
    "head_alignment_table",
    "matrix_alignment_chart",
    "matrix_alignment_table",
    "pair_label",
    "pair_summary",
    "with_null",
]
