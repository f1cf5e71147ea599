"""The rule file of the claims ledger (``data/ledger_rules.yaml``): loading, its hash, and the verdicts.

The file is the pre-registration: it names, per claim, the statistic of the primary test, the clause
tests and the statistics only reported, and every test's threshold. This module turns a test and an
interval into an outcome and the outcomes into one of four verdicts; it never looks at which claim it
judges. The tests (an interval ``[low, high]``):

- ``above: x``: met (+1) if ``low > x``, failed (-1) if ``high < x``, open (0) otherwise;
- ``below: x``: met if ``high < x``, failed if ``low > x``, open otherwise;
- ``within: [a, b]`` (equivalence): met if ``a <= low`` and ``high <= b``, failed if ``high < a`` or
  ``low > b``, open otherwise;
- ``differs: [a, b]``: failed if ``a <= low`` and ``high <= b`` (inside the band of no effect), else met
  if the interval excludes 0, open otherwise.

An undefined interval (one unit) is open. The verdict from the primary outcome ``p`` and the clause
outcomes: ``p = -1`` contradicted; ``p = 0`` not supported; ``p = +1`` and every clause met: holds;
otherwise holds partly.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.files import file_digest

#: The four verdicts a rule can return, from the strongest support to the data against the claim.
VERDICTS = ("holds", "holds partly", "not supported", "contradicted")
OUTCOME_WORDS = {1: "met", 0: "open", -1: "failed"}
#: The tests a rule's primary statistic or clause can apply to an interval.
TEST_KINDS = ("above", "below", "within", "differs")


def rules_path() -> Path:
    """The committed rule file, ``data/ledger_rules.yaml``."""
    return paths.DATA_DIR / "ledger_rules.yaml"


@dataclass(frozen=True)
class RuleTest:
    """One statistic and its test (``kind`` one of :data:`TEST_KINDS`, ``bound`` a number or a pair)."""

    statistic: str
    kind: str
    bound: Any
    label: str = ""

    def outcome(self, low: float, high: float) -> int:
        """+1 met, 0 open, -1 failed, for the interval ``[low, high]`` (module docstring)."""
        if not (math.isfinite(low) and math.isfinite(high)):
            return 0
        if self.kind == "above":
            return 1 if low > self.bound else -1 if high < self.bound else 0
        if self.kind == "below":
            return 1 if high < self.bound else -1 if low > self.bound else 0
        a, b = self.bound
        inside = a <= low and high <= b
        if self.kind == "within":
            return 1 if inside else -1 if (high < a or low > b) else 0
        return -1 if inside else 1 if (low > 0 or high < 0) else 0

    def describe(self) -> str:
        """The test in words, e.g. ``"above 0"`` or ``"within [0.27, 0.52]"``."""
        if self.kind in ("above", "below"):
            return f"{self.kind} {self.bound:g}"
        a, b = self.bound
        return f"within [{a:g}, {b:g}]" if self.kind == "within" else f"excludes 0 and leaves [{a:g}, {b:g}]"


@dataclass(frozen=True)
class ClaimRule:
    """The rule of one claim: its primary test, clause tests and reported statistics."""

    id: str
    claim: str
    paper: str
    primary: RuleTest
    clauses: tuple[RuleTest, ...]
    report: tuple[str, ...]


@dataclass(frozen=True)
class Rules:
    """The parsed rule file and its hash."""

    claims: tuple[ClaimRule, ...]
    alpha: float
    digest: str
    source: str

    def claim(self, claim_id: str) -> ClaimRule:
        """The rule of ``claim_id`` (``KeyError`` naming the known ids otherwise)."""
        for rule in self.claims:
            if rule.id == claim_id:
                return rule
        raise KeyError(f"no rule for claim {claim_id!r}; the rule file has {', '.join(r.id for r in self.claims)}")


def verdict(primary: int, clauses: list[int] | tuple[int, ...]) -> str:
    """One of :data:`VERDICTS` from the outcomes (module docstring)."""
    if primary < 0:
        return VERDICTS[3]
    if primary == 0:
        return VERDICTS[2]
    return VERDICTS[0] if all(c > 0 for c in clauses) else VERDICTS[1]


def _test(entry: Any, where: str, problems: list[str]) -> RuleTest | None:
    if not isinstance(entry, dict) or "statistic" not in entry or "test" not in entry:
        problems.append(f"{where}: needs 'statistic' and 'test'")
        return None
    test = entry["test"]
    if not isinstance(test, dict) or len(test) != 1 or next(iter(test)) not in TEST_KINDS:
        problems.append(f"{where}.test: one of {', '.join(TEST_KINDS)} with its bound, got {test!r}")
        return None
    kind, bound = next(iter(test.items()))
    pair = isinstance(bound, list) and len(bound) == 2 and all(isinstance(b, (int, float)) for b in bound)
    if kind in ("above", "below") and not isinstance(bound, (int, float)):
        problems.append(f"{where}.test.{kind}: a number, got {bound!r}")
        return None
    if kind in ("within", "differs") and not (pair and bound[0] <= bound[1]):
        problems.append(f"{where}.test.{kind}: [low, high] with low <= high, got {bound!r}")
        return None
    return RuleTest(str(entry["statistic"]), kind, tuple(bound) if pair else bound, str(entry.get("label", "")))


def load_rules(path: str | Path | None = None) -> Rules:
    """Parse and check the rule file (default :func:`rules_path`). Every problem is named in one
    :class:`forgetting.errors.SpecError`."""
    path = Path(path) if path is not None else rules_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SpecError("ledger rules", f"{path}: cannot be read ({error})") from error
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("claims"), list):
        raise SpecError("ledger rules", f"{path}: needs a list 'claims'")
    if list(data.get("outcomes", VERDICTS)) != list(VERDICTS):
        problems.append(f"outcomes: must be {list(VERDICTS)}")
    claims, seen = [], set()
    for i, entry in enumerate(data["claims"]):
        where = f"claims[{i}]"
        missing = [k for k in ("id", "claim", "paper", "primary") if not isinstance(entry, dict) or k not in entry]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        if entry["id"] in seen:
            problems.append(f"{where}: id {entry['id']!r} repeated")
        seen.add(entry["id"])
        primary = _test(entry["primary"], f"{where}.primary", problems)
        clauses = [_test(c, f"{where}.clauses[{j}]", problems) for j, c in enumerate(entry.get("clauses") or [])]
        if primary is not None and None not in clauses:
            claims.append(ClaimRule(str(entry["id"]), str(entry["claim"]), str(entry["paper"]), primary,
                                    tuple(clauses), tuple(map(str, entry.get("report") or ()))))
    if problems:
        raise SpecError("ledger rules", f"{path}: " + "; ".join(problems))
    return Rules(tuple(claims), float(data.get("alpha", 0.05)), file_digest(path), str(path))


def uncommitted_rules(path: str | Path | None = None) -> str | None:
    """Why the rule file may not be used to publish a ledger (``None`` when it may): it must be
    tracked by git and equal to its committed version (``git diff HEAD`` empty)."""
    path = Path(path) if path is not None else rules_path()
    try:
        tracked = subprocess.run(["git", "ls-files", "--error-unmatch", path.name], cwd=path.parent,
                                 capture_output=True, text=True, check=False)
        changed = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path.name], cwd=path.parent,
                                 capture_output=True, text=True, check=False)
    except OSError as error:
        return f"git is not available to check {path} ({error})"
    if tracked.returncode != 0:
        return f"{path} is not committed"
    if changed.returncode != 0:
        return f"{path} differs from its committed version (commit the rules before the results they judge)"
    return None
