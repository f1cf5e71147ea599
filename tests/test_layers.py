"""The package's shape, checked: the import-linter layers contract holds (no cycles, no upward imports),
function-local imports of the package say why, only forgetting.runs spells the run-folder layout, and no
module grows past the size a reader can hold."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from forgetting import paths

PACKAGE = paths.PACKAGE_DIR
MAX_LINES = 500
#: Strings that spell the inside of a run folder (forgetting/runs/layout.py and snapshots.py own them).
LAYOUT_STRINGS = ('/ "snapshots"', '/ "nulls"', '/ "analysis"', '"state.json"', '"meta.json"', '"manifest.json"',
                  '"evals.parquet"', '"train_log.parquet"', '"reference.parquet"', '"weights.safetensors"',
                  '"dynamics.parquet"', '"weights.json"', '"causal.parquet"', 'alignment_n', "stage00-base",
                  'f"stage01-')


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_layers_contract_holds():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (it is in the dev extra)")
    out = subprocess.run([exe, "--config", str(paths.REPO_ROOT / "pyproject.toml")], capture_output=True, text=True,
                         cwd=paths.REPO_ROOT)
    assert out.returncode == 0, out.stdout[-4000:]
    assert "0 broken" in out.stdout


def test_function_local_imports_of_the_package_say_why():
    unexplained = []
    for path in _modules():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("forgetting") or (
                            isinstance(inner, ast.Import) and any(a.name.startswith("forgetting") for a in inner.names)):
                        if "#" not in lines[inner.lineno - 1]:
                            unexplained.append(f"{path.relative_to(PACKAGE)}:{inner.lineno}: {lines[inner.lineno - 1].strip()}")
    assert not unexplained, "function-local imports without a comment saying why:\n" + "\n".join(sorted(set(unexplained)))


def test_only_forgetting_runs_spells_the_run_folder_layout():
    found = []
    places = [p for p in _modules() if PACKAGE / "runs" not in p.parents]
    places += sorted((paths.REPO_ROOT / "chapters").glob("*.md"))
    for path in places:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0] if path.suffix == ".py" else line
            if any(s in code for s in LAYOUT_STRINGS) and not re.match(r"\s*(\"\"\"|``|[-*] |:)", code):
                found.append(f"{path.relative_to(paths.REPO_ROOT)}:{n}: {line.strip()}")
    assert not found, "run-folder layout spelled outside forgetting/runs:\n" + "\n".join(found)


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_book_cites_nothing_its_readers_do_not_have():
    """Readers get the chapters and the API page (the package's docstrings), not the team's notes."""
    places = [*_modules(), *sorted((paths.REPO_ROOT / "chapters").glob("*.md"))]
    cited = [f"{p.relative_to(paths.REPO_ROOT)}:{n}" for p in places
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if "SCIENCE.md" in line or "../shared" in line]
    assert not cited, "cites the team's notes: " + ", ".join(cited)
