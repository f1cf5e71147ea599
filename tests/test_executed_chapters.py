"""``pytest --nbval-lax`` over the executed chapters (issue 4): every chapter notebook in ``_toc.yml``
runs again, cell by cell, in a fresh kernel, and no cell may raise.

The notebooks checked are the executed ones, ``_build/executed/chapters/<name>.ipynb`` (made by
papermill with the parameters injected, see :mod:`forgetting.book`); a chapter whose executed
notebook is missing or stale (its source, parameters or the package changed) is executed first,
as ``forgetting book`` would. nbval runs in a subprocess (its own pytest session, ``--nbval-lax``:
outputs are compared only in cells marked ``# NBVAL_CHECK_OUTPUT``; Altair charts and widgets carry
random ids) with the kernel environment of the book build. The kernel starts in the executed
notebook's folder, not the chapter's: chapters must not depend on their working directory (Colab
runs them in ``/content``). Plain pages (glossary, bibliography) have no code and are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from forgetting import book, paths
from forgetting.book.staging import _build_lock

ROOT = paths.REPO_ROOT
NOTEBOOK_CHAPTERS = [name for name in book.toc_chapters(ROOT) if book.chapter(name, ROOT).notebook]
CELL_TIMEOUT = 600  # seconds; a quick-profile cell takes seconds (a cold run cache: a few minutes)

pytestmark = pytest.mark.slow


def _fresh_executed(name: str) -> Path:
    """The executed notebook of chapter ``name``, executed first when missing or stale."""
    ch = book.chapter(name, ROOT)
    parameters = book.chapter_parameters("quick")
    if book.is_fresh(ch, parameters):
        return ch.executed
    with _build_lock(ROOT):  # a `forgetting book` running beside us writes the same files
        if not book.is_fresh(ch, parameters):  # (it may have executed the chapter while we waited)
            book.execute_chapter(ch, parameters)
    return ch.executed


def _nbval(notebook: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **book.KERNEL_ENV, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable, "-m", "pytest", "-q", "--color=no", "-p", "no:cacheprovider", "--nbval-lax",
        "--nbval-kernel-name", book.KERNEL, f"--nbval-cell-timeout={CELL_TIMEOUT}",
        "--rootdir", str(notebook.parent), str(notebook),
    ]
    return subprocess.run(cmd, cwd=notebook.parent, env=env, capture_output=True, text=True)


def test_there_are_notebook_chapters():
    assert NOTEBOOK_CHAPTERS[:1] == ["chapters/00_introduction"]


@pytest.mark.parametrize("name", NOTEBOOK_CHAPTERS, ids=lambda n: Path(n).name)
def test_executed_chapter_runs_under_nbval(name: str):
    executed = _fresh_executed(name)
    start = time.perf_counter()
    proc = _nbval(executed)
    seconds = time.perf_counter() - start
    report = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr).strip()  # kernel tracebacks are coloured
    assert proc.returncode == 0, (
        f"{name}: a cell failed when the executed notebook ran again under nbval ({seconds:.0f} s):\n"
        + report[-6000:]
    )
    print(f"{name}: nbval-lax passed in {seconds:.1f} s")
