"""Attention-head disruption: how much each head changes between two snapshots, on the old task's data,
and which heads change *beyond noise*.

Three steps, three modules; every public name of them is importable from here too:

1. **record** every head of a snapshot on the old task's data: its attention pattern, its output, its
   weight slices and the old task's loss with the head ablated (:func:`head_activity`,
   :class:`HeadRecord`, :func:`ablate_heads`; ``forgetting.mechanisms.head_records``);
2. **measure** the disruption between two records: Jensen-Shannon divergence of the attention rows,
   entropy change, output similarity and CKA, relative weight change, change of the ablation effect
   (:func:`head_disruption`; ``forgetting.mechanisms.head_metrics``, where the formulas are);
3. **judge** it against a null (this module): :func:`severe_heads`, :func:`chance_rates` (the rate the
   same rule gives to a null judged against the other nulls), :func:`severe_fractions`,
   :func:`severe_fraction_ci`, :func:`disruption_forgetting_correlation`.

Notation: ``L`` layers, ``H`` query heads per layer, ``K`` key/value heads (query head ``h`` reads kv head
``h // (H // K)``). The run-level analyses that read snapshots of a run are
:func:`forgetting.analysis.heads.analyze_head_disruption` (one pair judged against its nulls) and
:func:`forgetting.analysis.heads.disruption_timeline` (every snapshot along the new task's training).

**Severity, calibrated against a null** (:func:`severe_heads`). A fixed threshold can produce any fraction
of "severe" heads, so the cut is taken from a *null*: the same disruption measured between the "before"
snapshot and a snapshot that knows the old task just as well, made by
:func:`forgetting.nulls.null_snapshots`:

- ``continue``: the before snapshot trained further on the old task itself, for as many steps as the
  new task got (a small change: optimisation noise alone);
- ``reseed``: the old task re-trained from the same starting snapshot with another seed (batch order),
  for as many steps as the original (a large change, especially in upper layers).

Each metric ``m`` is turned into a disruption score (higher = more disrupted): ``js_divergence``,
``|entropy_change|``, ``1 - output_similarity``, ``1 - output_cka``, ``weight_change``,
``|ablation_effect_change|``; it is standardised by the null, ``z_m = (s_m - mean_null(s_m)) / sd_null(s_m)``
(per layer with ``by="layer"``, the default, over all heads with ``by="all"``), and the ``combined``
score is ``mean_m z_m`` over the functional metrics (JS, entropy, output similarity, ablation; the
weight change is a cause, not a change of what the head does, and is flagged on its own). A head is
**severely disrupted** on a score when that score exceeds the ``(1 - alpha)`` quantile of the same score
over all heads of *every* null kind given ("an effect counts only where it stands clear of both nulls").
If the real disruption were itself a draw from the null, about ``alpha`` of the heads would be flagged
(tested on synthetic data). The empirical quantile of ``N`` null values cannot resolve ``alpha`` below
``1/(N+1)``: with 32 heads and one null replicate, ``alpha = 0.05`` is at the limit; add null seeds.

**Fractions and forgetting.** :func:`severe_fractions` (overall and per layer), :func:`severe_fraction_ci`
(bootstrap over seeds) and :func:`disruption_forgetting_correlation` (do heads, layers or the whole
model disrupt in step with the loss increase of a disruption timeline, especially early). Both
quantities grow with the step, so a positive correlation across steps alone is expected;
``control_step=True`` partials the step out, and a correlation *across seeds or task pairs at a fixed
early step* is the stronger test.

Works on any model :func:`forgetting.models.geometry.attention_geometry` knows (Llama, Llama 4 MoE
with and without RoPE layers, Qwen2, Mistral, Mixtral, GPT-2, GPT-NeoX) and on peft LoRA models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd

from forgetting.errors import SpecError
from forgetting.mechanisms.head_metrics import attention_entropy, head_disruption, js_divergence, weight_change
from forgetting.mechanisms.head_records import (
    ABLATIONS,
    POSITIONS,
    Ablation,  # noqa: F401  (re-exported: forgetting.analysis.heads imports it from here)
    HeadRecord,
    Positions,  # noqa: F401  (re-exported, as Ablation)
    _check_choice,
    ablate_heads,
    ablation_losses,
    head_activity,
    head_weights,
)
from forgetting.stats import bootstrap_mean_ci, correlation, partial_correlation

__all__ = [
    "ABLATIONS",
    "COMBINED_METRICS",
    "DISRUPTION_METRICS",
    "NULL_KINDS",
    "POSITIONS",
    "HeadRecord",
    "ablate_heads",
    "ablation_losses",
    "attention_entropy",
    "chance_rates",
    "disruption_forgetting_correlation",
    "disruption_scores",
    "head_activity",
    "head_disruption",
    "head_weights",
    "js_divergence",
    "severe_fraction_ci",
    "severe_fractions",
    "severe_heads",
    "weight_change",
]

NULL_KINDS = ("continue", "reseed")

#: metric -> how its value becomes a disruption score (higher = more disrupted)
DISRUPTION_METRICS: dict[str, str] = {
    "js_divergence": "value",
    "entropy_change": "abs",
    "output_similarity": "one_minus",
    "output_cka": "one_minus",
    "weight_change": "value",
    "ablation_effect_change": "abs",
}
COMBINED_METRICS: tuple[str, ...] = ("js_divergence", "entropy_change", "output_similarity", "ablation_effect_change")


# ---------------------------------------------------------------------------------------------------
# severity against a null
# ---------------------------------------------------------------------------------------------------


def disruption_scores(disruption: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Oriented disruption scores (higher = more disrupted), long format (``layer``, ``head``, ``metric``,
    ``score`` plus any grouping columns such as ``null``, ``replicate``, ``seed``, ``step``).

    ``js_divergence``, ``weight_change``: the value; ``entropy_change``, ``ablation_effect_change``: its
    absolute value (a head that spreads or sharpens, loses or gains importance, changed either way);
    ``output_similarity``, ``output_cka``: ``1 - value``.
    """
    metrics = list(DISRUPTION_METRICS) if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in DISRUPTION_METRICS]
    if unknown:
        raise SpecError("metrics", f"{', '.join(unknown)} not allowed; allowed: {', '.join(DISRUPTION_METRICS)}")
    df = disruption[disruption["metric"].isin(metrics)].copy()
    how = df["metric"].map(DISRUPTION_METRICS)
    v = df["value"].to_numpy(dtype=np.float64)
    df["score"] = np.where(how == "abs", np.abs(v), np.where(how == "one_minus", 1.0 - v, v))
    return df.drop(columns=["value"])


#: Relative size of float64 round-off in a disruption score (64 ulp at 1).
ROUND_OFF = 64 * np.finfo(np.float64).eps


def _standardize(real: pd.DataFrame, null: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add ``z = (score - mean_null) / sd_null`` per group ``keys`` (sd over null values, ddof=1).

    Where the null does not vary (sd = 0) z is 0 at the null's value and +/-inf away from it. Spreads and
    differences within float64 round-off of the scores (``ROUND_OFF * max(1, |mean_null|)``) count as 0:
    a model compared with itself gives ``1 - 1e-16`` for a cosine, which is no disruption.
    """
    stats = null.groupby(keys)["score"].agg(["mean", "std"]).reset_index()

    def z(df: pd.DataFrame) -> pd.DataFrame:
        df = df.merge(stats, on=keys, how="left")
        if df["mean"].isna().any():
            missing = df.loc[df["mean"].isna(), keys].drop_duplicates().head(3).to_dict("records")
            raise ValueError(f"null_disruption: no null values for {missing}")
        tol = ROUND_OFF * np.maximum(1.0, np.abs(df["mean"].to_numpy()))
        diff = df["score"].where(np.abs(df["score"] - df["mean"]) > tol, df["mean"]) - df["mean"]
        sd = df["std"].fillna(0.0).to_numpy()
        sd = np.where(sd > tol, sd, 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            zz = np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), np.sign(diff) * np.where(diff != 0, np.inf, 0.0))
        return df.assign(z=np.where(diff.to_numpy() == 0, 0.0, zz)).drop(columns=["mean", "std"])

    return z(real), z(null)


def _combined(df: pd.DataFrame, combine: Sequence[str], id_cols: list[str]) -> pd.DataFrame:
    """Mean z over the ``combine`` metrics per head (metric ``"combined"``); NaN if a metric is missing."""
    sub = df[df["metric"].isin(combine)]
    agg = sub.groupby(id_cols, dropna=False).agg(z=("z", "mean"), n=("z", "size")).reset_index()
    agg.loc[agg["n"] < len(combine), "z"] = np.nan
    return agg.drop(columns="n").assign(metric="combined", score=agg["z"])


def severe_heads(
    disruption: pd.DataFrame,
    null_disruption: pd.DataFrame | Mapping[str, pd.DataFrame],
    alpha: float = 0.05,
    *,
    by: Literal["layer", "all"] = "layer",
    metrics: Sequence[str] | None = None,
    combine: Sequence[str] = COMBINED_METRICS,
) -> pd.DataFrame:
    """Flag severely disrupted heads: beyond the ``(1 - alpha)`` quantile of every null (module docstring).

    Args:
        disruption: :func:`head_disruption` of the pair of interest (may hold several, told apart by extra
            columns such as ``seed`` or ``step``: those are kept and each head row is judged on its own).
        null_disruption: the same measured between the before snapshot and null snapshots: one DataFrame
            (an optional ``null`` column names the null kind; other extra columns such as ``replicate``
            just add null values) or a mapping ``{null kind: DataFrame}``.
        alpha: the tolerated false-positive rate per head, in (0, 1).
        by: ``"layer"`` standardises each metric by the null heads of the same layer (layers differ in how
            much they move under noise), ``"all"`` by all null heads; quantiles are always over all heads.
        metrics: metrics to judge singly (default: those of :data:`DISRUPTION_METRICS` present in both).
        combine: metrics averaged (as z) into the ``combined`` score; ``()`` for none.

    Returns:
        long DataFrame, one row per head and judged metric (``combined`` included): ``layer``, ``head``,
        ``metric``, ``score``, ``z``, ``threshold`` (the largest null quantile of z over null kinds),
        ``p_value`` (the largest over null kinds of ``(1 + #{null z >= z}) / (1 + n_null)``), ``n_null``
        (smallest null count), ``severe`` (``z > threshold``), plus the extra columns of ``disruption``.
    """
    if not 0 < alpha < 1:
        raise SpecError("alpha", f"must be between 0 and 1, got {alpha}")
    _check_choice("by", by, ("layer", "all"))
    if isinstance(null_disruption, Mapping):
        null = pd.concat([df.assign(null=name) for name, df in null_disruption.items()], ignore_index=True)
    else:
        null = null_disruption if "null" in null_disruption else null_disruption.assign(null="null")
    if null.empty:
        raise ValueError("null_disruption: empty; make null snapshots with forgetting.nulls.null_snapshots()")
    present = set(disruption["metric"]) & set(null["metric"])
    metrics = [m for m in DISRUPTION_METRICS if m in present] if metrics is None else list(metrics)
    missing = [m for m in list(metrics) + list(combine) if m not in present]
    if missing:
        raise SpecError("metrics", f"{', '.join(missing)} missing from disruption or null_disruption; present: {', '.join(sorted(present))}")
    used = list(dict.fromkeys([*metrics, *combine]))
    real_s, null_s = disruption_scores(disruption, used), disruption_scores(null, used)
    keys = ["metric", "layer"] if by == "layer" else ["metric"]
    real_z, null_z = _standardize(real_s, null_s, keys)
    real_extra = [c for c in disruption.columns if c not in ("layer", "head", "kv_head", "metric", "value")]
    null_extra = [c for c in null.columns if c not in ("layer", "head", "kv_head", "metric", "value")]
    if combine:
        real_z = pd.concat([real_z, _combined(real_z, combine, ["layer", "head", "kv_head", *real_extra])], ignore_index=True)
        null_z = pd.concat([null_z, _combined(null_z, combine, ["layer", "head", "kv_head", *null_extra])], ignore_index=True)
    judged = [*metrics, *(["combined"] if combine else [])]
    real_z = real_z[real_z["metric"].isin(judged)].copy()
    rows = []
    for metric, group in real_z.groupby("metric", sort=False):
        z = group["z"].to_numpy()
        thresholds, pvals, counts = [], [], []
        for _, nz in null_z[null_z["metric"] == metric].groupby("null"):
            values = nz["z"].to_numpy()
            values = values[~np.isnan(values)]
            thresholds.append(float(np.quantile(values, 1 - alpha, method="higher")))
            pvals.append((1 + (values[None, :] >= z[:, None]).sum(1)) / (1 + values.size))
            counts.append(values.size)
        threshold = max(thresholds)
        rows.append(group.assign(
            threshold=threshold, p_value=np.max(np.stack(pvals), axis=0), n_null=min(counts),
            severe=np.nan_to_num(z, nan=-np.inf) > threshold,
        ))
    out = pd.concat(rows, ignore_index=True)
    order = ["layer", "head", "kv_head", "metric", "score", "z", "threshold", "p_value", "n_null", "severe"]
    return out[order + [c for c in out.columns if c not in order]]


def chance_rates(
    null_disruption: pd.DataFrame,
    alpha: float = 0.05,
    *,
    by: Literal["layer", "all"] = "layer",
    metrics: Sequence[str] | None = None,
    combine: Sequence[str] = COMBINED_METRICS,
    snapshot: Sequence[str] = ("null",),
) -> pd.DataFrame:
    """The rate :func:`severe_heads` flags in noise: each null snapshot judged against the *other* nulls.

    The null snapshots are told apart by the columns ``snapshot`` (default ``null``, the kind; add e.g.
    ``null_seed`` when a kind has several seeds). For every null snapshot ``k`` of the ``S >= 2``,
    :func:`severe_heads` judges ``k``'s heads against the nulls other than ``k`` (leave one null out),
    with the same ``alpha``, ``by``, ``metrics`` and ``combine`` as the observed pair, and::

        rate_k(metric)          = #{heads of k severe on metric} / #{heads}
        rate_k(metric, layer)   = the same over the heads of one layer
        null_rate               = mean_k rate_k,   null_rate_max = max_k rate_k

    If the observed pair were itself a draw from the nulls, its severe fraction would be ``null_rate``
    on average, so ``observed - null_rate`` is the excess over chance. With the two kinds ``continue``
    and ``reseed`` (one snapshot each) ``continue`` is judged against ``reseed`` and vice versa: the
    kinds differ in how far they move, so the two rates differ a lot, and ``null_rate`` is their mean.

    Returns:
        one row per (metric, layer) and per metric with ``layer = -1`` (all heads): ``metric``,
        ``layer``, ``null_rate``, ``null_rate_max``, ``n_null_snapshots`` (S); an empty frame with
        those columns when there are fewer than two null snapshots.
    """
    columns = ["metric", "layer", "null_rate", "null_rate_max", "n_null_snapshots"]
    keys = list(snapshot)
    missing = [c for c in keys if c not in null_disruption]
    if missing:
        raise SpecError("snapshot", f"column(s) {', '.join(missing)} not in null_disruption")
    null_disruption = null_disruption.reset_index(drop=True)  # held-out rows are dropped by label
    groups = list(null_disruption.groupby(keys, sort=True, dropna=False))
    if len(groups) < 2:
        return pd.DataFrame(columns=columns)
    rates = []
    for key, held_out in groups:
        key = key if isinstance(key, tuple) else (key,)
        others = null_disruption.drop(held_out.index)
        judged = severe_heads(held_out.drop(columns=keys), others, alpha, by=by, metrics=metrics, combine=combine)
        per_layer = judged.groupby(["metric", "layer"])["severe"].mean().reset_index()
        overall = judged.groupby("metric")["severe"].mean().reset_index().assign(layer=-1)
        rates.append(pd.concat([per_layer, overall], ignore_index=True).assign(_held_out=str(key)))
    df = pd.concat(rates, ignore_index=True)
    out = df.groupby(["metric", "layer"], sort=False)["severe"].agg(null_rate="mean", null_rate_max="max").reset_index()
    return out.assign(n_null_snapshots=len(groups))[columns]


def severe_fractions(severe: pd.DataFrame, metric: str = "combined") -> pd.DataFrame:
    """Fraction of severely disrupted heads overall (``layer = "all"``) and per layer.

    ``severe``: :func:`severe_heads` output (extra columns such as ``seed`` or ``step`` are kept as groups).
    Returns columns (groups...), ``layer``, ``fraction``, ``n_severe``, ``n_heads``.
    """
    df = severe[severe["metric"] == metric]
    if df.empty:
        raise SpecError("metric", f"{metric!r} not in severe; present: {', '.join(sorted(set(severe['metric'])))}")
    groups = [c for c in df.columns if c not in ("layer", "head", "kv_head", "metric", "score", "z", "threshold",
                                                "p_value", "n_null", "severe")]
    parts = []
    for level, keys in (("all", groups), ("layer", [*groups, "layer"])):
        if keys:
            g = df.groupby(keys, dropna=False)["severe"].agg(n_severe="sum", n_heads="size").reset_index()
        else:
            g = pd.DataFrame({"n_severe": [int(df["severe"].sum())], "n_heads": [len(df)]})
        if level == "all":
            g["layer"] = "all"
        parts.append(g)
    out = pd.concat(parts, ignore_index=True)
    out["layer"] = out["layer"].astype(str)
    out["fraction"] = out["n_severe"] / out["n_heads"]
    return out[[*groups, "layer", "fraction", "n_severe", "n_heads"]]


def severe_fraction_ci(fractions: pd.DataFrame, *, by: str = "seed", ci: float = 0.95, seed: int = 0,
                       n_boot: int = 2000) -> pd.DataFrame:
    """Mean severe fraction over seeds with a percentile bootstrap interval, overall and per layer.

    ``fractions``: :func:`severe_fractions` of several runs, told apart by column ``by`` (one fraction per
    run and layer). Uses :func:`forgetting.stats.bootstrap_mean_ci` (resampling runs). Returns ``layer``,
    ``mean``, ``ci_low``, ``ci_high``, ``n_runs``. One run gives a zero-width interval: no spread to estimate.
    """
    if by not in fractions:
        raise SpecError("by", f"column {by!r} not in fractions; columns: {', '.join(fractions.columns)}")
    rows = []
    for layer, group in fractions.groupby("layer", sort=False):
        mean, low, high = bootstrap_mean_ci(group["fraction"].to_numpy(), n_boot=n_boot, ci=ci, seed=seed)
        rows.append({"layer": layer, "mean": mean, "ci_low": low, "ci_high": high, "n_runs": group[by].nunique()})
    return pd.DataFrame(rows)



# ---------------------------------------------------------------------------------------------------
# disruption along the new task's training, and its link to forgetting
# ---------------------------------------------------------------------------------------------------


def disruption_forgetting_correlation(
    timeline: pd.DataFrame,
    *,
    metric: str = "js_divergence",
    level: Literal["model", "layer", "head"] = "layer",
    method: str = "spearman",
    max_step: int | None = None,
    control_step: bool = False,
    group: str | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    n_perm: int = 5000,
) -> pd.DataFrame:
    """Does disruption go with the old task's loss increase? Correlation across snapshots (steps x runs).

    Observations are the snapshots of ``timeline`` (:func:`forgetting.analysis.heads.disruption_timeline`,
    possibly several runs concatenated with a ``group`` column such as ``seed``); ``x`` = the mean disruption score
    (:func:`disruption_scores` orientation) of ``metric`` over the heads of the model, of each layer,
    or of each head (``level``); ``y`` = ``loss_increase``. ``max_step`` keeps snapshots with
    ``step <= max_step`` (early forgetting). ``control_step=True`` reports the partial correlation given
    the step (both grow with training, which alone makes them correlate). ``group`` switches to the
    cluster bootstrap over runs. Uses :func:`forgetting.stats.correlation` / ``partial_correlation``.

    Returns one row per model / layer / head: ``layer``, ``head`` (where applicable), ``r``, ``ci_low``,
    ``ci_high``, ``p_value``, ``n``, ``method``, ``partial_on``.
    """
    _check_choice("level", level, ("model", "layer", "head"))
    df = timeline if max_step is None else timeline[timeline["step"] <= max_step]
    scores = disruption_scores(df, [metric])
    if scores.empty:
        raise SpecError("metric", f"{metric!r} not in timeline")
    run_keys = ["snapshot", "step", "loss_increase"] + ([group] if group else [])
    unit = {"model": [], "layer": ["layer"], "head": ["layer", "head"]}[level]
    per_obs = scores.groupby(unit + run_keys, dropna=False)["score"].mean().reset_index()
    rows = []
    for key, obs in (per_obs.groupby(unit) if unit else [((), per_obs)]):
        key = key if isinstance(key, tuple) else (key,)
        kw = {"method": method, "seed": seed, "n_boot": n_boot, "n_perm": n_perm,
              "groups": obs[group].to_numpy() if group else None}
        try:
            if control_step:
                res = partial_correlation(obs["score"], obs["loss_increase"], obs["step"].to_numpy(float), **kw)
            else:
                res = correlation(obs["score"], obs["loss_increase"], **kw)
            rec = {k: getattr(res, k) for k in ("r", "ci_low", "ci_high", "p_value", "n", "method", "partial_on")}
        except ValueError as exc:  # constant x or y, too few snapshots: reported, not hidden
            rec = {"r": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n": len(obs),
                   "method": method, "partial_on": int(control_step), "note": str(exc)}
        rows.append({**dict(zip(unit, key)), **rec})
    return pd.DataFrame(rows)
