"""The chart of each registered measure (:mod:`forgetting.measures`), looked up by the measure's name."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping

import pandas as pd

from forgetting.errors import SpecError
from forgetting.measures import Measure, measures


def _measure(name: str) -> Measure:
    found = {m.name: m for m in measures()}
    if name not in found or found[name].chart is None:
        with_chart = ", ".join(m.name for m in measures() if m.chart)
        raise SpecError("measure", f"{name!r} has no chart; allowed: {with_chart}")
    return found[name]


def chart_function(name: str) -> Callable:
    """The function of :mod:`forgetting.viz` that measure ``name`` names as its chart (imported by name:
    the registry sits below the viz modules, so it names them rather than importing them)."""
    module, function = _measure(name).chart.split(":")
    return getattr(importlib.import_module(f"forgetting.viz.{module}"), function)


def measure_chart(name: str, tables: Mapping[str, pd.DataFrame], **kwargs):
    """Measure ``name``'s chart of the report ``tables`` (:func:`forgetting.analysis.report.analysis_for`),
    called with the measure's tables in the order it lists them."""
    measure, fn = _measure(name), chart_function(name)
    missing = [t for t in measure.tables if t not in tables]
    if missing:
        raise SpecError("tables", f"missing {', '.join(missing)}; pass the tables of analysis_for")
    return fn(*[tables[t] for t in measure.tables], **kwargs)
