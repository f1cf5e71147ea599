"""Charts for task similarity (chapter 06): similarity against forgetting over the ordered task pairs of a
sweep, and the task x task similarity matrix.

Input tables come from :mod:`forgetting.sweep`: a *pair table* (:func:`forgetting.sweep.statistics.pair_table`:
one row per ordered pair ``task_a -> task_b`` with the forgetting columns of the sweep and one column per
similarity measure) and the long similarity table of :func:`forgetting.mechanisms.similarity.similarity_matrix`
(``task_a, task_b, measure, layer, value``).

Every chart embeds its data (a few hundred rows) and uses Vega-Lite params bound to selects, so it works
in the static book with no kernel and no network.
"""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from forgetting.sweep.statistics import FORGETTING_MEASURES, PAIR_SIMILARITIES
from forgetting.viz.charts import _check_columns

#: Labels of the similarity measures in the selects.
SIMILARITY_LABELS = {
    "gradient_cosine": "gradient cosine at the base model (all weights)",
    "gradient_cosine_attention": "gradient cosine at the base model (attention)",
    "gradient_cosine_mlp": "gradient cosine at the base model (MLP)",
    "representation": "representation: centroid cosine",
    "representation_subspace": "representation: subspace (covariance) cosine",
    "token_overlap": "token overlap (Bhattacharyya)",
    "token_jaccard": "token overlap (Jaccard)",
    "answer_overlap": "answer overlap (Jaccard)",
    "fisher": "Fisher embedding cosine",
    "fisher_distance": "Fisher distance (Task2Vec)",
    "alignment_at_a": "gradient alignment after A: cos(g_A, g_B)",
    "update_alignment": "update alignment after A: cos(theta_A - theta_0, -g_B)",
}
#: Labels of the forgetting measures in the selects.
FORGETTING_LABELS = {
    "forgetting_answer": "answer-match drop of A",
    "forgetting_exact": "exact-match drop of A",
    "forgetting_loss": "loss increase of A (nats/token)",
}
#: The task menu's entry for "highlight nothing".
NO_TASK = "(none)"
#: Colour legend: the role of the highlighted task in a pair.
ROLES = ("A: trained first, then forgotten", "B: trained second", "other pairs")


def pair_label(task_a: str, task_b: str) -> str:
    """``"recall_city→sort"``: A was trained first, then B."""
    return f"{task_a}→{task_b}"


def scatter_table(table: pd.DataFrame, similarity: Sequence[str] | None = None,
                  forgetting: Sequence[str] = FORGETTING_MEASURES) -> pd.DataFrame:
    """The pair table in long form: one row per (pair, similarity measure, forgetting measure).

    Columns: ``task_a, task_b, pair, similarity, s, forgetting, f``. Similarity columns absent from the table
    are skipped; rows with a missing value are dropped; several seeds are averaged.
    """
    _check_columns(table, ("task_a", "task_b", *forgetting), "table", hint="pass forgetting.sweep.pair_table(...)")
    similarity = [c for c in (similarity or PAIR_SIMILARITIES) if c in table.columns]
    if not similarity:
        raise ValueError(f"table: no similarity column; expected some of {', '.join(PAIR_SIMILARITIES)}")
    mean = table.groupby(["task_a", "task_b"], sort=False)[[*similarity, *forgetting]].mean().reset_index()
    parts = []
    for sim in similarity:
        for forg in forgetting:
            part = mean[["task_a", "task_b", sim, forg]].rename(columns={sim: "s", forg: "f"})
            parts.append(part.assign(similarity=sim, forgetting=forg))
    out = pd.concat(parts, ignore_index=True).dropna(subset=["s", "f"])
    out["pair"] = [pair_label(a, b) for a, b in zip(out.task_a, out.task_b)]
    return out[["task_a", "task_b", "pair", "similarity", "s", "forgetting", "f"]].reset_index(drop=True)


def _select(name: str, options: list[str], value: str, label: str, labels: dict[str, str]) -> alt.Parameter:
    return alt.param(name=name, value=value, bind=alt.binding_select(
        options=options, labels=[labels.get(o, o) for o in options], name=label))


def similarity_scatter(
    table: pd.DataFrame,
    *,
    similarity: Sequence[str] | None = None,
    forgetting: Sequence[str] = FORGETTING_MEASURES,
    default_similarity: str = "token_overlap",
    default_forgetting: str = "forgetting_answer",
    title: str = "Task similarity against forgetting",
    subtitle: str | Sequence[str] = "",
    width: int = 460,
    height: int = 320,
) -> alt.LayerChart:
    """Scatter of similarity (x) against the forgetting of A (y) over the ordered pairs A→B, with three selects.

    - ``similarity``: which similarity measure is on x;
    - ``forgetting``: which forgetting measure is on y (:data:`FORGETTING_LABELS`);
    - ``task``: highlight every pair that involves one task, coloured by its role (A: trained first and
      forgotten, or B: trained second).

    A point's pair ``A→B`` is in its tooltip, and written beside it while its task is highlighted; the solid line is the least-squares quadratic over the shown points (the
    intermediate-similarity peak would show as a hump), the dashed line the straight-line fit.
    Data: pairs x similarity measures x forgetting measures rows (:func:`scatter_table`).
    """
    data = scatter_table(table, similarity, forgetting)
    sims = list(dict.fromkeys(data["similarity"]))
    forgs = [f for f in forgetting if f in set(data["forgetting"])]
    if default_similarity not in sims:
        default_similarity = sims[0]
    if default_forgetting not in forgs:
        default_forgetting = forgs[0]
    tasks = sorted(set(data.task_a) | set(data.task_b))
    params = [
        _select("similarity", sims, default_similarity, "similarity (x) ", SIMILARITY_LABELS),
        _select("forgetting", forgs, default_forgetting, "forgetting (y) ", FORGETTING_LABELS),
        _select("task", [NO_TASK, *tasks], NO_TASK, "highlight pairs of task ", {}),
    ]
    role = (f"task == {NO_TASK!r} ? {ROLES[2]!r} : datum.task_a == task ? {ROLES[0]!r} : "
            f"datum.task_b == task ? {ROLES[1]!r} : {ROLES[2]!r}")
    base = (alt.Chart(data)
            .transform_filter("datum.similarity == similarity && datum.forgetting == forgetting")
            .transform_calculate(role=role))
    x = alt.X("s:Q", title="similarity of A and B (measure chosen below)", scale=alt.Scale(zero=False))
    y = alt.Y("f:Q", title="forgetting of A (measure chosen below)", scale=alt.Scale(zero=False))
    highlighted = f"task == {NO_TASK!r} || datum.task_a == task || datum.task_b == task"
    points = base.mark_point(size=90, filled=True).encode(
        x=x, y=y,
        color=alt.Color("role:N", scale=alt.Scale(domain=list(ROLES), range=["#d62728", "#1f77b4", "#7f7f7f"]),
                        legend=alt.Legend(title="role of the highlighted task", orient="bottom", columns=1)),
        opacity=alt.condition(highlighted, alt.value(0.95), alt.value(0.2)),
        tooltip=[alt.Tooltip("pair:N", title="A→B"), alt.Tooltip("s:Q", title="similarity", format=".3f"),
                 alt.Tooltip("f:Q", title="forgetting of A", format=".3f"),
                 alt.Tooltip("similarity:N", title="similarity measure"),
                 alt.Tooltip("forgetting:N", title="forgetting measure")],
    )
    # Labels only for the highlighted task's pairs: all 2 x C(n, 2) labels at once pile up into one blot.
    labelled = f"task != {NO_TASK!r} && (datum.task_a == task || datum.task_b == task)"
    labels = base.mark_text(align="left", dx=7, dy=-6, fontSize=10).encode(
        x=x, y=y, text="pair:N", opacity=alt.condition(labelled, alt.value(0.9), alt.value(0.0)))
    quadratic = base.transform_regression("s", "f", method="poly", order=2).mark_line(color="black", opacity=0.6).encode(
        x="s:Q", y="f:Q")
    linear = base.transform_regression("s", "f").mark_line(color="black", strokeDash=[4, 4], opacity=0.4).encode(
        x="s:Q", y="f:Q")
    chart = alt.layer(quadratic, linear, points, labels).add_params(*params).properties(
        width=width, height=height, title=alt.TitleParams(title, subtitle=subtitle or ""))
    return chart


def similarity_heatmap(
    similarities: pd.DataFrame,
    *,
    measures: Sequence[str] | None = None,
    default: str = "token_overlap",
    title: str = "Task x task similarity",
    subtitle: str | Sequence[str] = "",
    cell_size: int = 56,
) -> alt.LayerChart:
    """Task x task heatmap of one similarity measure (select), with the values written in the cells.

    ``similarities``: the long table of :func:`forgetting.mechanisms.similarity.similarity_matrix` (and/or
    :func:`forgetting.sweep.pairs.sweep_alignment`); only aggregate rows (``layer`` <NA>) are drawn.
    The colour scale runs from -1 to 1 (cosines can be negative; overlaps are in [0, 1]).
    """
    _check_columns(similarities, ("task_a", "task_b", "measure", "value"), "similarities",
                   hint="pass similarity_matrix(...)")
    agg = similarities[similarities["layer"].isna()] if "layer" in similarities.columns else similarities
    agg = agg.groupby(["task_a", "task_b", "measure"], sort=False)["value"].mean().reset_index()
    present = list(dict.fromkeys(agg["measure"]))
    options = [m for m in (measures or PAIR_SIMILARITIES) if m in present]
    if not options:
        raise ValueError(f"similarities: none of the measures {', '.join(measures or PAIR_SIMILARITIES)} is present")
    agg = agg[agg["measure"].isin(options)]
    default = default if default in options else options[0]
    order = list(dict.fromkeys([*agg["task_a"], *agg["task_b"]]))
    param = _select("measure", options, default, "similarity measure ", SIMILARITY_LABELS)
    base = alt.Chart(agg).transform_filter("datum.measure == measure").encode(
        x=alt.X("task_b:N", sort=order, title="task B", axis=alt.Axis(labelAngle=-30, orient="top")),
        y=alt.Y("task_a:N", sort=order, title="task A"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", scale=alt.Scale(scheme="redblue", domain=[-1, 1]), title="similarity"),
        tooltip=[alt.Tooltip("task_a:N", title="A"), alt.Tooltip("task_b:N", title="B"),
                 alt.Tooltip("measure:N"), alt.Tooltip("value:Q", format=".3f")],
    )
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("value:Q", format=".2f"),
        color=alt.condition("abs(datum.value) > 0.6", alt.value("white"), alt.value("black")),
    )
    n = len(order)
    return alt.layer(rect, text).add_params(param).properties(
        width=cell_size * n, height=cell_size * n, title=alt.TitleParams(title, subtitle=subtitle or ""))


__all__ = ["FORGETTING_LABELS", "SIMILARITY_LABELS", "pair_label", "scatter_table", "similarity_heatmap",
           "similarity_scatter"]
