"""Charts of chapter 04 (loss-landscape flattening): curvature before and after, curvature against the
loss along a path, the loss plane through three snapshots, the 1-D interpolation and the Taylor estimate.

Every chart is Altair with its data embedded and works offline (:mod:`forgetting.viz.offline`); the
interactive ones switch what they show with a select bound to a Vega-Lite param. Inputs are the long
tables of :mod:`forgetting.analysis` (``curvature``) and of :mod:`forgetting.mechanisms.landscape`
(:func:`~forgetting.mechanisms.landscape.interpolate_1d`, :func:`~forgetting.mechanisms.landscape.plane_2d`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from forgetting.viz.charts import _check_columns, _per_metric_expr

#: Curvature measures in the select of :func:`curvature_change`, with their labels.
CURVATURE_MEASURES = {
    "lambda_max": "top eigenvalue lambda_max",
    "lambda_max_per_loss": "lambda_max / loss",
    "loss": "old task's loss (nats/token)",
}
CURVATURE_COLUMNS = ("stage", "new_task", "old_task", "snapshot", "loss", "lambda_max", "lambda_max_per_loss")


def _select(name: str, options: Sequence[str], labels: Mapping[str, str], value: str, label: str) -> alt.Parameter:
    return alt.param(name=name, value=value, bind=alt.binding_select(
        options=list(options), labels=[labels.get(o, o) for o in options], name=label))


def _log_domain(values: pd.Series) -> list[float]:
    """A log-scale domain [lo, hi] padded by 20 % on each side (positive values only)."""
    v = values[np.isfinite(values) & (values > 0)]
    if v.empty:
        return [0.1, 1.0]
    return [float(v.min()) / 1.2, float(v.max()) * 1.2]


def curvature_table(curvature: pd.DataFrame) -> pd.DataFrame:
    """The ``curvature`` table of :func:`forgetting.analysis.report.analysis_for` in long form for plotting.

    Columns: ``pair`` ("recall_city after recall_job (stage 2)"), ``stage``, ``old_task``, ``new_task``,
    ``snapshot`` ("before"/"after"), ``measure`` (one of :data:`CURVATURE_MEASURES`), ``value`` (mean
    over seeds when a ``seed`` column is present), ``n`` (runs averaged). One row per pair, snapshot
    and measure.
    """
    _check_columns(curvature, CURVATURE_COLUMNS, "curvature")
    if curvature.empty:
        raise ValueError("curvature: the table is empty: nothing to plot")
    long = curvature.melt(id_vars=["stage", "new_task", "old_task", "snapshot"], value_vars=list(CURVATURE_MEASURES),
                          var_name="measure", value_name="value")
    out = (long.groupby(["stage", "new_task", "old_task", "snapshot", "measure"], sort=False)["value"]
           .agg(value="mean", n="count").reset_index())
    out["pair"] = [f"{o} after {n} (stage {s})" for o, n, s in zip(out["old_task"], out["new_task"], out["stage"])]
    return out.sort_values(["stage", "old_task", "measure", "snapshot"]).reset_index(drop=True)


def curvature_change(curvature: pd.DataFrame, *, title: str = "Curvature of the old task before and after",
                     subtitle: str | Sequence[str] = "", width: int = 420) -> alt.LayerChart:
    """Dumbbell chart: for each (stage, old task) the measure before (hollow) and after (filled) the stage.

    A select switches the measure: ``lambda_max`` (top Hessian eigenvalue of the old task's loss),
    ``lambda_max_per_loss`` (the same divided by the loss, which removes the part of the curvature that
    only follows the loss level) and ``loss``. Log x scale: the values span orders of magnitude.
    Data: pairs x 2 snapshots x 3 measures rows (:func:`curvature_table`).
    """
    table = curvature_table(curvature)
    measures = [m for m in CURVATURE_MEASURES if m in set(table["measure"])]
    order = table.drop_duplicates("pair")["pair"].tolist()
    domains = {m: _log_domain(table.loc[table["measure"] == m, "value"]) for m in measures}
    wide = table.pivot_table(index=["pair", "measure"], columns="snapshot", values="value").reset_index()
    wide["ratio"] = wide["after"] / wide["before"]
    param = _select("measure", measures, CURVATURE_MEASURES, measures[0], "measure ")
    x_scale = alt.Scale(type="log", domain=_per_metric_expr("measure", domains, [0.1, 1]), nice=False)
    y = alt.Y("pair:N", sort=order, title=None, axis=alt.Axis(labelLimit=320))
    rule = alt.Chart(wide).transform_filter("datum.measure == measure").mark_rule(color="#999", strokeWidth=2).encode(
        x=alt.X("before:Q", scale=x_scale, title="value of the selected measure (log scale)"), x2="after:Q", y=y,
        tooltip=[alt.Tooltip("pair:N"), alt.Tooltip("before:Q", format=".3g"), alt.Tooltip("after:Q", format=".3g"),
                 alt.Tooltip("ratio:Q", title="after / before", format=".2f")],
    )
    points = alt.Chart(table).transform_filter("datum.measure == measure").mark_point(size=90, strokeWidth=2).encode(
        x=alt.X("value:Q", scale=x_scale),
        y=y,
        fill=alt.condition("datum.snapshot == 'after'", alt.value("#d62728"), alt.value("white")),
        color=alt.Color("snapshot:N", sort=["before", "after"], scale=alt.Scale(range=["#1f77b4", "#d62728"]),
                        title="snapshot"),
        tooltip=[alt.Tooltip("pair:N"), alt.Tooltip("snapshot:N"), alt.Tooltip("measure:N"),
                 alt.Tooltip("value:Q", format=".4g"), alt.Tooltip("n:Q", title="runs averaged")],
    )
    subtitle_lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    return alt.layer(rule, points).add_params(param).properties(
        width=width, height=28 * len(order),
        title=alt.TitleParams(title, subtitle=[s for s in subtitle_lines if s] or alt.Undefined, anchor="start"),
        description="Dumbbell chart of the old task's curvature before and after each stage; select the measure below.",
    )


# ----------------------------------------------------------------------------------------------
# 1-D: loss along the segment between two snapshots; curvature against loss along paths
# ----------------------------------------------------------------------------------------------


def interpolation_chart(line: pd.DataFrame, *, labels: Mapping[float, str] | None = None,
                        title: str = "Loss on the segment between two snapshots", width: int = 420,
                        height: int = 240) -> alt.LayerChart:
    """Both tasks' losses along ``theta(alpha) = (1 - alpha) theta_a + alpha theta_b``.

    ``line``: :func:`~forgetting.mechanisms.landscape.interpolate_1d` output (``alpha``, ``task``, ``loss``).
    ``labels``: alpha -> text for dashed rules (default ``{0: "a", 1: "b"}``). Log y scale.
    """
    _check_columns(line, ("alpha", "task", "loss"), "line")
    labels = {0.0: "a", 1.0: "b"} if labels is None else dict(labels)
    marks = pd.DataFrame({"alpha": list(labels), "label": list(labels.values())})
    lines = alt.Chart(line).mark_line(point=True).encode(
        x=alt.X("alpha:Q", title="alpha (position on the segment)"),
        y=alt.Y("loss:Q", title="loss (nats/token, log scale)", scale=alt.Scale(type="log")),
        color=alt.Color("task:N", title="task's loss"),
        tooltip=[alt.Tooltip("task:N"), alt.Tooltip("alpha:Q", format=".3f"), alt.Tooltip("loss:Q", format=".3f")],
    )
    rules = alt.Chart(marks).mark_rule(strokeDash=[4, 3], color="#666").encode(x="alpha:Q")
    text = alt.Chart(marks).mark_text(baseline="top", dy=-12, fontSize=11).encode(x="alpha:Q", y=alt.value(0), text="label:N")
    return alt.layer(lines, rules, text).properties(width=width, height=height,
                                                    title=alt.TitleParams(title, anchor="start", offset=16))


#: Measures of :func:`curvature_path_chart`.
PATH_MEASURES = {
    "lambda_max": "top eigenvalue lambda_max",
    "abs_lambda_min": "|most negative eigenvalue|",
    "lambda_max_per_loss": "lambda_max / loss",
}


def curvature_path_chart(path: pd.DataFrame, *, marks: pd.DataFrame | None = None,
                         title: str = "Curvature against the old task's loss", width: int = 420,
                         height: int = 280) -> alt.LayerChart:
    """Curvature (y, select: :data:`PATH_MEASURES`) against the loss (x) at points along named paths.

    ``path``: columns ``path`` (e.g. "learning A", "forgetting A"), ``alpha``, ``loss``, ``lambda_max``,
    ``lambda_min``; one row per point. Points of a path are joined in ``alpha`` order. ``marks``
    (optional, columns ``loss``, ``label``): dashed vertical rules, e.g. a matched loss level.
    Comparing two paths at the same x is comparing curvature at matched loss. Log-log axes.
    """
    _check_columns(path, ("path", "alpha", "loss", "lambda_max", "lambda_min"), "path")
    df = path.copy()
    df["abs_lambda_min"] = (-df["lambda_min"]).clip(lower=0.0)
    df["lambda_max_per_loss"] = df["lambda_max"] / df["loss"]
    long = df.melt(id_vars=["path", "alpha", "loss"], value_vars=list(PATH_MEASURES), var_name="measure",
                   value_name="value")
    domains = {m: _log_domain(long.loc[long["measure"] == m, "value"]) for m in PATH_MEASURES}
    param = _select("path_measure", list(PATH_MEASURES), PATH_MEASURES, "lambda_max", "curvature ")
    x = alt.X("loss:Q", title="old task's loss (nats/token, log scale)", scale=alt.Scale(type="log"))
    layers = [alt.Chart(long).transform_filter("datum.measure == path_measure").mark_line(point=alt.OverlayMarkDef(size=50)).encode(
        x=x,
        y=alt.Y("value:Q", title="selected curvature measure (log scale)",
                scale=alt.Scale(type="log", domain=_per_metric_expr("path_measure", domains, [0.1, 1]), nice=False)),
        color=alt.Color("path:N", title="path"),
        order="alpha:Q",
        tooltip=[alt.Tooltip("path:N"), alt.Tooltip("alpha:Q", format=".3f"), alt.Tooltip("loss:Q", format=".3f"),
                 alt.Tooltip("measure:N"), alt.Tooltip("value:Q", format=".4g")],
    )]
    if marks is not None and len(marks):
        _check_columns(marks, ("loss", "label"), "marks")
        layers.append(alt.Chart(marks).mark_rule(strokeDash=[4, 3], color="#666").encode(x=alt.X("loss:Q")))
        layers.append(alt.Chart(marks).mark_text(align="left", dx=4, baseline="top", fontSize=11).encode(
            x="loss:Q", y=alt.value(2), text="label:N"))
    return alt.layer(*layers).add_params(param).properties(
        width=width, height=height, title=alt.TitleParams(title, anchor="start"),
        description="Curvature against loss along paths between snapshots; select the curvature measure below.",
    )


# ----------------------------------------------------------------------------------------------
# 2-D: the plane through three snapshots
# ----------------------------------------------------------------------------------------------


def plane_table(plane: pd.DataFrame, *, sum_label: str = "sum") -> pd.DataFrame:
    """:func:`~forgetting.mechanisms.landscape.plane_2d` output plus the sum of the tasks' losses, with
    cell edges for a ``rect`` mark: columns ``x``, ``y``, ``x0``, ``x1``, ``y0``, ``y1``, ``task``, ``loss``.
    The sum rows have ``task == sum_label``; one row per grid point and (task or sum)."""
    _check_columns(plane, ("x", "y", "task", "loss"), "plane")
    if plane.empty:
        raise ValueError("plane: the table is empty: nothing to plot")
    total = plane.groupby(["x", "y"], as_index=False)["loss"].sum().assign(task=sum_label)
    df = pd.concat([plane[["x", "y", "task", "loss"]], total], ignore_index=True)
    for axis in ("x", "y"):
        values = np.unique(df[axis].to_numpy(dtype=float))
        half = np.diff(values).min() / 2 if len(values) > 1 else 0.5
        df[f"{axis}0"] = df[axis] - half
        df[f"{axis}1"] = df[axis] + half
    return df


def plane_heatmap(plane: pd.DataFrame, points: Mapping[str, tuple[float, float]] | None = None, *,
                  point_labels: Mapping[str, str] | None = None, title: str = "Loss on the plane through three snapshots",
                  subtitle: str | Sequence[str] = "", size: int = 330) -> alt.LayerChart:
    """Heatmap of the loss on the plane through three snapshots, with a select for whose loss is shown.

    ``plane``: (x, y, task, loss) from :func:`~forgetting.mechanisms.landscape.plane_2d`; the select offers
    each task and their sum (:func:`plane_table`). ``points``: name -> (x, y) (default
    ``plane.attrs["points"]``: ``origin``, ``a``, ``b``), drawn as labelled white circles;
    ``point_labels`` renames them (e.g. ``{"origin": "base"}``). Colour: log scale, dark = low loss.
    Axes are distances in parameter space (Euclidean norm over all trained weights).
    """
    table = plane_table(plane)
    points = dict(plane.attrs.get("points", {}) if points is None else points)
    point_labels = dict(point_labels or {})
    options = list(dict.fromkeys(table["task"]))
    domains = {t: _log_domain(table.loc[table["task"] == t, "loss"]) for t in options}
    param = _select("plane_task", options, {"sum": "sum of both losses"}, options[-1], "loss of ")
    heat = alt.Chart(table).transform_filter("datum.task == plane_task").mark_rect().encode(
        x=alt.X("x0:Q", title="distance along base -> first snapshot (parameter-space units)", scale=alt.Scale(nice=False, zero=False)),
        x2="x1:Q",
        y=alt.Y("y0:Q", title="orthogonal distance (parameter-space units)", scale=alt.Scale(nice=False, zero=False)),
        y2="y1:Q",
        color=alt.Color("loss:Q", title="loss (nats/token)", scale=alt.Scale(
            type="log", scheme="viridis", domain=_per_metric_expr("plane_task", domains, [0.1, 1]))),
        tooltip=[alt.Tooltip("task:N", title="loss of"), alt.Tooltip("x:Q", format=".2f"),
                 alt.Tooltip("y:Q", format=".2f"), alt.Tooltip("loss:Q", format=".3f")],
    )
    layers: list[alt.Chart] = [heat]
    if points:
        pts = pd.DataFrame([{"name": point_labels.get(k, k), "x": float(v[0]), "y": float(v[1])} for k, v in points.items()])
        layers.append(alt.Chart(pts).mark_point(shape="circle", size=110, filled=True, color="white",
                                                stroke="black", strokeWidth=1.5).encode(
            x="x:Q", y="y:Q", tooltip=[alt.Tooltip("name:N", title="snapshot"), alt.Tooltip("x:Q", format=".2f"),
                                       alt.Tooltip("y:Q", format=".2f")]))
        layers.append(alt.Chart(pts).mark_text(align="left", dx=9, dy=-9, fontSize=12, fontWeight="bold",
                                               color="white").encode(x="x:Q", y="y:Q", text="name:N"))
    subtitle_lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    return alt.layer(*layers).add_params(param).properties(
        width=size, height=size,
        title=alt.TitleParams(title, subtitle=[s for s in subtitle_lines if s] or alt.Undefined, anchor="start"),
        description="Heatmap of the loss on the plane through three snapshots; select whose loss below.",
    )


# ----------------------------------------------------------------------------------------------
# Taylor estimate vs observed
# ----------------------------------------------------------------------------------------------

TAYLOR_SERIES = {"first_order": "first order g.d", "predicted": "second order g.d + d'Hd/2", "actual": "observed"}


def taylor_chart(taylor: pd.DataFrame, *, title: str = "Predicted and observed change of the old task's loss",
                 width: int = 420, height: int = 240) -> alt.Chart:
    """The loss change along ``t * d`` (``t`` in (0, 1], d = after - before) predicted to first and
    second order, and observed.

    ``taylor``: one row per ``t`` with columns ``t``, ``first_order``, ``predicted``, ``actual``
    (:func:`~forgetting.mechanisms.landscape.second_order_change` with ``evaluate_actual=True`` on ``t * d``).
    """
    _check_columns(taylor, ("t", *TAYLOR_SERIES), "taylor")
    long = taylor.melt(id_vars=["t"], value_vars=list(TAYLOR_SERIES), var_name="series", value_name="change")
    long["series"] = long["series"].map(TAYLOR_SERIES)
    return alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("t:Q", title="fraction t of the step d = theta_after - theta_before"),
        y=alt.Y("change:Q", title="change of the old task's loss (nats/token)"),
        color=alt.Color("series:N", sort=list(TAYLOR_SERIES.values()), title=None),
        tooltip=[alt.Tooltip("series:N"), alt.Tooltip("t:Q"), alt.Tooltip("change:Q", format=".4f")],
    ).properties(width=width, height=height, title=alt.TitleParams(title, anchor="start"))


__all__ = [
    "CURVATURE_MEASURES",
    "PATH_MEASURES",
    "curvature_change",
    "curvature_path_chart",
    "curvature_table",
    "interpolation_chart",
    "plane_heatmap",
    "plane_table",
    "taylor_chart",
]
