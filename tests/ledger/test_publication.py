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
