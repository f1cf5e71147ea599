"""The registry of measures: one entry per mechanism, read by the mechanism report, the dynamics and the
ledger, so that adding a mechanism is its module, one :func:`register` call and its tests.

A measure says what it keeps of one snapshot and how it turns that into tables and numbers:

- ``record(probe)``: what is kept of the model at one snapshot (hidden states, a head record, a curvature
  estimate), for the old task's examples ``probe.examples``; ``None`` for a measure taken only at the
  start of a stage;
- ``report(before, after, keys)``: the mechanism report's tables (``{table: DataFrame}``) for one pair of
  snapshots (:mod:`forgetting.analysis.report`), with the pair's ``keys`` (stage, new_task, old_task)
  assigned; with ``nulls=True`` it is also called with each null snapshot's record as ``after`` and the
  rows get ``null = <kind>`` (``""`` for the observed pair);
- ``at_start(probe, keys)``: tables measured once, at the snapshot before the new task (the gradients);
- ``derive(tables)``: tables computed from the finished report tables (head severity from the heads);
- ``trace(start, now, probe)``: the dynamics (:mod:`forgetting.dynamics`): ``(values, layer_values)`` at a
  point along the stage, from the records at the stage start and now; ``values`` maps measure names of
  :data:`forgetting.dynamics.MEASURES` to numbers, ``layer_values`` is a list of ``(measure, layer, value)``;
- ``learning(record)``: the dynamics' *learning path*: values (measure name -> number) from a record
  of the old task's examples at a snapshot of the old task's *own* training (the curvature: ``old_loss``,
  ``lambda_max``, ``lambda_min``), to compare the forgetting path with at matched loss;
- ``chart``: ``"module:function"`` in :mod:`forgetting.viz` that draws the measure's report tables,
  called with them in the order of ``tables`` (:func:`forgetting.viz.measures.measure_chart`); ``claim``: the id of the rule in ``data/ledger_rules.yaml``
  that judges the paper's claim (:mod:`forgetting.ledger.rules`), whose statistics read ``claim_table``
  first (a new claim adds a rule and registers its statistics with
  :func:`forgetting.ledger.effects.statistic`).

The four built-in measures are registered at the bottom of this module, in the order the ledger lists
their claims. What their tables hold beyond :mod:`forgetting.analysis.report`'s description (every
consumer filters on the columns that tell the rows apart):

- ``drift``: one row per layer for each ``(readout, debiased)`` in :data:`DRIFT_VARIANTS`: ``readout``
  ``"mean"`` (mean over tokens; with ``debiased = False`` the rows the table always had) or ``"last"``
  (the last prompt token), ``debiased`` (unbiased-HSIC CKA, needed because n = 60 examples < d
  features); ``note`` says where CKA was defined by convention (a constant layer: ``_drift_report``);
- ``curvature``: ``lambda_min`` (the most negative Hessian eigenvalue of the old task's loss, from the
  same Lanczos run as ``lambda_max``) and ``hessian_matvecs``;
- ``heads``: the ablation rows ``ablation_effect_before`` / ``_after`` / ``_change`` (mean ablation of each
  head, :func:`forgetting.mechanisms.heads.head_activity`), which enter the ``combined`` score;
- ``head_severity``: ``combined_of`` (the metrics of the combined score), the chance rate ``null_rate``,
  ``null_rate_max``, ``null_rate_layer``, ``n_null_snapshots`` (``_head_severity``);
- ``gradients`` / ``gradient_null``: ``n_per_gradient`` (examples behind each gradient compared).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from forgetting.mechanisms.drift import cka_by_layer, intermediate_layers
from forgetting.mechanisms.gradients import gradient_alignment, split_half_null, task_alignment, task_gradients
from forgetting.mechanisms.heads import COMBINED_METRICS, chance_rates, head_activity, head_disruption, severe_heads
from forgetting.mechanisms.probes import hidden_states, top_eigenvalue
from forgetting.models.geometry import attention_geometry
from forgetting.tasks.encoding import EncodedExamples

Tables = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Probe:
    """The model at one snapshot and the examples a measure reads: the old task's first ``n_examples``
    eval examples (``examples``), the new task's train examples (``new_train``, all of them) and their
    first ``n_examples`` (``new_examples``). ``head_ablation``: the ablation of the heads record
    (``"mean"``; ``None`` skips its ``L * H`` ablation passes where only the attention is read: the dynamics)."""

    model: Any
    examples: EncodedExamples
    new_train: EncodedExamples
    new_examples: EncodedExamples
    batch_size: int = 64
    hessian_iters: int = 20
    n_examples: int = 60
    head_ablation: str | None = "mean"


@dataclass(frozen=True)
class Measure:
    """One registered measure (see the module docstring for each field)."""

    name: str
    tables: tuple[str, ...]
    record: Callable[[Probe], Any] | None = None
    report: Callable[[Any, Any, dict], Tables] | None = None
    nulls: bool = False
    at_start: Callable[[Probe, dict], Tables] | None = None
    derive: Callable[[Tables], Tables] | None = None
    trace: Callable[[Any, Any, Probe], tuple[dict[str, float], list[tuple[str, int, float]]]] | None = None
    learning: Callable[[Any], dict[str, float]] | None = None
    chart: str | None = None
    claim: str | None = None
    claim_table: str | None = None


_REGISTRY: dict[str, Measure] = {}


def register(measure: Measure) -> Measure:
    """Add ``measure`` to the registry (its tables must not clash with another measure's)."""
    taken = {t: m.name for m in _REGISTRY.values() if m.name != measure.name for t in m.tables}
    clash = [t for t in measure.tables if t in taken]
    if clash:
        raise ValueError(f"measure {measure.name!r}: table(s) {', '.join(clash)} already belong to "
                         f"{', '.join(sorted({taken[t] for t in clash}))}")
    _REGISTRY[measure.name] = measure
    return measure


def unregister(name: str) -> None:
    """Remove measure ``name`` (for tests that register a toy one)."""
    _REGISTRY.pop(name, None)


def measures() -> tuple[Measure, ...]:
    """The registered measures, in registration order."""
    return tuple(_REGISTRY.values())


def report_tables() -> tuple[str, ...]:
    """Every table of the mechanism report, in registration order."""
    return tuple(t for m in measures() for t in m.tables)


# -- the built-in measures ----------------------------------------------------------------------------


def _gradients_at_start(probe: Probe, keys: dict) -> Tables:
    """``gradients`` (old vs new) and ``gradient_null`` (two halves of the old task's examples), with
    ``n_per_gradient``: the examples behind each of the two gradients compared (the null's halves have
    half as many, so its cosines are noisier than a full-sample gradient's). Both tables have the unit
    columns a per-type conflict rate needs: ``unit`` (``head`` / ``matrix``), ``kind`` (q, k, v, o of a
    head slice; gate, up, down of an MLP matrix) and ``group`` (``attention`` / ``mlp``)."""
    model, examples, bs = probe.model, probe.examples, probe.batch_size
    n_old = min(len(examples), probe.n_examples)
    return {
        "gradients": task_alignment(model, examples, probe.new_train, batch_size=bs,
                                    max_examples=probe.n_examples).assign(**keys, n_per_gradient=n_old),
        "gradient_null": split_half_null(model, examples, batch_size=bs).assign(**keys, n_per_gradient=len(examples) // 2),
    }


def _gradients_trace(start: Any, now: Any, probe: Probe) -> tuple[dict[str, float], list]:
    g_old = task_gradients(probe.model, probe.examples, batch_size=probe.batch_size)
    g_new = task_gradients(probe.model, probe.new_examples, batch_size=probe.batch_size)
    alignment = gradient_alignment(g_old, g_new, attention_geometry(probe.model), heads=False)
    whole = alignment[alignment["unit"] == "model"].set_index("group")["cosine"]
    return {"grad_cosine": float(whole["all"]), "grad_cosine_attention": float(whole["attention"])}, []


#: The drift table's (readout, debiased) variants, the first being the one the table always had.
DRIFT_VARIANTS = (("mean", False), ("mean", True), ("last", False), ("last", True))


def _drift_report(before: Any, after: Any, keys: dict) -> Tables:
    """CKA per layer before vs after for every ``(readout, debiased)`` of :data:`DRIFT_VARIANTS`, told
    apart by the ``readout`` and ``debiased`` columns.

    Why four: with n = 60 examples and d = 128 features (n < d) biased CKA is inflated (two
    independent Gaussian samples give about 0.68), the debiased estimator (unbiased HSIC, Song et al.
    2012) gives about 0 there; the last prompt token is where the answer is produced, the mean over
    tokens is dominated by prompt tokens all tasks share. ``(mean, biased)`` are the rows the table
    always had. At the last token the embedding output (layer 0) is the same for every example
    (every prompt ends with the same token): CKA is undefined there; it is *defined* as 1 when both
    sides are constant, 0 when one is (``constant="define"`` of :func:`cka_by_layer`; ``note`` says so).
    """
    (hidden_before, mask), (hidden_after, _) = before, after
    parts = [cka_by_layer(hidden_before, hidden_after, mask, readout=readout, debiased=debiased, constant="define")
             for readout, debiased in DRIFT_VARIANTS]
    return {"drift": pd.concat(parts, ignore_index=True).assign(**keys)}


def _drift_trace(start: Any, now: Any, probe: Probe) -> tuple[dict[str, float], list]:
    (hidden_start, mask), (hidden, _) = start, now
    cka = cka_by_layer(hidden_start, hidden, mask, readout="mean")
    middle = intermediate_layers(range(len(hidden)))
    inner = cka[cka["layer"].isin(middle)]["cka"]
    last = cka_by_layer(hidden_start, hidden, mask, readout="last", debiased=True, constant="define")
    inner_last = last[last["layer"].isin(middle)]["cka"]
    return ({"drift": 1.0 - float(inner.mean()), "drift_last_debiased": 1.0 - float(inner_last.mean())},
            [("cka", int(r.layer), float(r.cka)) for r in cka.itertuples()])


def _curvature_report(before: dict, after: dict, keys: dict) -> Tables:
    return {"curvature": pd.DataFrame([{**keys, "snapshot": "before", **before}, {**keys, "snapshot": "after", **after}])}


def _curvature_trace(start: dict, now: dict, probe: Probe) -> tuple[dict[str, float], list]:
    return {"old_loss": now["loss"], "forgetting": now["loss"] - start["loss"], "lambda_max": now["lambda_max"],
            "lambda_max_per_loss": now["lambda_max_per_loss"], "lambda_min": now["lambda_min"]}, []


def _curvature_learning(record: dict) -> dict[str, float]:
    return {"old_loss": record["loss"], "lambda_max": record["lambda_max"], "lambda_min": record["lambda_min"]}


def _heads_report(before: Any, after: Any, keys: dict) -> Tables:
    return {"heads": head_disruption(before, after).assign(**keys)}


def _head_severity(tables: Tables) -> Tables:
    """:func:`severe_heads` for each (stage, old task): observed rows (``null == ""``) against the null rows;
    an empty table without nulls.

    The ``combined`` score averages the z of the metrics in ``combined_of`` (:data:`COMBINED_METRICS`
    present in the heads table: with the ablation effect, as documented in
    :mod:`forgetting.mechanisms.heads`). Columns from :func:`chance_rates` (each null snapshot judged by
    the same rule against the other nulls, leave one null out) give the rate the rule finds in noise:
    ``null_rate`` / ``null_rate_max`` (mean / max over the held-out nulls of the severe fraction of all
    heads, on the row's metric), ``null_rate_layer`` (the same over the heads of the row's layer),
    ``n_null_snapshots``. The ledger's excess rate is ``mean(severe) - null_rate``.
    """
    heads = tables["heads"]
    if "null" not in heads or (heads["null"] == "").all():
        return {"head_severity": pd.DataFrame()}
    parts = []
    for (stage, new_task, old_task), group in heads.groupby(["stage", "new_task", "old_task"], sort=True):
        observed = group[group["null"] == ""].drop(columns=["stage", "new_task", "old_task", "null", "null_seed"],
                                                   errors="ignore")
        null = group[group["null"] != ""].drop(columns=["stage", "new_task", "old_task"])
        combine = [m for m in COMBINED_METRICS if m in set(observed["metric"])]
        severity = severe_heads(observed, null, combine=combine)
        # one null snapshot = one (kind, seed): the report keeps two seeds of each kind
        chance = chance_rates(null, combine=combine, snapshot=[c for c in ("null", "null_seed") if c in null.columns])
        if chance.empty:  # fewer than two null snapshots: no chance rate
            severity = severity.assign(null_rate=float("nan"), null_rate_max=float("nan"), n_null_snapshots=len(null.groupby([c for c in ("null", "null_seed") if c in null.columns])),
                                       null_rate_layer=float("nan"))
        else:
            overall = chance[chance["layer"] == -1].drop(columns="layer")
            by_layer = chance[chance["layer"] != -1][["metric", "layer", "null_rate"]].rename(
                columns={"null_rate": "null_rate_layer"})
            severity = severity.merge(overall, on="metric", how="left").merge(by_layer, on=["metric", "layer"], how="left")
        parts.append(severity.assign(combined_of="+".join(combine), stage=stage, new_task=new_task, old_task=old_task))
    return {"head_severity": pd.concat(parts, ignore_index=True)}


def _heads_trace(start: Any, now: Any, probe: Probe) -> tuple[dict[str, float], list]:
    js = head_disruption(start, now)
    return {"head_js": float(js[js["metric"] == "js_divergence"]["value"].mean())}, []


register(Measure(
    name="gradients", tables=("gradients", "gradient_null"), at_start=_gradients_at_start, trace=_gradients_trace,
    chart="gradients:matrix_alignment_chart", claim="interference", claim_table="gradients",
))
register(Measure(
    name="drift", tables=("drift",), nulls=True, trace=_drift_trace, chart="drift:cka_layer_chart",
    record=lambda p: hidden_states(p.model, p.examples, p.batch_size), report=_drift_report,
    claim="drift", claim_table="drift",
))
register(Measure(
    name="curvature", tables=("curvature",), report=_curvature_report, trace=_curvature_trace,
    record=lambda p: top_eigenvalue(p.model, p.examples, p.hessian_iters), chart="landscape:curvature_change",
    learning=_curvature_learning,
    claim="flattening", claim_table="curvature",
))
register(Measure(
    name="heads", tables=("heads", "head_severity"), nulls=True, derive=_head_severity, trace=_heads_trace,
    record=lambda p: head_activity(p.model, p.examples, batch_size=p.batch_size, ablation=p.head_ablation),
    report=_heads_report, chart="heads:report_heatmap", claim="heads", claim_table="head_severity",
))
