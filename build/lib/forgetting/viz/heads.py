"""Charts of chapter 05 (attention-head disruption): the layer x head disruption map, severe fractions
per layer against the paper's range, what a fixed threshold would call severe, and attention patterns
before and after (an Altair chart for the static book; the ipywidgets explorer that recomputes them in a
live kernel is :mod:`forgetting.viz.explorer`).

Inputs are the ``heads`` and ``head_severity`` tables of :func:`forgetting.analysis.report.analysis_for`
(observed rows have ``null == ""``) and :class:`forgetting.mechanisms.heads.HeadRecord` objects.
Every chart embeds its data and works offline (:mod:`forgetting.viz.offline`).
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from forgetting import paths
from forgetting.stats import bootstrap_mean_ci
from forgetting.viz.charts import MIN_FONT, PAIR_KEYS, _check_columns, _js, _per_metric_expr, _value_domains

#: Measures in the heatmap's select (column of :func:`head_table` -> label).
#: ``weight_change`` depends on the snapshots only, not on the old task's data: it is not last, so that
#: the pair select, operated after the measure select has run through its options, always redraws.
HEAD_MEASURES = {
    "combined_z": "combined disruption (z vs null)",
    "js_divergence": "attention JS divergence (bits)",
    "weight_change": "relative weight change (same for every old task)",
    "entropy_change": "attention entropy change (bits)",
    "output_similarity": "output cosine similarity",
    "output_cka": "output CKA",
}
SIGNED = ("entropy_change", "combined_z")
#: The paper's range of severely disrupted heads (abstract of arXiv 2601.18699).
PAPER_RANGE = (0.15, 0.23)


def pair_label(stage: int, new_task: str, old_task: str) -> str:
    """"stage 2: recall_city after recall_job"."""
    return f"stage {int(stage)}: {old_task} after {new_task}"


def head_table(heads: pd.DataFrame, severity: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (stage, new task, old task, layer, head) with the observed disruption measures.

    ``heads``: the ``heads`` table (long: ``metric``, ``value``, ``null``); only observed rows
    (``null == ""``) are kept, and a ``seed`` column, if any, is averaged over. ``severity``: the
    ``head_severity`` table; adds ``combined_z`` (the combined z-score against the nulls), ``severe``
    (bool, the combined rule) and ``p_value``. Adds ``pair`` (:func:`pair_label`).
    """
    _check_columns(heads, [*PAIR_KEYS, "layer", "head", "metric", "value"], "heads")
    observed = heads[heads["null"] == ""] if "null" in heads else heads
    keys = [*PAIR_KEYS, "layer", "head"]
    wide = observed.pivot_table(index=keys, columns="metric", values="value", aggfunc="mean").reset_index()
    wide.columns.name = None
    if severity is not None and len(severity):
        _check_columns(severity, [*keys, "metric", "z", "severe"], "severity")
        comb = severity[severity["metric"] == "combined"]
        comb = comb.groupby(keys, as_index=False).agg(combined_z=("z", "mean"), severe=("severe", "mean"),
                                                      p_value=("p_value", "mean"))
        wide = wide.merge(comb, on=keys, how="left")
        wide["severe"] = wide["severe"] >= 0.5
    wide["pair"] = [pair_label(*k) for k in zip(wide["stage"], wide["new_task"], wide["old_task"])]
    return wide.sort_values(keys).reset_index(drop=True)


def head_disruption_heatmap(table: pd.DataFrame, *, measures: Sequence[str] | None = None,
                            pair: str | None = None, title: str = "Head disruption",
                            subtitle: str | Sequence[str] = "", cell_size: int = 44) -> alt.LayerChart:
    """Layer x head heatmap with a select for the measure and a select for the (stage, old task) pair.

    ``table``: :func:`head_table`. Heads judged severe by the null-calibrated combined rule (column
    ``severe``) are outlined in black. Colour: viridis per measure (one domain across pairs, so pairs
    compare), diverging red-blue around 0 for signed measures (entropy change, combined z).
    Data: pairs x layers x heads x measures rows.
    """
    measures = [m for m in (measures or HEAD_MEASURES) if m in table.columns]
    if not measures:
        raise ValueError(f"table: none of the measures {list(HEAD_MEASURES)} is a column")
    keys = ["pair", "stage", "layer", "head"] + (["severe"] if "severe" in table else [])
    long = table[keys + measures].melt(id_vars=keys, value_vars=measures, var_name="metric", value_name="value")
    if "severe" not in long:
        long["severe"] = False
    long["severe"] = long["severe"].fillna(False).astype(bool)
    pairs = table.drop_duplicates("pair").sort_values(["stage", "pair"])["pair"].tolist()
    signed = [m for m in SIGNED if m in measures]
    domains = _value_domains(long, measures, signed)
    p_measure = alt.param(name="head_measure", value=measures[0], bind=alt.binding_select(
        options=measures, labels=[HEAD_MEASURES.get(m, m) for m in measures], name="measure "))
    p_pair = alt.param(name="head_pair", value=pair or pairs[0], bind=alt.binding_select(options=pairs, name="stage, old task "))
    scheme = _per_metric_expr("head_measure", {m: ("redblue" if m in signed else "viridis") for m in measures}, "viridis")
    layers = sorted(long["layer"].unique(), reverse=True)
    heads = sorted(long["head"].unique())
    base = alt.Chart(long).transform_filter("datum.metric == head_measure && datum.pair == head_pair").encode(
        x=alt.X("head:O", sort=heads, title="head"),
        y=alt.Y("layer:O", sort=layers, title="layer (0 = first)"),
        tooltip=[alt.Tooltip("pair:N", title="stage, old task"), alt.Tooltip("layer:O"), alt.Tooltip("head:O"),
                 alt.Tooltip("metric:N", title="measure"), alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("severe:N", title="severe (vs null)")],
    )
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", title="selected measure", scale=alt.Scale(
            scheme=scheme, domain=_per_metric_expr("head_measure", domains, [0, 1]), clamp=True, reverse={
                "expr": f"indexof({_js(signed)}, head_measure) >= 0"})),
        stroke=alt.condition("datum.severe", alt.value("black"), alt.value("white")),
        strokeWidth=alt.condition("datum.severe", alt.value(2.5), alt.value(0.5)),
    )
    text = base.mark_text(fontSize=MIN_FONT).encode(
        text=alt.Text("value:Q", format=".2f"),
        color=alt.value("#222"),
        opacity=alt.value(0.8),
    )
    subtitle_lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    return alt.layer(rect, text).add_params(p_measure, p_pair).properties(
        width=cell_size * len(heads), height=cell_size * len(layers),
        title=alt.TitleParams(title, subtitle=[s for s in subtitle_lines if s] or alt.Undefined, anchor="start"),
        description="Layer x head heatmap of head disruption; select the measure and the stage/old task below.",
    )


# ----------------------------------------------------------------------------------------------
# severe fractions
# ----------------------------------------------------------------------------------------------


def report_heatmap(heads: pd.DataFrame, head_severity: pd.DataFrame | None = None, **kwargs) -> alt.LayerChart:
    """:func:`head_disruption_heatmap` of the report's ``heads`` and ``head_severity`` tables
    (the chart the ``heads`` measure names in :mod:`forgetting.measures`)."""
    return head_disruption_heatmap(head_table(heads, head_severity), **kwargs)


def bootstrap_over_heads(severe: pd.DataFrame, *, by: Sequence[str] = (), n_boot: int = 2000, ci: float = 0.95,
                         seed: int = 0) -> pd.DataFrame:
    """Severe fraction with a percentile bootstrap interval over *heads* (for a single seed).

    ``severe``: rows of :func:`forgetting.mechanisms.heads.severe_heads` for the ``combined`` metric
    (column ``severe``, one row per head and pair). Returns one row overall (``layer = "all"``) and one
    per layer, within groups ``by``: ``layer``, ``fraction``, ``ci_low``, ``ci_high``, ``n_heads``.
    The interval says how much the fraction depends on which heads happened to be measured; it says
    nothing about seed-to-seed variation (use :func:`forgetting.mechanisms.heads.severe_fraction_ci`
    over seeds for that).
    """

    _check_columns(severe, ["layer", "severe"], "severe")
    rows = []
    for key, group in (severe.groupby(list(by)) if by else [((), severe)]):
        key = key if isinstance(key, tuple) else (key,)
        for layer, sub in [("all", group), *((str(lay), g) for lay, g in group.groupby("layer"))]:
            mean, low, high = bootstrap_mean_ci(sub["severe"].astype(float).to_numpy(), n_boot=n_boot, ci=ci, seed=seed)
            rows.append({**dict(zip(by, key)), "layer": layer, "fraction": mean, "ci_low": low, "ci_high": high,
                         "n_heads": len(sub)})
    return pd.DataFrame(rows)


def severe_fraction_chart(fractions: pd.DataFrame, *, group: str = "scope", paper: tuple[float, float] = PAPER_RANGE,
                          title: str = "Severely disrupted heads", subtitle: str | Sequence[str] = "",
                          width: int = 360, height: int = 240) -> alt.LayerChart:
    """Severe fraction overall and per layer (bars, with interval whiskers), beside the paper's range (band).

    ``fractions``: columns ``layer`` ("all", "0", "1", ...), ``fraction``, ``ci_low``, ``ci_high`` and
    ``group`` (e.g. which pairs were pooled); bars of the groups stand side by side.
    """
    _check_columns(fractions, ["layer", "fraction", "ci_low", "ci_high", group], "fractions")
    order = ["all"] + sorted((x for x in fractions["layer"].astype(str).unique() if x != "all"), key=int)
    df = fractions.assign(layer=fractions["layer"].astype(str))
    band = pd.DataFrame({"lo": [paper[0]], "hi": [paper[1]], "label": [f"paper: {paper[0]:.0%} to {paper[1]:.0%}"]})
    x = alt.X("layer:N", sort=order, title="layer (all = every head)")
    groups = list(dict.fromkeys(df[group]))
    x_off = alt.XOffset(f"{group}:N", sort=groups)
    bars = alt.Chart(df).mark_bar(opacity=0.85).encode(
        x=x, xOffset=x_off, y=alt.Y("fraction:Q", title="fraction of heads severe", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color(f"{group}:N", title=None, sort=groups, legend=alt.Legend(orient="bottom", labelLimit=400)),
        tooltip=[alt.Tooltip(f"{group}:N"), alt.Tooltip("layer:N"), alt.Tooltip("fraction:Q", format=".1%"),
                 alt.Tooltip("ci_low:Q", format=".1%"), alt.Tooltip("ci_high:Q", format=".1%")],
    )
    whiskers = alt.Chart(df).mark_rule(color="black").encode(x=x, xOffset=x_off, y="ci_low:Q", y2="ci_high:Q")
    rect = alt.Chart(band).mark_rect(color="#ff7f0e", opacity=0.2).encode(y="lo:Q", y2="hi:Q")
    label = alt.Chart(band).mark_text(align="right", baseline="bottom", dy=-2, color="#b35900").encode(
        x=alt.value(width), y="hi:Q", text="label:N")
    subtitle_lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    return alt.layer(rect, bars, whiskers, label).properties(
        width=width, height=height,
        title=alt.TitleParams(title, subtitle=[s for s in subtitle_lines if s] or alt.Undefined, anchor="start"))


def threshold_curves(heads: pd.DataFrame, metric: str = "js_divergence", *, n: int = 41) -> pd.DataFrame:
    """Fraction of heads whose ``metric`` disruption score exceeds a fixed threshold, over a grid of thresholds.

    ``heads``: the ``heads`` table (observed and null rows). Scores are oriented as in
    :func:`forgetting.mechanisms.heads.disruption_scores` (e.g. ``1 - output_similarity``). Returns
    ``pair``, ``source`` ("observed", "null: continue", "null: reseed"), ``threshold``, ``fraction``.
    """
    from forgetting.mechanisms.heads import disruption_scores  # deferred: forgetting.viz imports without torch

    _check_columns(heads, [*PAIR_KEYS, "layer", "head", "metric", "value", "null"], "heads")
    scores = disruption_scores(heads, [metric])
    grid = np.linspace(0.0, float(scores["score"].max()) * 1.02, n)
    rows = []
    for (stage, new, old, null), g in scores.groupby([*PAIR_KEYS, "null"]):
        s = g["score"].to_numpy()
        src = "observed" if null == "" else f"null: {null}"
        for t in grid:
            rows.append({"pair": pair_label(stage, new, old), "stage": stage, "source": src, "threshold": float(t),
                         "fraction": float((s > t).mean())})
    return pd.DataFrame(rows)


def threshold_chart(curves: pd.DataFrame, *, paper: tuple[float, float] = PAPER_RANGE, title: str = "What a fixed threshold calls severe",
                    subtitle: str | Sequence[str] = "", metric_label: str = "attention JS divergence (bits)",
                    width: int = 420, height: int = 260) -> alt.LayerChart:
    """Fraction of heads above a fixed threshold (y) against the threshold (x), for the observed disruption
    and the nulls, with the paper's range as a band and a select for the (stage, old task) pair.

    ``curves``: :func:`threshold_curves`. Where the observed curve runs on top of the null curves, a
    fixed threshold calls heads "severe" that noise moves just as much.
    """
    _check_columns(curves, ["pair", "stage", "source", "threshold", "fraction"], "curves")
    pairs = curves.drop_duplicates("pair").sort_values(["stage", "pair"])["pair"].tolist()
    p_pair = alt.param(name="threshold_pair", value=pairs[0], bind=alt.binding_select(options=pairs, name="stage, old task "))
    band = pd.DataFrame({"lo": [paper[0]], "hi": [paper[1]], "label": [f"paper: {paper[0]:.0%} to {paper[1]:.0%}"]})
    lines = alt.Chart(curves).transform_filter("datum.pair == threshold_pair").mark_line().encode(
        x=alt.X("threshold:Q", title=f"fixed threshold on {metric_label}"),
        y=alt.Y("fraction:Q", title="fraction of heads above it", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("source:N", title=None, sort=["observed"], scale=alt.Scale(range=["#d62728", "#7f7f7f", "#1f77b4"])),
        strokeDash=alt.StrokeDash("source:N", sort=["observed"], legend=None),
        tooltip=[alt.Tooltip("source:N"), alt.Tooltip("threshold:Q", format=".3f"), alt.Tooltip("fraction:Q", format=".1%")],
    )
    rect = alt.Chart(band).mark_rect(color="#ff7f0e", opacity=0.2).encode(y="lo:Q", y2="hi:Q")
    label = alt.Chart(band).mark_text(align="right", baseline="bottom", dy=-2, color="#b35900").encode(
        x=alt.value(width), y="hi:Q", text="label:N")
    subtitle_lines = [subtitle] if isinstance(subtitle, str) else list(subtitle)
    return alt.layer(rect, lines, label).add_params(p_pair).properties(
        width=width, height=height,
        title=alt.TitleParams(title, subtitle=[s for s in subtitle_lines if s] or alt.Undefined, anchor="start"),
        description="Fraction of heads above a fixed threshold, observed vs nulls; select the stage and old task below.",
    )


# ----------------------------------------------------------------------------------------------
# attention patterns before and after
# ----------------------------------------------------------------------------------------------


def attention_pattern_table(before, after, example: int, tokens: Sequence[str], *, layer: int | None = None,
                            head: int | None = None) -> pd.DataFrame:
    """Attention weights of one example, before and after, in long form.

    ``before``, ``after``: :class:`~forgetting.mechanisms.heads.HeadRecord` on the same examples; ``tokens``:
    the example's tokens (as text, in order). Rows: one per (layer, head, snapshot, query, key) with
    key <= query and both real tokens; ``layer``/``head`` restrict to one head. Columns ``layer``,
    ``head``, ``snapshot``, ``query``, ``key`` (positions), ``query_token``, ``key_token`` (``"3 koma"``),
    ``weight``.
    """
    rows = (before.example == example).nonzero().flatten()
    if rows.numel() == 0:
        raise ValueError(f"example: {example} has no recorded rows (recorded examples 0..{before.n_examples - 1})")
    positions = before.position[rows].tolist()
    L, H = before.attention.shape[:2]
    layers = range(L) if layer is None else [layer]
    heads = range(H) if head is None else [head]
    label = [f"{i} {t}" for i, t in enumerate(tokens)]
    out = []
    for name, rec in (("before", before), ("after", after)):
        att = rec.attention[:, :, rows].numpy()  # (L, H, R, T)
        for lay in layers:
            for h in heads:
                for r, q in enumerate(positions):
                    for k in range(q + 1):
                        if not bool(before.key_mask[rows[r], k]):
                            continue
                        out.append((lay, h, name, q, k, label[q], label[k], float(att[lay, h, r, k])))
    return pd.DataFrame(out, columns=["layer", "head", "snapshot", "query", "key", "query_token", "key_token", "weight"])


def attention_pattern_chart(before, after, example: int, tokens: Sequence[str], *, layer: int | None = None,
                            head: int | None = None, title: str = "Attention pattern before and after",
                            cell_size: int = 18) -> alt.HConcatChart:
    """Two heatmaps (query token x key token) of one head's attention on one example, before and after.

    Without ``layer``/``head``, selects for both are bound below the chart (all heads' data is embedded:
    layers x heads x about T^2/2 x 2 rows); with them, only that head is drawn.
    """
    table = attention_pattern_table(before, after, example, tokens, layer=layer, head=head)
    order = [f"{i} {t}" for i, t in enumerate(tokens)]
    order = [t for t in order if t in set(table["query_token"]) | set(table["key_token"])]
    params, filters = [], []
    if layer is None:
        layers = sorted(table["layer"].unique())
        params.append(alt.param(name="pattern_layer", value=int(layers[0]), bind=alt.binding_select(
            options=[int(x) for x in layers], name="layer ")))
        filters.append("datum.layer == pattern_layer")
    if head is None:
        heads = sorted(table["head"].unique())
        params.append(alt.param(name="pattern_head", value=int(heads[0]), bind=alt.binding_select(
            options=[int(x) for x in heads], name="head ")))
        filters.append("datum.head == pattern_head")

    def panel(snapshot: str) -> alt.Chart:
        chart = alt.Chart(table).transform_filter(f"datum.snapshot == {_js(snapshot)}")
        if filters:
            chart = chart.transform_filter(" && ".join(filters))
        return chart.mark_rect().encode(
            x=alt.X("key_token:N", sort=order, title="key (attended) token", axis=alt.Axis(labelAngle=-45)),
            y=alt.Y("query_token:N", sort=order, title="query token" if snapshot == "before" else None),
            color=alt.Color("weight:Q", title="attention", scale=alt.Scale(scheme="blues", domain=[0, 1])),
            tooltip=[alt.Tooltip("query_token:N", title="query"), alt.Tooltip("key_token:N", title="key"),
                     alt.Tooltip("weight:Q", format=".3f")],
        ).properties(width=cell_size * len(order), height=cell_size * len(order), title=snapshot)

    which = "" if layer is None else f" (layer {layer}, head {head})"
    chart = alt.hconcat(panel("before"), panel("after")).properties(title=alt.TitleParams(title + which, anchor="start"))
    return chart.add_params(*params) if params else chart


def live_kernel() -> bool:
    """True in an interactive kernel (Jupyter, Colab); False while the book or CI executes a chapter
    (``FORGETTING_QUIET`` set), where widgets would only be frozen state in the static page."""

    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None and not paths.quiet()


__all__ = [
    "HEAD_MEASURES",
    "PAPER_RANGE",
    "attention_pattern_chart",
    "attention_pattern_table",
    "bootstrap_over_heads",
    "head_disruption_heatmap",
    "head_table",
    "live_kernel",
    "pair_label",
    "severe_fraction_chart",
    "threshold_chart",
    "threshold_curves",
]
