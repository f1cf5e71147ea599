"""One Colab notebook, run the way Colab would: a fresh virtual environment, torch from requirements/torch.txt,
the package installed (not editable) from a clone of the repository with Altair 5.5.0 (the lock pins 6.3.0)
and whatever else pip picks today, then every cell of ``notebooks/00_introduction.ipynb`` and of
``notebooks/01_measuring_forgetting.ipynb`` (its charts under Altair 5) executed by nbclient.

Chapter 00 is the cheapest (it loads the shipped embedded model and trains nothing; about 8 s in the book
build), so the test costs the installs plus a few seconds; chapter 01 draws its charts from the quick
run's tables shipped in ``data/results/`` (nothing trained), under Altair 5 and then Altair 6. The clone is of the committed tree, as Colab's
setup cell clones it; ``FORGETTING_DATA`` points at the clone's ``data/`` as that cell does, and
``FORGETTING_CACHE`` at an empty folder (chapter 00 takes nothing from this machine's caches).

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
#: Altair 6, as the lock pins it (requirements/lock.txt).
ALTAIR6 = "6.3.0"
CHECK = (
    "import json, sys\n"
    "import altair, torch, forgetting\n"
    "print(json.dumps({'altair': altair.__version__, 'torch': torch.__version__, 'prefix': sys.prefix,\n"
    "                  'forgetting': forgetting.__file__, 'n_parameters': globals().get('n_parameters')}))"
)
EXECUTE = (
    "import sys, nbformat, nbclient\n"
    "nb = nbformat.read(sys.argv[1], as_version=4)\n"
    "nbclient.NotebookClient(nb, kernel_name='python3', timeout=900,\n"
    "                        resources={'metadata': {'path': sys.argv[2]}}).execute()\n"
    "nbformat.write(nb, sys.argv[1])\n"
)


def _run(cmd: list[str], *, timeout: int, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def colab_env(tmp_path_factory):
    """``(clone, venv)``: a clone of the committed tree and a fresh venv with the package installed from it."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to clone the repository")
    tmp = tmp_path_factory.mktemp("colab")
    start = time.perf_counter()
    clone = tmp / "forgetting"
    proc = _run(["git", "clone", "--quiet", "--depth", "1", f"file://{paths.REPO_ROOT}", str(clone)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    venv = tmp / "venv"
    proc = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert proc.returncode == 0, proc.stderr
    python = str(venv / "bin" / "python")
    proc = _run([python, "-m", "pip", "install", "-q", "-r", str(clone / "requirements" / "torch.txt")], timeout=1200)
    if proc.returncode != 0:
        pytest.skip(f"pip could not install torch from the registry: {proc.stderr.strip()[-500:]}")
    proc = _run([python, "-m", "pip", "install", "-q", str(clone), f"altair=={ALTAIR}", "nbclient", "ipykernel"],
                timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"\nclean venv: clone and installs {time.perf_counter() - start:.0f} s")
    return clone, venv


def _execute(colab_env, notebook: str, cache: Path, *, altair: str = ALTAIR) -> tuple[nbformat.NotebookNode, dict]:
    """Run every cell of the clone's ``notebook`` (plus a report cell) in the venv's kernel, as Colab would."""
    clone, venv = colab_env
    assert (clone / notebook).is_file(), f"{notebook} is not committed"
    nb = nbformat.read(clone / notebook, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(CHECK))
    work = clone / "notebooks" / f"run-{Path(notebook).name}"
    nbformat.write(nb, work)
    env = {**os.environ, "FORGETTING_DATA": str(clone / "data"), "FORGETTING_CACHE": str(cache),
           "FORGETTING_QUIET": "1", "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": ""}
    env.pop("VIRTUAL_ENV", None)
    t0 = time.perf_counter()
    proc = _run([str(venv / "bin" / "python"), "-c", EXECUTE, str(work), str(work.parent)], timeout=1200, env=env,
                cwd=str(cache.parent))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    nb = nbformat.read(work, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors == []
    report = json.loads(nb.cells[-1].outputs[-1]["text"])
    assert report["altair"] == altair
    assert Path(report["prefix"]).resolve() == venv.resolve()
    assert Path(report["forgetting"]).resolve().is_relative_to(venv.resolve())  # installed, not the checkout
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert colab_render.raw_myst(prose) == []
    print(f"{notebook}: {time.perf_counter() - t0:.0f} s, torch {report['torch']}, altair {report['altair']}")
    return nb, report


@pytest.mark.slow
def test_introduction_runs_top_to_bottom_in_a_clean_venv_with_altair5(colab_env, tmp_path):
    cache = tmp_path / "cache"
    nb, report = _execute(colab_env, "notebooks/00_introduction.ipynb", cache)
    # the number the prose states (from the book build) is the one this fresh environment computes
    prose = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert f"The model has {report['n_parameters']:,} parameters" in prose


@pytest.mark.slow
@pytest.mark.parametrize("altair", [ALTAIR, ALTAIR6])
def test_measuring_forgetting_draws_its_charts_from_the_shipped_tables(colab_env, tmp_path, altair):
    """Chapter 01 on a fresh VM: an empty cache, the quick run's tables shipped in the clone's
    ``data/results/``; every chart is drawn from them and nothing is trained (the cache gets no run).
    Under Altair 5 (Colab's) and Altair 6 (the lock's), installed into the same venv in turn."""
    clone, venv = colab_env
    proc = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"altair=={altair}"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cache = tmp_path / "cache"
    nb, report = _execute(colab_env, "notebooks/01_measuring_forgetting.ipynb", cache, altair=altair)
    trained = sorted(p.name for p in (cache / "runs").iterdir()) if (cache / "runs").is_dir() else []
    assert trained == []  # read from the shipped tables, not re-trained
    charts = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if "text/html" in o.get("data", {}) and 'class="forgetting-vega"' in o["data"]["text/html"]]
    assert len(charts) >= 2  # the R heatmap and the forgetting curves
    major = altair.split(".")[0]
    assert all(f"vega-lite@{major}." in html for html in charts)  # the Vega-Lite of this Altair (forgetting.viz.offline)


LIBRARY = (
    "import json, time\n"
    "start = time.perf_counter()\n"
    "from forgetting import paths\n"
    "from forgetting.models import load_model\n"
    "from forgetting.models.embedded import embedded_dir\n"
    "model, tokenizer = load_model('tiny')\n"
    "seconds = time.perf_counter() - start\n"
    "from forgetting.spec import load_spec\n"
    "spec = load_spec(paths.SPECS_DIR / 'quick.yaml')\n"
    "print(json.dumps({'data_dir': str(paths.DATA_DIR), 'in_checkout': paths.IN_CHECKOUT,\n"
    "                  'model_dir': str(embedded_dir('tiny', build=False)), 'seconds': seconds,\n"
    "                  'n_parameters': sum(p.numel() for p in model.parameters()), 'spec': spec.name,\n"
    "                  'encodes': len(tokenizer('Paris').input_ids)}))\n"
)


@pytest.mark.slow
def test_installed_as_a_library_the_package_loads_its_shipped_model_from_another_folder(colab_env, tmp_path):
    """``pip install`` of the package, then ``load_model("tiny")`` from a folder outside the repository,
    no ``$FORGETTING_DATA`` and an empty cache: the model comes from the wheel's package data (nothing is
    pretrained into the cache) and the shipped specs load."""
    from forgetting.models import load_model

    _, venv = colab_env
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("FORGETTING_DATA", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(FORGETTING_CACHE=str(cache), FORGETTING_QUIET="1")
    proc = _run([str(venv / "bin" / "python"), "-c", LIBRARY], timeout=600, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["in_checkout"]
    assert Path(report["data_dir"]).resolve().is_relative_to(venv.resolve())  # the wheel's forgetting/_data
    assert Path(report["model_dir"]).resolve().is_relative_to(venv.resolve())
    assert not (cache / "models").exists()  # nothing pretrained
    model, _ = load_model("tiny")
    assert report["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert report["spec"] == "quick" and report["encodes"] >= 1
    print(f"installed package: load_model('tiny') in {report['seconds']:.1f} s")


DATASET_RUN = (
    "import random\n"
    "from datasets import Dataset\n"
    "rng = random.Random(0)\n"
    "seqs = [rng.choices('abcdefgh', k=rng.choice([3, 4])) for _ in range(80)]\n"
    "Dataset.from_dict({'question': [f\"Q : copy {' '.join(s)} A :\" for s in seqs],\n"
    "                   'answer': [' '.join(s) for s in seqs]}).save_to_disk('mycopy')\n"
    "open('spec.yaml', 'w').write('''name: mine\n"
    "tasks:\n"
    "  mycopy: {dataset: mycopy, prompt_column: question, target_column: answer, n_train: 32, n_eval: 16}\n"
    "sequence: [recall_city, mycopy]\n"
    "data: {n_train: 32, n_eval: 16}\n"
    "batch_size: 8\n"
    "steps_per_task: 6\n"
    "eval: {every: 3, batch_size: 64}\n"
    "''')\n"
)


@pytest.mark.slow
def test_installed_as_a_library_a_dataset_task_run_is_shown_and_analysed_without_its_dataset(colab_env, tmp_path):
    """Outside the repository, with the ``datasets`` extra installed: a spec with a task from a saved
    dataset runs, the dataset folder is removed, and ``forgetting show`` and ``forgetting analyze`` work
    from what the run folder stored (its ``tasks.json``)."""
    _, venv = colab_env
    proc = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "datasets"], timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"pip could not install datasets from the registry: {proc.stderr.strip()[-500:]}")
    env = {k: v for k, v in os.environ.items() if k not in ("FORGETTING_DATA", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(FORGETTING_CACHE=str(tmp_path / "cache"), FORGETTING_QUIET="1", HF_DATASETS_OFFLINE="1")
    work = tmp_path / "work"
    work.mkdir()
    cli = str(venv / "bin" / "forgetting")
    steps = [[str(venv / "bin" / "python"), "-c", DATASET_RUN], [cli, "run", "spec.yaml", "--out", "run", "--quiet"],
             ["rm", "-r", "mycopy"], [cli, "show", "run"], [cli, "analyze", "run", "--examples", "4", "--quiet"]]
    outputs = []
    for argv in steps:
        proc = _run(argv, timeout=900, env=env, cwd=str(work))
        assert proc.returncode == 0, (argv, (proc.stdout + proc.stderr)[-3000:])
        outputs.append(proc.stdout)
    assert "mycopy" in outputs[3] and "R[exact_match]" in outputs[3]
    assert (work / "run" / "analysis" / "manifest.json").is_file()
