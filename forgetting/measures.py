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
- ``chart``: ``"module:function"`` in :mod:`forgetting.viz` that draws the measure's report tables,
  called with them in the order of ``tables`` (:func:`forgetting.viz.measures.measure_chart`); ``claim``: the :mod:`forgetting.ledger` row function that
  judges the paper's claim from ``claim_table``.

The four built-in measures are registered at the bottom of this module, in the order the ledger lists
their claims.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from forgetting.mechanisms.drift import cka_by_layer, intermediate_layers
from forgetting.mechanisms.gradients import gradient_alignment, split_half_null, task_alignment, task_gradients
from forgetting.mechanisms.heads import COMBINED_METRICS, head_activity, head_disruption, severe_heads
from forgetting.mechanisms.probes import hidden_states, top_eigenvalue
from forgetting.models.geometry import attention_geometry
from forgetting.tasks.encoding import EncodedExamples

Tables = dict[str, pd.DataFrame]


@dataclass(frozen=True)
class Probe:
    """The model at one snapshot and the examples a measure reads: the old task's first ``n_examples``
    eval examples (``examples``), the new task's train examples (``new_train``, all of them) and their
    first ``n_examples`` (``new_examples``)."""

    model: Any
    examples: EncodedExamples
    new_train: EncodedExamples
    new_examples: EncodedExamples
    batch_size: int = 64
    hessian_iters: int = 20
    n_examples: int = 60


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
    chart: str | None = None
    claim: str | Callable[[pd.DataFrame, list[str] | None], Any] | None = None
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
    model, examples, bs = probe.model, probe.examples, probe.batch_size
    return {
        "gradients": task_alignment(model, examples, probe.new_train, batch_size=bs,
                                    max_examples=probe.n_examples).assign(**keys),
        "gradient_null": split_half_null(model, examples, batch_size=bs).assign(**keys),
    }


def _gradients_trace(start: Any, now: Any, probe: Probe) -> tuple[dict[str, float], list]:
    g_old = task_gradients(probe.model, probe.examples, batch_size=probe.batch_size)
    g_new = task_gradients(probe.model, probe.new_examples, batch_size=probe.batch_size)
    alignment = gradient_alignment(g_old, g_new, attention_geometry(probe.model), heads=False)
    whole = alignment[alignment["unit"] == "model"].set_index("group")["cosine"]
    return {"grad_cosine": float(whole["all"]), "grad_cosine_attention": float(whole["attention"])}, []


def _drift_report(before: Any, after: Any, keys: dict) -> Tables:
    (hidden_before, mask), (hidden_after, _) = before, after
    return {"drift": cka_by_layer(hidden_before, hidden_after, mask, readout="mean").assign(**keys)}


def _drift_trace(start: Any, now: Any, probe: Probe) -> tuple[dict[str, float], list]:
    (hidden_start, mask), (hidden, _) = start, now
    cka = cka_by_layer(hidden_start, hidden, mask, readout="mean")
    inner = cka[cka["layer"].isin(intermediate_layers(range(len(hidden))))]["cka"]
    return {"drift": 1.0 - float(inner.mean())}, [("cka", int(r.layer), float(r.cka)) for r in cka.itertuples()]


def _curvature_report(before: dict, after: dict, keys: dict) -> Tables:
    return {"curvature": pd.DataFrame([{**keys, "snapshot": "before", **before}, {**keys, "snapshot": "after", **after}])}


def _curvature_trace(start: dict, now: dict, probe: Probe) -> tuple[dict[str, float], list]:
    return {"old_loss": now["loss"], "forgetting": now["loss"] - start["loss"], "lambda_max": now["lambda_max"],
            "lambda_max_per_loss": now["lambda_max_per_loss"]}, []


def _heads_report(before: Any, after: Any, keys: dict) -> Tables:
    return {"heads": head_disruption(before, after).assign(**keys)}


def _head_severity(tables: Tables) -> Tables:
    """:func:`severe_heads` for each (stage, old task): observed rows (``null == ""``) against the null rows;
    an empty table without nulls."""
    heads = tables["heads"]
    if "null" not in heads or (heads["null"] == "").all():
        return {"head_severity": pd.DataFrame()}
    parts = []
    for (stage, new_task, old_task), group in heads.groupby(["stage", "new_task", "old_task"], sort=True):
        observed = group[group["null"] == ""].drop(columns=["stage", "new_task", "old_task", "null"])
        null = group[group["null"] != ""].drop(columns=["stage", "new_task", "old_task"])
        combine = [m for m in COMBINED_METRICS if m in set(observed["metric"])]
        parts.append(severe_heads(observed, null, combine=combine).assign(stage=stage, new_task=new_task, old_task=old_task))
    return {"head_severity": pd.concat(parts, ignore_index=True)}


def _heads_trace(start: Any, now: Any, probe: Probe) -> tuple[dict[str, float], list]:
    js = head_disruption(start, now)
    return {"head_js": float(js[js["metric"] == "js_divergence"]["value"].mean())}, []


register(Measure(
    name="gradients", tables=("gradients", "gradient_null"), at_start=_gradients_at_start, trace=_gradients_trace,
    chart="gradients:matrix_alignment_chart", claim="interference_row", claim_table="gradients",
))
register(Measure(
    name="drift", tables=("drift",), nulls=True, trace=_drift_trace, chart="drift:cka_layer_chart",
    record=lambda p: hidden_states(p.model, p.examples, p.batch_size), report=_drift_report,
    claim="drift_row", claim_table="drift",
))
register(Measure(
    name="curvature", tables=("curvature",), report=_curvature_report, trace=_curvature_trace,
    record=lambda p: top_eigenvalue(p.model, p.examples, p.hessian_iters), chart="landscape:curvature_change",
    claim="flattening_row", claim_table="curvature",
))
register(Measure(
    name="heads", tables=("heads", "head_severity"), nulls=True, derive=_head_severity, trace=_heads_trace,
    record=lambda p: head_activity(p.model, p.examples, batch_size=p.batch_size, ablation=None),
    report=_heads_report, chart="heads:report_heatmap", claim="heads_row", claim_table="head_severity",
))
