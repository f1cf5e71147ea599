"""Interactive Altair charts for the book: data embedded, params bound to selects and sliders.

Every chart here works in a static page with no kernel and no network (see
:mod:`forgetting.viz.offline`): the data is aggregated in pandas to well under Altair's 5000-row
limit and embedded in the spec, and interaction is Vega-Lite params bound to HTML inputs.

The evaluation table (``evals``) is the long format written by :mod:`forgetting.evaluate`: one row
per (evaluation point, task, metric) with columns ``stage`` (0 = base, i = while/after training the
i-th task), ``stage_task``, ``step``, ``end_of_stage``, ``task``, ``task_index``, ``metric`` and
``value``. An optional ``seed`` column (several runs) is averaged over.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

#: Order of the metrics in the selects; ``exact_match`` is the default everywhere.
METRIC_ORDER = ("exact_match", "answer_match", "token_accuracy", "loss")
METRIC_LABELS = {
    "exact_match": "exact match",
    "answer_match": "answer match",
    "token_accuracy": "token accuracy",
    "loss": "loss (nats/token, lower is better)",
}
EVAL_COLUMNS = ("stage", "stage_task", "step", "end_of_stage", "task", "task_index", "metric", "value")
MAX_ROWS = 5000


def lower_is_better(metric: str) -> bool:
    """True for losses and perplexities (``loss``, ``heldout_loss``, ``perplexity``)."""
    return metric == "loss" or metric.endswith("loss") or "perplexity" in metric


def _check_columns(df: pd.DataFrame, required: Sequence[str], what: str, hint: str | None = None) -> None:
    """Raise naming ``what`` unless ``df`` is a DataFrame with every ``required`` column (``hint`` ends the message)."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}; {hint or 'required: ' + ', '.join(required)}")


#: The columns that name a (stage, new task, old task) pair in the mechanism report's tables.
PAIR_KEYS = ("stage", "new_task", "old_task")


def _check_analysis_table(df: pd.DataFrame, what: str, columns: Sequence[str]) -> None:
    """:func:`_check_columns` for a table of :func:`forgetting.analysis.report.analysis_for` named ``what``."""
    _check_columns(df, columns, what, hint=f"is it the {what} table of analysis_for?")


def _metric_options(present: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(present))
    return [m for m in METRIC_ORDER if m in present] + sorted(m for m in present if m not in METRIC_ORDER)


def _default(options: list[str], wanted: str, what: str) -> str:
    """``wanted`` if the data has it; the first option when the default exact_match is absent."""
    if wanted in options:
        return wanted
    if wanted == "exact_match":
        return options[0]
    raise ValueError(f"{what}: {wanted!r} is not in the data; allowed: {', '.join(options)}")


def _js(value) -> str:
    """A Python value as a Vega expression literal."""
    return json.dumps(value)


def _per_metric_expr(param: str, by_metric: Mapping[str, object], fallback: object) -> dict:
    """``{"expr": "m == 'a' ? A : m == 'b' ? B : fallback"}`` to switch a scale property with a param."""
    expr = _js(fallback)
    for metric, value in reversed(list(by_metric.items())):
        expr = f"{param} == {_js(metric)} ? {_js(value)} : {expr}"
    return {"expr": expr}


def _nice_ceil(x: float) -> float:
    """``x`` rounded up to 1, 2, 2.5, 5 or 10 times a power of ten (0.71 -> 1, 0.23 -> 0.25)."""
    import math

    power = 10 ** math.floor(math.log10(x))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= x - 1e-15)


MIN_FONT = 10  #: smallest font size (px) a chart draws (Vega-Lite's axis and legend labels are 10 px)
SIGNED_QUANTILE = 0.98  #: the quantile of |value| that bounds a signed colour scale


def _value_domains(df: pd.DataFrame, metrics: Sequence[str], signed: Sequence[str] = ()) -> dict[str, list[float]]:
    """Colour/axis domain per metric: [0, 1] for rates, [0, max] for losses, symmetric for signed ones,
    bounded by the ``SIGNED_QUANTILE`` quantile of ``|value|`` so one outlier cannot wash the rest out
    (values beyond it are clamped to the scale's end; the tooltip keeps them exact)."""
    out: dict[str, list[float]] = {}
    for metric in metrics:
        values = df.loc[df["metric"] == metric, "value"].astype(float)
        values = values[np.isfinite(values)]
        lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
        if metric in signed:
            bound = _nice_ceil(max(float(np.quantile(np.abs(values), SIGNED_QUANTILE)) if len(values) else 1.0,
                                   1e-12))
            out[metric] = [-bound, bound]
        elif lo >= 0 and hi <= 1 and not lower_is_better(metric):
            out[metric] = [0.0, 1.0]
        else:
            out[metric] = [min(0.0, lo), hi if hi > lo else lo + 1.0]
    return out


def _goodness(df: pd.DataFrame, domains: Mapping[str, list[float]], signed: Sequence[str] = (),
              flip_lower: bool = True) -> pd.Series:
    """Each row's position on its metric's colour scale in [0, 1] (with ``flip_lower``, 1 = best for
    lower-is-better metrics too, matching a reversed scale); for signed metrics, the distance from 0
    (1 = far). Decides black or white labels so text stays readable."""
    lo = df["metric"].map(lambda m: domains[m][0])
    hi = df["metric"].map(lambda m: domains[m][1])
    t = ((df["value"] - lo) / (hi - lo).clip(lower=1e-12)).clip(0, 1)
    flip = df["metric"].map(lower_is_better).astype(bool) & flip_lower
    t = t.where(~flip, 1 - t)
    is_signed = df["metric"].isin(list(signed))
    return t.where(~is_signed, (2 * t - 1).abs()).round(3)


def _select(name: str, options: list[str], value: str, label: str) -> alt.Parameter:
    return alt.param(
        name=name,
        value=value,
        bind=alt.binding_select(options=options, labels=[METRIC_LABELS.get(o, o) for o in options], name=label),
    )


def _mean_over_runs(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Average ``value`` over rows that share ``keys`` (several seeds, or a periodic evaluation that
    coincides with the end-of-stage one); adds ``n`` (rows averaged) and ``sem``."""
    grouped = df.groupby(keys, sort=False, dropna=False)["value"]
    out = grouped.agg(value="mean", n="count", sd="std").reset_index()
    out["sem"] = (out["sd"] / np.sqrt(out["n"])).fillna(0.0)
    return out.drop(columns="sd")


# ----------------------------------------------------------------------------------------------
# R: the performance matrix
# ----------------------------------------------------------------------------------------------


def r_matrix_table(evals: pd.DataFrame) -> pd.DataFrame:
    """The end-of-stage rows of ``evals`` in the tidy form the heatmap plots.

    Columns: ``stage``, ``row`` ("base (before fine-tuning)", "after <task>"), ``task_index``,
    ``task``, ``metric``, ``value`` (mean over seeds), ``n``, ``sem``, ``step``.
    Rows: (T + 1) stages x T tasks x metrics.
    """
    _check_columns(evals, EVAL_COLUMNS, "evals")
    rows = evals[evals["end_of_stage"].astype(bool) & (evals["task_index"] >= 0)]
    if rows.empty:
        raise ValueError("evals: no end-of-stage rows (end_of_stage == True, task_index >= 0): nothing to plot")
    table = _mean_over_runs(rows, ["stage", "stage_task", "task_index", "task", "metric"])
    steps = rows.groupby("stage")["step"].max()
    table["step"] = table["stage"].map(steps).astype(int)
    stage_names = table.drop_duplicates("stage").set_index("stage")["stage_task"].sort_index()
    repeated = stage_names[stage_names.duplicated(keep=False)]
    labels = {}
    for stage, name in stage_names.items():
        label = "base (before fine-tuning)" if stage == 0 else f"after {name}"
        labels[stage] = f"{label} (stage {stage})" if name in repeated.values else label
    table["row"] = table["stage"].map(labels)
    tasks = table.drop_duplicates("task_index").set_index("task_index")["task"].sort_index()
    if tasks.duplicated().any():  # the same task twice in a sequence: columns by position
        table["task"] = [f"{t} (#{i})" for t, i in zip(table["task"], table["task_index"])]
    return table.sort_values(["metric", "stage", "task_index"]).reset_index(drop=True)


def r_matrix_heatmap(
    evals: pd.DataFrame,
    *,
    metric: str = "exact_match",
    title: str | None = None,
    cell_size: int = 52,
) -> alt.LayerChart:
    """Heatmap of the performance matrix R, with a select for the metric.

    Row i = the model after training the i-th task of the sequence (the first row, "base", is the
    model before any fine-tuning); column j = the task evaluated; cell = ``R[i, j]``. The diagonal is
    what was just learned, the cells below it what is remembered from earlier tasks, and those above
    it transfer to tasks not yet trained. Colour runs from bad (dark) to good (bright) for every
    metric: for ``loss`` (lower is better) the scale is reversed.

    Data: (T + 1) x T x (number of metrics) rows, see :func:`r_matrix_table`.
    """
    table = r_matrix_table(evals)
    metrics = _metric_options(table["metric"].unique())
    default = _default(metrics, metric, "metric")
    row_order = table.drop_duplicates("stage").sort_values("stage")["row"].tolist()
    col_order = table.drop_duplicates("task_index").sort_values("task_index")["task"].tolist()
    domains = _value_domains(table, metrics)
    table["goodness"] = _goodness(table, domains)

    param = _select("metric", metrics, default, "metric ")
    lower = [m for m in metrics if lower_is_better(m)]
    reverse = {"expr": " || ".join(f"metric == {_js(m)}" for m in lower)} if lower else False
    n_rows, n_cols = len(row_order), len(col_order)
    base = (
        alt.Chart(table)
        .transform_filter("datum.metric == metric")
        .encode(
            x=alt.X("task:N", sort=col_order, title="evaluated task (column j)", axis=alt.Axis(labelAngle=-30, orient="top")),
            y=alt.Y("row:N", sort=row_order, title="model (row i)"),
            tooltip=[
                alt.Tooltip("row:N", title="model"),
                alt.Tooltip("task:N", title="evaluated task"),
                alt.Tooltip("metric:N"),
                alt.Tooltip("value:Q", format=".3f"),
                alt.Tooltip("step:Q", title="global step"),
                alt.Tooltip("n:Q", title="runs averaged"),
            ],
        )
    )
    rect = base.mark_rect(stroke="white", strokeWidth=1).encode(
        color=alt.Color(
            "value:Q",
            title="selected metric",
            scale=alt.Scale(scheme="viridis", domain=_per_metric_expr("metric", domains, [0, 1]), reverse=reverse),
            legend=alt.Legend(orient="right", gradientLength=max(80, cell_size * n_rows - 20)),
        )
    )
    text = base.mark_text(fontSize=max(MIN_FONT, min(13, cell_size // 4))).encode(
        text=alt.Text("value:Q", format=".2f"),
        color=alt.condition("datum.goodness > 0.55", alt.value("black"), alt.value("white")),
    )
    return (
        alt.layer(rect, text)
        .add_params(param)
        .properties(
            width=cell_size * n_cols,
            height=cell_size * n_rows,
            title=alt.TitleParams(
                title or "The performance matrix R",
                subtitle=[
                    "Row i: the model after training the named task (base: before any fine-tuning).",
                    "Column j: the task it is evaluated on. Below the diagonal: earlier tasks, remembered or forgotten.",
                    "Bright = good for every metric (the loss scale is reversed: lower loss is brighter).",
                ],
                anchor="start",
            ),
            description="Heatmap of R: rows are training stages, columns are evaluated tasks; select the metric below.",
        )
    )


# ----------------------------------------------------------------------------------------------
# Forgetting curves
# ----------------------------------------------------------------------------------------------


def _thin_steps(steps: np.ndarray, keep: set, limit: int) -> np.ndarray:
    """At most ``limit`` of the sorted unique ``steps``, evenly spaced, always keeping ``keep``."""
    steps = np.unique(steps)
    if len(steps) <= limit:
        return steps
    picks = set(steps[np.linspace(0, len(steps) - 1, max(2, limit - len(keep))).round().astype(int)])
    return np.array(sorted(picks | (keep & set(steps))))


def stage_boundaries(evals: pd.DataFrame) -> pd.DataFrame:
    """One row per training stage i >= 1: ``stage``, ``stage_task``, ``start`` and ``end`` steps, ``mid``."""
    _check_columns(evals, EVAL_COLUMNS, "evals")
    ends = evals[evals["end_of_stage"].astype(bool) & (evals["stage"] >= 1)]
    ends = ends.groupby(["stage", "stage_task"], as_index=False)["step"].max().sort_values("stage")
    ends = ends.rename(columns={"step": "end"})
    ends["start"] = ends["end"].shift(1).fillna(0).astype(int)
    ends["mid"] = (ends["start"] + ends["end"]) / 2
    return ends.reset_index(drop=True)


def forgetting_curves(
    evals: pd.DataFrame,
    *,
    metric: str = "exact_match",
    title: str | None = None,
    width: int = 640,
    height: int = 300,
    max_rows: int = MAX_ROWS,
) -> alt.LayerChart:
    """Every task's metric against the global step, with the task boundaries marked.

    x = global optimizer step, y = value of the selected metric, one line per evaluated task. Vertical
    rules mark the end of each training stage, and the label over each interval names the task
    trained in it: a curve that falls after its own stage is a task being forgotten. With a ``seed``
    column the line is the mean over seeds and the band is mean +- 1.96 standard errors.

    Data: one row per (step, task, metric); steps are thinned evenly (end-of-stage steps always
    kept) to stay under ``max_rows``.
    """
    _check_columns(evals, EVAL_COLUMNS, "evals")
    if evals.empty:
        raise ValueError("evals: the table is empty: nothing to plot")
    curves = _mean_over_runs(evals, ["step", "stage", "stage_task", "task_index", "task", "metric"])
    curves = curves.sort_values(["metric", "task_index", "step"])
    # the same step can be both the end of one stage and the start of the next: keep the later stage
    curves = curves.drop_duplicates(["step", "task", "metric"], keep="last")
    metrics = _metric_options(curves["metric"].unique())
    default = _default(metrics, metric, "metric")
    bounds = stage_boundaries(evals)
    per_step = max(1, len(curves) // max(1, curves["step"].nunique()))
    keep_steps = _thin_steps(curves["step"].to_numpy(), set(bounds["end"].tolist()) | {0}, max(2, max_rows // per_step - 1))
    curves = curves[curves["step"].isin(keep_steps)].reset_index(drop=True)
    curves["lo"] = curves["value"] - 1.96 * curves["sem"]
    curves["hi"] = curves["value"] + 1.96 * curves["sem"]
    task_order = (
        curves.drop_duplicates("task").sort_values(["task_index"], key=lambda s: s.where(s >= 0, 10**6))["task"].tolist()
    )
    domains = _value_domains(curves, metrics)

    param = _select("metric", metrics, default, "metric ")
    x = alt.X("step:Q", title="global optimizer step", scale=alt.Scale(domain=[0, int(curves["step"].max()) or 1], nice=False))
    y_scale = alt.Scale(domain=_per_metric_expr("metric", domains, [0, 1]), nice=False)
    color = alt.Color("task:N", sort=task_order, title="evaluated task",
                      legend=alt.Legend(orient="right", symbolType="circle", symbolOpacity=1))
    base = alt.Chart(curves).transform_filter("datum.metric == metric")
    layers: list[alt.Chart] = []
    if (curves["n"] > 1).any():
        layers.append(base.mark_area(opacity=0.15).encode(x=x, y=alt.Y("lo:Q", scale=y_scale), y2="hi:Q", color=color))
    points = alt.OverlayMarkDef(size=28) if curves["step"].nunique() <= 80 else False  # dots only while they separate
    lines = base.mark_line(point=points).encode(
        x=x,
        y=alt.Y("value:Q", title="value of the selected metric", scale=y_scale),
        color=color,
        tooltip=[
            alt.Tooltip("task:N", title="evaluated task"),
            alt.Tooltip("step:Q", title="global step"),
            alt.Tooltip("stage_task:N", title="training"),
            alt.Tooltip("metric:N"),
            alt.Tooltip("value:Q", format=".3f"),
        ],
    )
    layers.append(lines)
    if len(bounds):
        layers.append(
            alt.Chart(bounds).mark_rule(strokeDash=[4, 3], color="#666").encode(
                x=alt.X("end:Q"),
                tooltip=[alt.Tooltip("stage_task:N", title="end of training"), alt.Tooltip("end:Q", title="step")],
            )
        )
        layers.append(
            alt.Chart(bounds).mark_text(baseline="top", dy=-14, fontSize=11, color="#333").encode(
                x=alt.X("mid:Q"), y=alt.value(0), text=alt.Text("stage_task:N")
            )
        )
    return (
        alt.layer(*layers)
        .add_params(param)
        .properties(
            width=width,
            height=height,
            title=alt.TitleParams(
                title or "Forgetting curves",
                subtitle=[
                    "Each line is one task's score while the sequence trains; dashed rules end each stage,",
                    "labelled with the task trained in it. A line that drops after its own stage is being forgotten.",
                ],
                anchor="start",
                offset=22,
            ),
            description="Line chart of every task's metric against the global step, with stage boundaries; select the metric below.",
        )
    )


# ----------------------------------------------------------------------------------------------
# Layer x head
# ----------------------------------------------------------------------------------------------


def layer_head_heatmap(
    df: pd.DataFrame,
    value_columns: Sequence[str],
    *,
    layer: str = "layer",
    head: str = "head",
    step: str | None = "step",
    signed: Sequence[str] = (),
    labels: bool | None = None,
    title: str = "Per-head measurements",
    subtitle: str | Sequence[str] = "",
    cell_size: int = 26,
    max_rows: int = MAX_ROWS,
    initial_step: int | None = None,
) -> alt.LayerChart:
    """A layer x head grid with a select over ``value_columns`` and, when ``step`` is a column, a slider over steps.

    The slider is named after the column (``step="stage"``) and opens at ``initial_step`` (default: the first).

    ``df`` has one row per (layer, head[, step]) (extra rows, e.g. seeds, are averaged) and one
    column per measurement (``value_columns``, e.g. ``["disruption", "alignment"]``). Layer 0 is at
    the bottom, heads left to right. Each measurement keeps one colour domain across steps so the
    slider compares like with like; measurements named in ``signed`` (cosines, differences) get a
    diverging red-blue scale centred on 0 (red = negative, e.g. conflicting gradients), its bound
    rounded up to a round number. With irregular steps the slider runs over snapshot numbers and the
    chart's subtitle line shows the step.

    Data: layers x heads x steps x measurements rows; steps are thinned evenly to stay under ``max_rows``.
    """
    value_columns = list(value_columns)
    if not value_columns:
        raise ValueError("value_columns: give at least one column to plot")
    has_step = step is not None and step in df.columns
    keys = [layer, head] + ([step] if has_step else [])
    _check_columns(df, keys + value_columns, "df")
    unknown = [c for c in signed if c not in value_columns]
    if unknown:
        raise ValueError(f"signed: {', '.join(unknown)} not in value_columns ({', '.join(value_columns)})")
    long = df[keys + value_columns].melt(id_vars=keys, value_vars=value_columns, var_name="metric", value_name="value")
    long = long.rename(columns={layer: "layer", head: "head", **({step: "step"} if has_step else {})})
    long = _mean_over_runs(long, ["layer", "head", "metric"] + (["step"] if has_step else []))
    cells = long["layer"].nunique() * long["head"].nunique() * len(value_columns)
    params: list[alt.Parameter] = [_select("metric", value_columns, value_columns[0], "measurement ")]
    filters = ["datum.metric == metric"]
    step_caption = None
    if has_step:
        steps = _thin_steps(long["step"].to_numpy(), set(), max(1, max_rows // max(1, cells)))
        if len(steps) < long["step"].nunique():
            warnings.warn(f"layer_head_heatmap: showing {len(steps)} of {long['step'].nunique()} steps to stay under {max_rows} rows", stacklevel=2)
        long = long[long["step"].isin(steps)].reset_index(drop=True)
        diffs = np.diff(steps)
        start = int(steps[0]) if initial_step is None else int(initial_step)
        if start not in {int(s) for s in steps}:
            raise ValueError(f"initial_step: {initial_step} is not one of the {step} values shown "
                             f"({', '.join(str(int(s)) for s in steps)})")
        if len(steps) > 1 and np.all(diffs == diffs[0]):
            params.append(alt.param(name="at_step", value=start, bind=alt.binding_range(
                min=int(steps[0]), max=int(steps[-1]), step=int(diffs[0]), name=f"{step} ")))
            filters.append("datum.step == at_step")
        else:
            index = {s: i for i, s in enumerate(steps)}
            long["snapshot"] = long["step"].map(index)
            params.append(alt.param(name="at_step", value=index[start], bind=alt.binding_range(
                min=0, max=max(1, len(steps) - 1), step=1, name="snapshot ")))
            filters.append("datum.snapshot == at_step")
            step_caption = "'step ' + " + _js([int(s) for s in steps]) + "[at_step]"
    elif len(long) > max_rows:
        raise ValueError(f"df: {len(long)} rows after melting exceeds {max_rows}; aggregate first")
    domains = _value_domains(long, value_columns, signed)
    long["shade"] = _goodness(long, domains, signed, flip_lower=False)
    layers_order = sorted(long["layer"].unique(), reverse=True)
    heads_order = sorted(long["head"].unique())
    if labels is None:
        labels = len(layers_order) * len(heads_order) <= 16 * 16
    scheme = _per_metric_expr("metric", {m: ("redblue" if m in signed else "viridis") for m in value_columns}, "viridis")
    base = alt.Chart(long).transform_filter(" && ".join(filters)).encode(
        x=alt.X("head:O", sort=heads_order, title="head"),
        y=alt.Y("layer:O", sort=layers_order, title="layer (0 = first)"),
        tooltip=[
            alt.Tooltip("layer:O"), alt.Tooltip("head:O"), alt.Tooltip("metric:N", title="measurement"),
            alt.Tooltip("value:Q", format=".3f"), *([alt.Tooltip("step:Q")] if has_step else []),
        ],
    )
    rect = base.mark_rect(stroke="white", strokeWidth=0.5).encode(
        color=alt.Color("value:Q", title="selected measurement", scale=alt.Scale(
            scheme=scheme, domain=_per_metric_expr("metric", domains, [0, 1]), clamp=True)),  # redblue: red = negative
    )
    parts: list[alt.Chart] = [rect]
    if labels:
        # light label on dark cells: the far ends of the diverging scale and the low end of viridis
        dark = f"indexof({_js(list(signed))}, metric) >= 0 ? datum.shade > 0.6 : datum.shade < 0.55"
        parts.append(base.mark_text(fontSize=max(MIN_FONT, min(11, cell_size // 3))).encode(
            text=alt.Text("value:Q", format=".2f"),
            color=alt.condition(dark, alt.value("white"), alt.value("black")),
        ))
    if step_caption:  # irregular steps: say which step the snapshot slider is at
        parts.append(alt.Chart(pd.DataFrame({"_": [0]})).transform_calculate(caption=step_caption).mark_text(
            align="left", baseline="bottom", dy=-4, fontSize=11).encode(x=alt.value(0), y=alt.value(0), text="caption:N"))
    subtitle_lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    subtitle_lines = [s for s in subtitle_lines if s]
    chart = alt.layer(*parts).add_params(*params).properties(
        width=cell_size * len(heads_order),
        height=cell_size * len(layers_order),
        title=alt.TitleParams(title, subtitle=subtitle_lines or alt.Undefined, anchor="start",
                              offset=16 if step_caption else 4),
        description=f"{title}: layer x head heatmap; select the measurement"
        + (" and move the step slider" if has_step else "") + ".",
    )
    return chart


__all__ = [
    "METRIC_ORDER",
    "forgetting_curves",
    "layer_head_heatmap",
    "lower_is_better",
    "r_matrix_heatmap",
    "r_matrix_table",
    "stage_boundaries",
]
