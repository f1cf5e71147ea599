"""A ledger is published only under rules committed before it: the git check, and `forgetting results`
refusing before any work when the rule file is not its committed version."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from forgetting import cli
from forgetting.ledger import rules as rules_module
from forgetting.ledger.rules import rules_path, uncommitted_rules

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_uncommitted_rules_names_why(tmp_path):
    rules = tmp_path / "ledger_rules.yaml"
    rules.write_bytes(rules_path().read_bytes())
    _git(tmp_path, "init", "-q")
    assert "not committed" in uncommitted_rules(rules)
    _git(tmp_path, "add", rules.name)
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "rules")
    assert uncommitted_rules(rules) is None
    rules.write_text(rules.read_text() + "\n# a rule changed after the fact\n")
    assert "differs from its committed version" in uncommitted_rules(rules)


def test_results_refuses_before_any_work_under_uncommitted_rules(monkeypatch, capsys):
    from forgetting import publish

    monkeypatch.setattr(rules_module, "uncommitted_rules", lambda path=None: "data/ledger_rules.yaml is not committed")
    monkeypatch.setattr(publish, "make_results", lambda *a, **k: pytest.fail("work started under uncommitted rules"))
    assert cli.main(["results", "--profile", "full", "--quiet"]) == cli.EXIT_BAD_INPUT
    assert "not committed" in capsys.readouterr().err


def test_publish_ledger_writes_the_ledger_its_sweep_tests_and_the_rule_hash(monkeypatch, tmp_path):
    import json

    import pandas as pd

    from forgetting.ledger import claims

    tests = pd.DataFrame({"claim": ["5"], "r": [-0.2]})
    tests.attrs["warnings"] = ["a bootstrap warning"]
    table = pd.DataFrame({"id": ["drift"], "verdict": ["holds"], "rules": ["abc"]})
    table.attrs["sweep_tests"] = tests  # a frame in attrs: parquet cannot keep it as metadata
    monkeypatch.setattr(claims, "uncommitted_rules", lambda: None)
    monkeypatch.setattr(claims, "claims_for", lambda *a, **k: table)
    monkeypatch.setattr(claims, "ledger_path", lambda profile: tmp_path / f"ledger-{profile}.parquet")
    target = claims.publish_ledger("full", progress=False)
    assert pd.read_parquet(target).equals(table.assign())
    assert pd.read_parquet(tmp_path / "ledger-full-sweep-tests.parquet")["r"].tolist() == [-0.2]
    record = json.loads(target.with_suffix(".json").read_text())
    assert record["rules"] == record["ledger_rules"] == rules_module.load_rules().digest
    assert record["sweep_warnings"] == ["a bootstrap warning"]


def test_publish_ledger_refuses_under_uncommitted_rules(monkeypatch):
    from forgetting.ledger import claims

    monkeypatch.setattr(claims, "uncommitted_rules", lambda: "data/ledger_rules.yaml is not committed")
    monkeypatch.setattr(claims, "claims_for", lambda *a, **k: pytest.fail("judged under uncommitted rules"))
    with pytest.raises(RuntimeError, match="not committed"):
        claims.publish_ledger("full")
