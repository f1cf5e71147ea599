"""Charts of the mechanisms along training of one new task (:mod:`forgetting.dynamics`).

:func:`mechanism_trajectories` puts every measure on one axis by its *fraction of change*,
``(x(s) - x(0)) / max_s |x(s) - x(0)|``: 0 at the start of the stage, +-1 at the measure's largest
excursion, so that timing (not size) is compared. A select picks the measure to emphasise; the old
task's forgetting is always drawn in black, and the tooltip gives the raw value.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from forgetting.dynamics import MEASURES

SHOWN = ("forgetting", "drift", "grad_cosine", "grad_cosine_attention", "lambda_max", "lambda_max_per_loss", "head_js")


def trajectory_table(dynamics: pd.DataFrame) -> pd.DataFrame:
    """Per (measure, step): the mean raw ``value`` over seeds, its ``change`` from step 0 and ``fraction``
    of the largest absolute change (0 where the measure never moves). Only the forgetting path
    (``path == "forgetting"`` where that column exists; the learning path is another stage)."""
    df = dynamics[(dynamics["layer"] == -1) & dynamics["measure"].isin(SHOWN)]
    if "path" in df.columns:
        df = df[df["path"] == "forgetting"]
    df = df.groupby(["measure", "step"], as_index=False)["value"].mean().sort_values(["measure", "step"])
    first = df.groupby("measure")["value"].transform("first")
    df["change"] = df["value"] - first
    peak = df.groupby("measure")["change"].transform(lambda c: c.abs().max())
    df["fraction"] = np.where(peak > 0, df["change"] / peak.where(peak > 0, 1.0), 0.0)
    df["label"] = df["measure"].map(MEASURES)
    return df.reset_index(drop=True)


def mechanism_trajectories(dynamics: pd.DataFrame, *, title: str, subtitle: str = "", width: int = 520,
                           height: int = 300) -> alt.LayerChart:
    """Fraction of change of each measure vs steps into the new task; a select emphasises one measure."""
    df = trajectory_table(dynamics)
    options = [m for m in SHOWN if m != "forgetting" and m in set(df["measure"])]
    if not options:
        raise ValueError("dynamics: no mechanism measures to plot (see forgetting.dynamics.MEASURES)")
    pick = alt.param(name="mechanism", value=options[0], bind=alt.binding_select(
        options=options, labels=[MEASURES[m] for m in options], name="mechanism "))
    # square-root axis: forgetting happens in the first tenth of the stage, the rest is a plateau
    x = alt.X("step:Q", title="steps into the new task (square-root axis)", scale=alt.Scale(type="sqrt"))
    y = alt.Y("fraction:Q", title="fraction of the largest change", scale=alt.Scale(domain=[-1.05, 1.05]))
    tooltip = [alt.Tooltip("label:N", title="measure"), alt.Tooltip("step:Q"),
               alt.Tooltip("value:Q", format=".3f", title="value"), alt.Tooltip("fraction:Q", format=".2f")]
    mechanisms = alt.Chart(df[df["measure"] != "forgetting"]).mark_line(point=True).encode(
        x=x, y=y, detail="measure:N", tooltip=tooltip,
        color=alt.condition("datum.measure == mechanism", alt.value("#d62728"), alt.value("#c7c7c7")),
        opacity=alt.condition("datum.measure == mechanism", alt.value(1.0), alt.value(0.5)),
        strokeWidth=alt.condition("datum.measure == mechanism", alt.value(3), alt.value(1)),
    )
    forgetting = alt.Chart(df[df["measure"] == "forgetting"]).mark_line(
        color="black", point=alt.OverlayMarkDef(color="black")).encode(
        x=x, y=y, tooltip=tooltip)
    zero = alt.Chart(pd.DataFrame({"fraction": [0.0]})).mark_rule(strokeDash=[3, 3], color="#888").encode(y="fraction:Q")
    return alt.layer(zero, mechanisms, forgetting).add_params(pick).properties(
        width=width, height=height,
        title=alt.TitleParams(title, subtitle=[subtitle, "black: the old task's forgetting; red: the chosen mechanism"]
                              if subtitle else ["black: the old task's forgetting; red: the chosen mechanism"],
                              anchor="start"),
        description=f"{title}: fraction of change of each mechanism along training; select the mechanism.",
    )


def ledger_html(ledger: pd.DataFrame) -> str:
    """The claims ledger as an HTML table with the verdict cell coloured (green: holds, amber: holds
    partly, grey: not supported, red: contradicted) and the outcome of each rule's tests."""
    colours = {"holds": "#d8f0d8", "holds partly": "#fbeccb", "not supported": "#e6e6e6", "contradicted": "#f6d5d5"}
    shown = ledger[["claim", "paper", "measured", "units", "primary", "clauses", "verdict"]].rename(columns={
        "claim": "claim", "paper": "the paper says", "measured": "we measured (95 % interval)",
        "units": "interval over", "primary": "primary test", "clauses": "clause tests", "verdict": "verdict"})
    styler = shown.style.hide(axis="index").map(
        lambda v: f"background-color: {colours.get(v, 'transparent')}; font-weight: 600", subset=["verdict"])
    return styler.set_table_attributes('class="claims-ledger"').to_html()
