"""One ledger row per claim: the rule's statistics, their intervals over seeds, and the verdict.

:func:`judge` takes a claim's rule (:mod:`forgetting.ledger.rules`), the measured tables and any
intervals computed elsewhere (the sweep's correlations, ``given``), computes every statistic the rule
names (:mod:`forgetting.ledger.effects`), applies the primary and clause tests and returns a
:class:`LedgerRow`. Nothing in a row is typed by hand: the verdict comes from :func:`~forgetting.ledger.rules.verdict`, the
text from :mod:`forgetting.ledger.prose`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from forgetting.ledger import prose
from forgetting.ledger import front_effects  # noqa: F401  (registers the front's statistics)
from forgetting.ledger.effects import STATISTICS, Tables
from forgetting.ledger.rules import OUTCOME_WORDS, ClaimRule, Rules, verdict
from forgetting.stats.intervals import Interval, clustered_interval


@dataclass(frozen=True)
class LedgerRow:
    """One claim: what the paper says, the primary statistic (mean and interval over ``units``), the
    clause outcomes, the verdict, and the hash of the rules that produced it."""

    id: str
    claim: str
    paper: str
    statistic: str
    measured: str
    value: float
    ci_low: float
    ci_high: float
    units: str
    primary: str
    clauses: str
    verdict: str
    rules: str


def statistic_interval(name: str, tables: Tables, given: dict[str, Interval] | None = None) -> Interval:
    """The interval of statistic ``name``: from ``given`` if there, else its per-unit values
    (:data:`~forgetting.ledger.effects.STATISTICS`) averaged within a seed, t over seeds."""
    if given and name in given:
        return given[name]
    if name not in STATISTICS:
        raise KeyError(f"unknown statistic {name!r}; known: {', '.join(sorted(STATISTICS))}")
    values = STATISTICS[name](tables).dropna()
    seeds = values.index.get_level_values("seed") if "seed" in (values.index.names or []) else values.index
    within = "pairs" if values.index.nlevels > 1 else "runs"
    return clustered_interval(values.to_numpy(), seeds.to_numpy(), unit="seeds", within=within)


def judge(rule: ClaimRule, rules: Rules, tables: Tables, given: dict[str, Interval] | None = None) -> LedgerRow:
    """The ledger row of ``rule`` (module docstring)."""
    primary = statistic_interval(rule.primary.statistic, tables, given)
    p = rule.primary.outcome(primary.low, primary.high)
    clause_parts, outcomes = [], []
    for test in rule.clauses:
        interval = statistic_interval(test.statistic, tables, given)
        outcome = test.outcome(interval.low, interval.high)
        outcomes.append(outcome)
        clause_parts.append(prose.clause_text(test, interval, OUTCOME_WORDS[outcome]))
    reported = [prose.report_text(name, statistic_interval(name, tables, given)) for name in rule.report]
    return LedgerRow(
        id=rule.id, claim=rule.claim, paper=rule.paper, statistic=rule.primary.statistic,
        measured="; ".join([prose.interval_text(rule.primary.label, primary), *reported]),
        value=primary.mean, ci_low=primary.low, ci_high=primary.high, units=prose.units_text(primary),
        primary=f"{rule.primary.describe()}: {OUTCOME_WORDS[p]}", clauses="; ".join(clause_parts),
        verdict=verdict(p, outcomes), rules=rules.digest,
    )


def ledger_table(rows: list[LedgerRow]) -> pd.DataFrame:
    """The rows as a DataFrame (one row per claim)."""
    return pd.DataFrame([asdict(r) for r in rows])
