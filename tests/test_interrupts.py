"""A real signal to a real process: ``forgetting run`` and ``forgetting analyze`` stopped by SIGINT
(Ctrl-C) or SIGTERM print one line saying where they stopped, exit 130 / 143 with no traceback, leave
a folder that checks clean, and the same command then gives results identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from forgetting.analysis import load_analysis
from forgetting.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, main
from forgetting.runs.checksums import damaged_files
from tests.conftest import small_spec

pytestmark = pytest.mark.slow

#: Long enough in each stage (and in each null the analysis trains) that a signal sent once the
#: first stage is on disk always lands in the middle of the work, even on a fast machine.
SPEC = small_spec(steps_per_task=120, eval={"every": 0, "batch_size": 64})


def _start(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "forgetting", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _signal_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 300) -> tuple[int, str]:
    """Send ``sig`` once ``ready()`` holds; ``(exit status, stderr)``."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "the work did not reach the point to interrupt"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _stages_done(run: Path) -> int:
    try:
        return json.loads((run / "state.json").read_text())["completed_stages"]
    except (OSError, ValueError):
        return 0


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


@pytest.fixture(scope="module")
def uninterrupted(spec_file, tmp_path_factory) -> Path:
    """The same spec run and analysed (with nulls) without a stop."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(["run", str(spec_file), "--out", str(out), "--quiet"]) == 0
    finished = out.parent / "finished"  # a copy before analysis, for the analyze test
    shutil.copytree(out, finished)
    assert main(["analyze", str(out), "--examples", "8", "--nulls", "--quiet"]) == 0
    return out


@pytest.mark.parametrize("sig, status, how", [(signal.SIGINT, EXIT_INTERRUPTED, "Ctrl-C"),
                                              (signal.SIGTERM, EXIT_TERMINATED, "SIGTERM")], ids=["sigint", "sigterm"])
def test_a_stopped_run_says_where_and_resumes_to_the_same_numbers(spec_file, uninterrupted, tmp_path, sig, status, how):
    out = tmp_path / "run"
    proc = _start(["run", str(spec_file), "--out", str(out), "--quiet"])
    code, err = _signal_when(proc, lambda: _stages_done(out) >= 1, sig)
    assert code == status, err
    assert "Traceback" not in err
    assert err.strip() == (f"forgetting run: stopped ({how}) during stage 2 of 2 (1 complete and kept). "
                           "What was finished is kept: run the same command again to resume.")
    assert damaged_files(out) == []  # what it recorded at the stop checks clean
    assert main(["run", str(spec_file), "--out", str(out), "--quiet"]) == 0
    for table in ("evals.parquet", "train_log.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / table), pd.read_parquet(uninterrupted / table))


def test_a_stopped_analysis_resumes_to_the_same_tables(uninterrupted, tmp_path):
    run = Path(shutil.copytree(uninterrupted.parent / "finished", tmp_path / "run"))
    argv = ["analyze", str(run), "--examples", "8", "--nulls", "--quiet"]
    proc = _start(argv)
    first_null = lambda: any((run / "nulls").glob("*/weights.safetensors"))  # noqa: E731 - one use
    code, err = _signal_when(proc, first_null, signal.SIGINT)
    assert code == EXIT_INTERRUPTED, err
    assert "Traceback" not in err and err.strip().startswith("forgetting analyze: stopped (Ctrl-C).")
    assert main(argv) == 0
    expected, resumed = load_analysis(uninterrupted), load_analysis(run)
    assert set(resumed) == set(expected)
    for name in expected:
        pd.testing.assert_frame_equal(resumed[name], expected[name], obj=name)
