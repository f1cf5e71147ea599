"""Charts and tables for representational drift (chapter 03), from the ``drift`` and ``heads`` tables of
:func:`forgetting.analysis.report.analysis_for`.

``drift`` has one row per (stage, old task, layer, null): ``cka`` is the linear CKA of the old task's
representations (residual stream after each block, mean over the example's tokens) between the snapshot
before the stage and the one after it (``null == ""``), or between the snapshot before and a null
snapshot (``null == "continue"``: the previous task trained further for as long; ``"reseed"``: the
previous task re-trained from the same start with another seed). Layer 0 is the embedding output,
layer l the output of decoder layer l. ``heads`` has per-head measures, among them ``output_cka`` (CKA
of one head's output before vs after), with the same ``null`` column.

The drift of a layer is ``1 - CKA``; it counts only where it stands clear of both nulls (training the old task alone moves representations too).
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from forgetting.mechanisms.drift import intermediate_layers
from forgetting.viz.charts import PAIR_KEYS, _check_analysis_table

SOURCES = {"": "observed (before vs after)", "continue": "continue null", "reseed": "reseed null"}
SOURCE_ORDER = list(SOURCES.values())
SOURCE_COLORS = ["#c0392b", "#2980b9", "#7f8c8d"]
PAPER_DROP = (0.32, 0.47)  # the paper's CKA drop in intermediate layers


def pair_label(stage: int, new_task: str, old_task: str) -> str:
    """``"stage 2: recall_city while training recall_job"``."""
    return f"stage {int(stage)}: {old_task} while training {new_task}"


def drift_table(drift: pd.DataFrame, *, readout: str = "mean", debiased: bool = False) -> pd.DataFrame:
    """The drift rows of one estimator in tidy form, averaged over seeds: one row per (pair, source,
    layer) with ``cka`` (mean), ``drop`` = 1 - cka, ``n_seeds``, ``source`` (observed / continue null /
    reseed null), ``pair`` (a label) and ``intermediate`` (bool, :func:`intermediate_layers`).

    The table holds several estimators (columns ``readout`` and ``debiased``); only the rows of
    ``readout`` (``"mean"`` or ``"last"``) and ``debiased`` are used (the defaults are the rows the
    table always had: mean over tokens, biased CKA)."""
    _check_analysis_table(drift, "drift", ("layer", "cka", "null", *PAIR_KEYS))
    if "readout" in drift.columns:
        drift = drift[drift["readout"] == readout]
    if "debiased" in drift.columns:
        drift = drift[drift["debiased"].astype(bool) == debiased]
    if drift.empty:
        raise ValueError(f"drift: no rows with readout {readout!r} and debiased={debiased}")
    unknown = sorted(set(drift["null"].fillna("")) - set(SOURCES))
    if unknown:
        raise ValueError(f"drift: unknown null kind(s) {unknown}; allowed: {sorted(SOURCES)}")
    df = drift.assign(null=drift["null"].fillna("").astype(str))
    out = df.groupby([*PAIR_KEYS, "null", "layer"], sort=True)["cka"].agg(cka="mean", n_seeds="count").reset_index()
    out["drop"] = 1.0 - out["cka"]
    out["source"] = out["null"].map(SOURCES)
    out["pair"] = [pair_label(s, n, o) for s, n, o in zip(out["stage"], out["new_task"], out["old_task"])]
    middle = set(intermediate_layers(out["layer"]))
    out["intermediate"] = out["layer"].isin(middle)
    return out.drop(columns="null")


def drift_summary(drift: pd.DataFrame, *, readout: str = "mean", debiased: bool = False) -> pd.DataFrame:
    """Per pair: the mean drop (1 - CKA) over the intermediate layers, observed and under each null,
    ``excess`` = observed drop - the larger null drop, and ``clear_layers``: how many intermediate layers
    have an observed CKA below both nulls' (the drift stands clear of both), out of ``n_layers``; for the
    estimator ``readout`` / ``debiased`` (:func:`drift_table`)."""
    table = drift_table(drift, readout=readout, debiased=debiased)
    mid = table[table["intermediate"]]
    wide = mid.pivot_table(index=["pair", *PAIR_KEYS, "layer"], columns="source", values="cka").reset_index()
    wide.columns.name = None
    nulls = [s for s in SOURCE_ORDER[1:] if s in wide.columns]
    observed = SOURCE_ORDER[0]
    wide["clear"] = wide[observed] < wide[nulls].min(axis=1) if nulls else False
    rows = []
    for (pair, stage, new, old), g in wide.groupby(["pair", *PAIR_KEYS], sort=False):
        row = {"pair": pair, "stage": stage, "new_task": new, "old_task": old, "drop": float((1 - g[observed]).mean())}
        for s in nulls:
            row[s.replace(" null", "_drop")] = float((1 - g[s]).mean())
        row["excess"] = row["drop"] - max((row[s.replace(" null", "_drop")] for s in nulls), default=0.0)
        row["clear_layers"] = int(g["clear"].sum())
        row["n_layers"] = len(g)
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["stage", "old_task"]).reset_index(drop=True)


def cka_layer_chart(
    drift: pd.DataFrame,
    *,
    paper_drop: tuple[float, float] | None = PAPER_DROP,
    title: str = "CKA per layer, before vs after the stage, against the nulls",
    subtitle: str | Sequence[str] = "",
    width: int = 440,
    height: int = 280,
) -> alt.LayerChart:
    """CKA per layer for one (stage, old task) pair, picked with a select: observed (before vs after),
    and the continue and reseed nulls (before vs a null snapshot). With ``paper_drop``, a band marks the
    CKA the paper's drop would give in the intermediate layers (``1 - 0.47`` to ``1 - 0.32``).

    Data: pairs x 3 sources x layers rows (:func:`drift_table`).
    """
    table = drift_table(drift)
    pairs = list(dict.fromkeys(table.sort_values(["stage", "old_task"])["pair"]))
    param = alt.param(name="pair", value=pairs[0], bind=alt.binding_select(options=pairs, name="pair "))
    layers = sorted(table["layer"].unique())
    x = alt.X("layer:Q", title="layer (0 = embedding output, l = after block l)",
              scale=alt.Scale(domain=[layers[0], layers[-1]], nice=False),
              axis=alt.Axis(values=[int(v) for v in layers], format="d"))
    lines = alt.Chart(table).transform_filter("datum.pair == pair").mark_line(point=True).encode(
        x=x, y=alt.Y("cka:Q", title="linear CKA (1 = unchanged)", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("source:N", sort=SOURCE_ORDER, title=None, legend=alt.Legend(orient="top"),
                        scale=alt.Scale(domain=SOURCE_ORDER, range=SOURCE_COLORS)),
        strokeDash=alt.StrokeDash("source:N", sort=SOURCE_ORDER, legend=None,
                                  scale=alt.Scale(domain=SOURCE_ORDER, range=[[1, 0], [5, 3], [2, 2]])),
        tooltip=[alt.Tooltip("pair:N"), alt.Tooltip("source:N"), alt.Tooltip("layer:O"),
                 alt.Tooltip("cka:Q", format=".3f"), alt.Tooltip("drop:Q", title="1 - CKA", format=".3f"),
                 alt.Tooltip("n_seeds:Q", title="seeds")],
    )
    parts: list[alt.Chart] = []
    notes = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    notes = [s for s in notes if s]
    middle = intermediate_layers(layers)
    if paper_drop is not None and middle:
        band = pd.DataFrame({"x0": [min(middle)], "x1": [max(middle)], "y0": [1 - paper_drop[1]], "y1": [1 - paper_drop[0]]})
        parts.append(alt.Chart(band).mark_rect(color="#f1c40f", opacity=0.25).encode(
            x="x0:Q", x2="x1", y="y0:Q", y2="y1",
            tooltip=[alt.Tooltip("y0:Q", title="CKA from", format=".2f"), alt.Tooltip("y1:Q", title="CKA to", format=".2f")]))
        notes.append(f"Yellow band: the paper's drop of {paper_drop[0]:.2f} to {paper_drop[1]:.2f} in intermediate layers.")
    return alt.layer(*parts, lines).add_params(param).properties(
        width=width, height=height, title=alt.TitleParams(title, subtitle=notes or alt.Undefined, anchor="start"),
        description=f"{title}: CKA against layer for the observed change and the two nulls; select the pair.",
    )


def head_cka_table(heads: pd.DataFrame, old_task: str, metric: str = "output_cka") -> pd.DataFrame:
    """Per-head ``metric`` for one old task, wide by source, for
    :func:`forgetting.viz.charts.layer_head_heatmap` with ``step="stage"``: columns ``layer``, ``head``,
    ``stage`` and one column per source present (``observed``, ``continue null``, ``reseed null``);
    averaged over seeds."""
    _check_analysis_table(heads, "heads", ("layer", "head", "metric", "value", "null", *PAIR_KEYS))
    rows = heads[(heads["old_task"] == old_task) & (heads["metric"] == metric)]
    if rows.empty:
        raise ValueError(f"heads: no {metric!r} rows for old task {old_task!r}; old tasks: "
                         f"{sorted(heads['old_task'].unique())}")
    rows = rows.assign(source=rows["null"].fillna("").astype(str).map(SOURCES).str.replace(r" \(.*\)", "", regex=True))
    wide = rows.pivot_table(index=["layer", "head", "stage"], columns="source", values="value", aggfunc="mean").reset_index()
    wide.columns.name = None
    return wide


__all__ = [
    "PAPER_DROP",
    "SOURCES",
    "cka_layer_chart",
    "drift_summary",
    "drift_table",
    "head_cka_table",
    "intermediate_layers",
    "pair_label",
]
