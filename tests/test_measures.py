"""The measure registry: the built-in measures in the ledger's order, each naming a chart that draws the
published report tables and a rule of the ledger's rule file; registration refuses a table another measure owns."""

from __future__ import annotations

import altair as alt
import pytest

from forgetting import paths
from forgetting.ledger import load_rules
from forgetting.analysis import load_analysis
from forgetting.measures import Measure, measures, register, report_tables, unregister
from forgetting.viz.measures import chart_function, measure_chart


def test_the_built_in_measures_and_their_tables():
    assert [m.name for m in measures()][:4] == ["gradients", "drift", "curvature", "heads"]
    assert report_tables()[:6] == ("gradients", "gradient_null", "drift", "curvature", "heads", "head_severity")
    rule_ids = [r.id for r in load_rules().claims]
    for m in measures()[:4]:
        assert callable(chart_function(m.name))
        assert m.claim in rule_ids and m.claim_table in m.tables


def test_registering_a_table_another_measure_owns_is_refused():
    with pytest.raises(ValueError, match=r"table\(s\) drift already belong to drift"):
        register(Measure(name="other_drift", tables=("drift",)))
    unregister("other_drift")


def test_each_chart_draws_a_published_report():
    published = sorted((paths.DATA_DIR / "results").glob("full-*/analysis/manifest.json"))
    if not published:
        pytest.skip("no published analysis in data/results (make results)")
    tables = load_analysis(published[0].parent.parent)
    for m in measures()[:4]:
        chart = measure_chart(m.name, tables)
        assert isinstance(chart, alt.TopLevelMixin) and chart.to_dict()["$schema"]
