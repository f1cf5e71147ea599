"""The statistics the rule file names, computed from the measured tables.

Each statistic is a function of the tables (``{name: DataFrame}``, every table with a ``seed`` column)
that returns one value per *unit*: a ``Series`` indexed by ``(seed, stage, old_task)`` for the
statistics of adjacent pairs, or by ``seed`` for those of a whole run (the dynamics). The ledger
averages a seed's units and takes the t interval over seeds
(:func:`forgetting.stats.intervals.clustered_interval`). Every null-subtracted effect subtracts the
null of the *same* pair.

Tables and where they come from: ``gradients``, ``gradient_null``, ``drift``, ``curvature``,
``head_severity`` (the mechanism report, :mod:`forgetting.analysis.report`), ``onsets``
(:func:`forgetting.dynamics.onset_steps` of every seed's dynamics run, with ``stage_steps`` in its
attrs), ``matched_loss`` (one row per seed: the dynamics run's curvature on the forgetting path minus
the learning path at the same loss), ``causal`` (:mod:`forgetting.causal`).

Layers: in ``drift`` layer 0 is the embedding output and layers 1..L the block outputs; the *interior*
blocks are 2..L-1 and the *edge* blocks 1 and L. In ``causal`` and ``head_severity`` layers are the
blocks 0..L-1 (interior 1..L-2).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

Tables = dict[str, pd.DataFrame]
PAIR = ["seed", "stage", "old_task"]
DYNAMICS_MECHANISMS = ("drift", "grad_cosine", "lambda_max", "head_js")
SEVERE_K = "k=5"  # the head set the rule names: the 5 most disrupted heads against 5 random ones

#: The ledger's statistics by name, each a function of the tables giving one value per adjacent pair or seed.
STATISTICS: dict[str, Callable[[Tables], pd.Series]] = {}


def statistic(function: Callable[[Tables], pd.Series]) -> Callable[[Tables], pd.Series]:
    """Register ``function`` under its name (the name the rule file uses)."""
    STATISTICS[function.__name__] = function
    return function


def adjacent_pairs(df: pd.DataFrame, sequence: list[str]) -> pd.DataFrame:
    """The rows whose old task is the one trained just before the stage (``sequence[stage - 2]``): the
    only pairs whose nulls (continue / re-train *that* task) are matched controls and whose "before"
    point is the old task's own end of training."""
    keep = [stage >= 2 and old == sequence[stage - 2] for stage, old in zip(df["stage"], df["old_task"])]
    return df[keep]


def _table(tables: Tables, name: str, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    if name not in tables or tables[name] is None:
        raise LookupError(f"the ledger needs the {name!r} table, which was not given")
    df = tables[name]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise LookupError(f"table {name!r} lacks column(s) {', '.join(missing)} (recompute it with the current code)")
    return adjacent_pairs(df, tables["sequence"]) if "old_task" in df.columns and "sequence" in tables else df


# -- claim 1: gradient conflict ------------------------------------------------------------------------


def _conflict_rate(df: pd.DataFrame, mask: pd.Series) -> pd.Series:
    return (df[mask]["cosine"] < 0).groupby([df[mask][k] for k in PAIR]).mean()


def _conflict_excess(tables: Tables, select: Callable[[pd.DataFrame], pd.Series]) -> pd.Series:
    observed = _table(tables, "gradients", ("cosine", "unit", "group", "kind"))
    null = _table(tables, "gradient_null", ("cosine", "unit", "group", "kind"))
    return _conflict_rate(observed, select(observed)) - _conflict_rate(null, select(null))


@statistic
def conflict_excess_heads(tables: Tables) -> pd.Series:
    """Fraction of attention head slices with negative old/new cosine minus the split-half null's fraction."""
    return _conflict_excess(tables, lambda d: d["unit"] == "head")


@statistic
def conflict_excess_attention_vs_mlp(tables: Tables) -> pd.Series:
    """(excess conflict rate of attention matrices) - (excess conflict rate of MLP matrices): matrices
    against matrices, so the units compared are alike."""
    attention = _conflict_excess(tables, lambda d: (d["unit"] == "matrix") & (d["group"] == "attention"))
    mlp = _conflict_excess(tables, lambda d: (d["unit"] == "matrix") & (d["group"] == "mlp"))
    return attention - mlp


@statistic
def conflict_excess_qk_vs_vo(tables: Tables) -> pd.Series:
    """Excess conflict rate of query/key head slices minus that of value/output head slices."""
    qk = _conflict_excess(tables, lambda d: (d["unit"] == "head") & d["kind"].isin(["q", "k"]))
    vo = _conflict_excess(tables, lambda d: (d["unit"] == "head") & d["kind"].isin(["v", "o"]))
    return qk - vo


# -- claim 2: drift ----------------------------------------------------------------------------------------


def _drops(tables: Tables, readout: str) -> pd.DataFrame:
    """1 - debiased CKA per pair and layer, columns = null kind ("" observed, "continue", "reseed")."""
    drift = _table(tables, "drift", ("cka", "readout", "debiased", "null", "layer"))
    rows = drift[(drift["readout"] == readout) & drift["debiased"].astype(bool)]
    if rows.empty:
        raise LookupError(f"table 'drift' has no debiased rows for readout {readout!r} (recompute the report)")
    return (1 - rows.pivot_table(index=[*PAIR, "layer"], columns="null", values="cka", aggfunc="mean"))


def _blocks(drops: pd.DataFrame) -> tuple[list[int], list[int]]:
    last = int(drops.index.get_level_values("layer").max())
    return list(range(2, last)), [1, last]


def _layer_mean(series: pd.Series, layers: list[int]) -> pd.Series:
    picked = series[series.index.get_level_values("layer").isin(layers)]
    return picked.groupby(level=PAIR).mean()


@statistic
def drift_drop(tables: Tables) -> pd.Series:
    """Mean over the interior blocks of 1 - debiased CKA (last prompt token), observed pair."""
    drops = _drops(tables, "last")
    return _layer_mean(drops[""], _blocks(drops)[0])


def _drift_excess(tables: Tables, readout: str, null: str) -> pd.Series:
    drops = _drops(tables, readout)
    return _layer_mean(drops[""] - drops[null], _blocks(drops)[0])


@statistic
def drift_excess(tables: Tables) -> pd.Series:
    """Interior blocks' drop minus the continue null's drop (last prompt token, debiased)."""
    return _drift_excess(tables, "last", "continue")


@statistic
def drift_excess_mean_readout(tables: Tables) -> pd.Series:
    """As :func:`drift_excess`, with the residual stream averaged over the prompt's tokens."""
    return _drift_excess(tables, "mean", "continue")


@statistic
def drift_excess_reseed(tables: Tables) -> pd.Series:
    """Interior blocks' drop minus the reseed null's drop (re-training the old task with another seed)."""
    return _drift_excess(tables, "last", "reseed")


@statistic
def drift_localisation(tables: Tables) -> pd.Series:
    """Excess drop (over the continue null) of the interior blocks minus that of the first and last block."""
    drops = _drops(tables, "last")
    excess = drops[""] - drops["continue"]
    interior, edge = _blocks(drops)
    return _layer_mean(excess, interior) - _layer_mean(excess, edge)


# -- claim 3: curvature -----------------------------------------------------------------------------------


def _log_ratio(tables: Tables, column: str) -> pd.Series:
    curvature = _table(tables, "curvature", (column, "snapshot"))
    wide = curvature.pivot_table(index=PAIR, columns="snapshot", values=column, aggfunc="mean")
    return np.log(wide["after"].abs() / wide["before"].abs())


@statistic
def curvature_log_ratio(tables: Tables) -> pd.Series:
    """log(lambda_max after / lambda_max before) of the old task's loss."""
    return _log_ratio(tables, "lambda_max")


@statistic
def curvature_min_log_ratio(tables: Tables) -> pd.Series:
    """log(``|lambda_min|`` after / ``|lambda_min|`` before): the most negative end of the spectrum."""
    return _log_ratio(tables, "lambda_min")


#: The widest gap (nats per token) of the learning path's losses that a matched-loss value may be
#: interpolated across; a seed whose learning path jumps further is not a measurement (left out: NaN).
MAX_LOSS_BRACKET = 1.0


@statistic
def curvature_matched_loss(tables: Tables) -> pd.Series:
    """Per seed: log lambda_max on the forgetting path minus the learning path's at the same loss
    (:func:`forgetting.dynamics.matched_loss`); NaN where the learning path's snapshots leave a loss gap
    wider than :data:`MAX_LOSS_BRACKET` inside the matched range (``max_bracket``)."""
    matched = _table(tables, "matched_loss", ("seed", "value"))
    values = matched.set_index("seed")["value"]
    if "max_bracket" in matched.columns:
        values = values.where(matched.set_index("seed")["max_bracket"] <= MAX_LOSS_BRACKET)
    return values


# -- claim 4: heads -----------------------------------------------------------------------------------------


def _combined(tables: Tables, columns: tuple[str, ...] = ()) -> pd.DataFrame:
    severity = _table(tables, "head_severity", ("metric", "severe", "layer", *columns))
    return severity[severity["metric"] == "combined"]


@statistic
def severe_rate(tables: Tables) -> pd.Series:
    """Fraction of heads judged severe (combined score beyond both nulls)."""
    return _combined(tables).groupby(PAIR)["severe"].mean()


@statistic
def chance_rate(tables: Tables) -> pd.Series:
    """The fraction the same rule finds severe in a null snapshot judged against the other nulls."""
    return _combined(tables, ("null_rate",)).groupby(PAIR)["null_rate"].mean()


@statistic
def severe_excess(tables: Tables) -> pd.Series:
    """:func:`severe_rate` minus :func:`chance_rate`."""
    return severe_rate(tables) - chance_rate(tables)


@statistic
def severe_first_vs_last(tables: Tables) -> pd.Series:
    """Severe fraction of the first block's heads minus the last block's."""
    combined = _combined(tables)
    first, last = combined["layer"].min(), combined["layer"].max()
    by_layer = combined.groupby([*PAIR, "layer"])["severe"].mean().unstack("layer")
    return by_layer[first] - by_layer[last]


# -- claim 6: dynamics ------------------------------------------------------------------------------------------


def _onsets(tables: Tables) -> pd.DataFrame:
    onsets = _table(tables, "onsets", ("seed", "measure", "t50"))
    return onsets.pivot_table(index="seed", columns="measure", values="t50", aggfunc="mean")


@statistic
def forgetting_nonlinearity(tables: Tables) -> pd.Series:
    """Per seed: 0.5 - t50(forgetting) / stage steps (0 for forgetting that grows linearly in steps)."""
    steps = tables["onsets"].attrs.get("stage_steps")
    if not steps:
        raise LookupError("table 'onsets' needs attrs['stage_steps'] (the dynamics stage's step count)")
    return 0.5 - _onsets(tables)["forgetting"] / steps


@statistic
def mechanisms_no_later(tables: Tables) -> pd.Series:
    """Per seed: how many of the mechanisms reach half their change no later than the forgetting."""
    t50 = _onsets(tables)
    present = [m for m in DYNAMICS_MECHANISMS if m in t50.columns]
    return (t50[present].le(t50["forgetting"], axis=0)).sum(axis=1).astype(float)


# -- causal rows --------------------------------------------------------------------------------------------------


def _recovery(tables: Tables, study: str) -> pd.DataFrame:
    causal = _table(tables, "causal", ("study", "part", "recovery"))
    return causal[causal["study"] == study]


@statistic
def recovery_severe_vs_random_heads(tables: Tables) -> pd.Series:
    """Recovery from restoring the 5 most disrupted heads minus the mean over random sets of 5 heads in the
    same layers."""
    severe, random = _recovery(tables, "heads_severe"), _recovery(tables, "heads_random")
    severe, random = severe[severe["part"] == SEVERE_K], random[random["part"] == SEVERE_K]
    if severe.empty or random.empty:
        raise LookupError(f"table 'causal' has no heads_severe / heads_random rows with part {SEVERE_K!r}")
    return severe.groupby(PAIR)["recovery"].mean() - random.groupby(PAIR)["recovery"].mean()


@statistic
def recovery_interior_vs_edge(tables: Tables) -> pd.Series:
    """Mean recovery from restoring one interior block minus one of the first and last blocks."""
    layers = _recovery(tables, "layer").copy()
    layers["block"] = layers["part"].str.extract(r"(\d+)", expand=False).astype(int)
    last = int(layers["block"].max())
    interior = layers[layers["block"].between(1, last - 1)].groupby(PAIR)["recovery"].mean()
    edge = layers[layers["block"].isin([0, last])].groupby(PAIR)["recovery"].mean()
    return interior - edge


@statistic
def recovery_interaction(tables: Tables) -> pd.Series:
    """recovery(attention and MLP) - recovery(attention) - recovery(MLP)."""
    return _recovery(tables, "interaction").groupby(PAIR)["recovery"].mean()
