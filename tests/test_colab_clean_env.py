"""One Colab notebook, run the way Colab would: a fresh virtual environment, torch from requirements/torch.txt,
the package installed (not editable) from a clone of the repository with Altair 5.5.0 (the lock pins 6.3.0)
and whatever else pip picks today, then every cell of ``notebooks/00_introduction.ipynb`` executed by nbclient.

Chapter 00 is the cheapest (it loads the shipped embedded model and trains nothing; about 8 s in the book
build), so the test costs the installs plus a few seconds. The clone is of the committed tree, as Colab's
setup cell clones it; ``FORGETTING_DATA`` points at the clone's ``data/`` as that cell does, and
``FORGETTING_CACHE`` at an empty folder, so nothing comes from this machine's caches.

Slow (installs torch and the dependencies); skipped when pip cannot reach the registry.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from forgetting import paths
from forgetting.book import colab_render

ALTAIR = "5.5.0"
NOTEBOOK = "notebooks/00_introduction.ipynb"
CHECK = (
    "import json, sys\n"
    "import altair, torch, forgetting\n"
    "print(json.dumps({'altair': altair.__version__, 'torch': torch.__version__, 'prefix': sys.prefix,\n"
    "                  'forgetting': forgetting.__file__, 'n_parameters': int(n_parameters)}))"
)


def _run(cmd: list[str], *, timeout: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.mark.slow
def test_rendered_notebook_runs_top_to_bottom_in_a_clean_venv_with_altair5(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is needed to clone the repository")
    start = time.perf_counter()
    clone = tmp_path / "forgetting"
    proc = _run(["git", "clone", "--quiet", "--depth", "1", f"file://{paths.REPO_ROOT}", str(clone)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (clone / NOTEBOOK).is_file(), f"{NOTEBOOK} is not committed"

    venv = tmp_path / "venv"
    proc = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    python = str(venv / "bin" / "python")
    proc = _run([python, "-m", "pip", "install", "-q", "-r", str(clone / "requirements" / "torch.txt")], timeout=1200)
    if proc.returncode != 0:
        pytest.skip(f"pip could not install torch from the registry: {proc.stderr.strip()[-500:]}")
    proc = _run([python, "-m", "pip", "install", "-q", str(clone), f"altair=={ALTAIR}", "nbclient", "ipykernel"],
                timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    installed = time.perf_counter() - start

    # every cell of the rendered notebook, plus one that reports what it ran on
    nb = nbformat.read(clone / NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    work = clone / "notebooks" / "run.ipynb"
    nbformat.write(nb, work)
    env = {**os.environ, "FORGETTING_DATA": str(clone / "data"), "FORGETTING_CACHE": str(tmp_path / "cache"),
           "FORGETTING_QUIET": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    execute = (
        "import sys, nbformat, nbclient\n"
        "nb = nbformat.read(sys.argv[1], as_version=4)\n"
        "nbclient.NotebookClient(nb, kernel_name='python3', timeout=900,\n"
        "                        resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
        "nbformat.write(nb, sys.argv[1])\n"
    )
    t0 = time.perf_counter()
    proc = _run([python, "-c", execute, str(work), str(clone / "notebooks")], timeout=1200, env=env,
                cwd=str(tmp_path))
    executed = time.perf_counter() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    nb = nbformat.read(work, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    report = json.loads(nb.cells[-1].outputs[-1]["text"])
    assert report["altair"] == ALTAIR
    assert Path(report["prefix"]).resolve() == venv.resolve()
    assert Path(report["forgetting"]).resolve().is_relative_to(venv.resolve())  # installed, not the checkout
    # the number the prose states (from the book build) is the one this fresh environment computes
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert f"The model has {report['n_parameters']:,} parameters" in prose
    assert colab_render.raw_myst(prose) == []
    print(f"clean venv: installs {installed:.0f} s, notebook {executed:.0f} s, torch {report['torch']}, "
          f"altair {report['altair']}")
