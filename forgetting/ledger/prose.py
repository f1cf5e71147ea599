"""Words computed from numbers: every judging word of the ledger and the chapters comes from here.

A sentence such as "the estimate is close" written for one set of numbers goes wrong for the next.
So the book never types such a word: it calls one of these functions, each a stated rule.

- :func:`sign_word`: from an interval, "above zero" / "below zero" / "not distinguishable from zero"
  (the interval excludes 0 or not);
- :func:`share_word`: a fraction in words: 0 "none", (0, 0.1] "a few", (0.1, 0.4] "a minority",
  (0.4, 0.6) "about half", [0.6, 1) "most", 1 "all";
- :func:`agreement_word`: an estimate against a reference: "within X %" when the relative error is at
  most ``tolerance`` (default 10 %), else "off by X %";
- :func:`verdict_sentence`: a ledger row's verdict as a sentence naming its rule's outcome;
- :func:`comparison_word`: two numbers compared with a margin: ``more`` when ``a - b > margin``,
  ``less`` when ``a - b < -margin``, ``same`` otherwise;
- :func:`count_text`: ``"k of n"``, with ``"all n"`` and ``"none of the n"`` at the ends.
"""

from __future__ import annotations

import math
from typing import Any

from forgetting.stats.intervals import Interval


def _fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def interval_text(label: str, interval: Interval, digits: int = 2) -> str:
    """``"<label>: mean [low, high]"``, or ``"<label>: mean (one value: no interval)"``."""
    if interval.defined:
        return f"{label}: {_fmt(interval.mean, digits)} [{_fmt(interval.low, digits)}, {_fmt(interval.high, digits)}]"
    return f"{label}: {_fmt(interval.mean, digits)} (one value: no interval)"


def units_text(interval: Interval) -> str:
    """What the interval is over, e.g. ``"5 seeds (15 pairs)"`` or ``"3 pairs of one seed"``."""
    if interval.unit.startswith(("pairs of one", "runs of one")) or interval.unit.endswith("(one value)"):
        return f"{interval.n} {interval.unit}"
    extra = f" ({interval.n_values} adjacent pairs)" if interval.n_values != interval.n else ""
    return f"{interval.n} {interval.unit}{extra}"


def clause_text(test: Any, interval: Interval, outcome: str) -> str:
    """A clause's outcome: ``"<label> (<test>): mean [low, high]: met"``."""
    return f"{interval_text(f'{test.label} ({test.describe()})', interval)}: {outcome}"


def report_text(name: str, interval: Interval) -> str:
    """A reported (not judged) statistic."""
    return interval_text(name.replace("_", " "), interval)


def sign_word(low: float, high: float, *, above: str = "above zero", below: str = "below zero",
              neither: str = "not distinguishable from zero") -> str:
    """``above`` if the interval ``[low, high]`` lies above 0, ``below`` if below, ``neither`` otherwise
    (also for an undefined interval)."""
    if math.isfinite(low) and low > 0:
        return above
    if math.isfinite(high) and high < 0:
        return below
    return neither


def share_word(fraction: float) -> str:
    """A fraction in [0, 1] in words (module docstring for the cut points)."""
    if not math.isfinite(fraction) or not 0 <= fraction <= 1:
        raise ValueError(f"a fraction in [0, 1], got {fraction}")
    if fraction == 0:
        return "none"
    if fraction == 1:
        return "all"
    if fraction <= 0.1:
        return "a few"
    if fraction <= 0.4:
        return "a minority"
    return "about half" if fraction < 0.6 else "most"


def agreement_word(estimate: float, reference: float, tolerance: float = 0.10) -> str:
    """``"within X % of"`` if ``|estimate - reference| / |reference| <= tolerance``, else ``"off by X % from"``."""
    if reference == 0 or not (math.isfinite(estimate) and math.isfinite(reference)):
        raise ValueError(f"needs a finite estimate and a non-zero reference, got {estimate}, {reference}")
    error = abs(estimate - reference) / abs(reference)
    return f"within {100 * error:.0f} % of" if error <= tolerance else f"off by {100 * error:.0f} % from"


def verdict_sentence(row: Any) -> str:
    """One sentence for a ledger row (a :class:`forgetting.ledger.judge.LedgerRow` or a table row):
    the claim, the verdict and the outcome of its primary test."""
    return f"{row.claim}: {row.verdict} (primary test {row.primary}; clauses: {row.clauses or 'none'})."


def comparison_word(a: float, b: float, margin: float = 0.0, *, more: str = "larger than", less: str = "smaller than",
                    same: str = "about the same as") -> str:
    """``more`` if ``a - b > margin``, ``less`` if ``a - b < -margin``, ``same`` otherwise (also when
    either number is not finite)."""
    if margin < 0:
        raise ValueError(f"a margin >= 0, got {margin}")
    if not (math.isfinite(a) and math.isfinite(b)):
        return same
    if a - b > margin:
        return more
    return less if a - b < -margin else same


def count_text(k: int, n: int) -> str:
    """``"k of n"``; ``"all n"`` when ``k == n`` (n > 1), ``"none of the n"`` when ``k == 0``."""
    if not 0 <= k <= n:
        raise ValueError(f"a count 0 <= k <= n, got {k} of {n}")
    if k == 0:
        return f"none of the {n}"
    if k == n and n > 1:
        return f"all {n}"
    return f"{k} of {n}"


def verdict_counts_text(verdicts: Any) -> str:
    """How many claims got each verdict, in the order of the four verdicts, e.g. ``"2 hold, 1 holds
    partly, 3 are not supported and 1 is contradicted"``; verdicts no claim got are left out."""
    verdicts = list(verdicts)
    forms = {"holds": ("holds", "hold"), "holds partly": ("holds partly", "hold partly"),
             "not supported": ("is not supported", "are not supported"),
             "contradicted": ("is contradicted", "are contradicted")}
    unknown = sorted(set(verdicts) - set(forms))
    if unknown:
        raise ValueError(f"unknown verdict(s) {unknown}; allowed: {', '.join(forms)}")
    parts = [f"{n} {forms[v][n != 1]}" for v in forms if (n := verdicts.count(v))]
    if not parts:
        return "no claim was judged"
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def not_judged_text(not_judged: dict[str, str]) -> str:
    """The sentence that says which claims the ledger could not judge and why (``{claim number: why}``),
    or that it judged every claim of the rule file."""
    if not not_judged:
        return "Every claim of the rule file is judged."
    numbers = list(not_judged)
    named = numbers[0] if len(numbers) == 1 else f"{', '.join(numbers[:-1])} and {numbers[-1]}"
    reasons = sorted(set(not_judged.values()))
    return (f"{'Claim' if len(numbers) == 1 else 'Claims'} {named} {'is' if len(numbers) == 1 else 'are'} not judged: "
            f"{'; '.join(reasons)}.")
