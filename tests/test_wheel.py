"""The wheel carries what a user of the package needs without the repository: the embedded models
(weights, tokenizer, recipe), the shipped specs and the ledger rules, as package data under
``forgetting/_data/`` (in the checkout a link to ``data/``), and not the published results or the tests.

Built offline (``pip wheel --no-build-isolation``, setuptools from the project's venv, about 2 s). That the
installed wheel loads ``tiny`` from another folder without pretraining is tested in
``tests/test_colab_clean_env.py`` (it needs a fresh venv) and timed in ``benchmarks/bench_wheel_load.py``.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile

import pytest

from forgetting import paths
from forgetting.models.embedded import RECIPES


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           str(paths.REPO_ROOT), "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (built,) = out.glob("forgetting-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_carries_the_embedded_models_byte_for_byte(wheel):
    names = set(wheel.namelist())
    for model in RECIPES:
        shipped = paths.REPO_ROOT / "data" / "models" / model
        files = sorted(p.name for p in shipped.iterdir() if p.is_file())
        assert "model.safetensors" in files and "tokenizer.json" in files and "recipe.json" in files
        for name in files:
            member = f"forgetting/_data/models/{model}/{name}"
            assert member in names, f"{member} is not in the wheel"
            inside = hashlib.sha256(wheel.read(member)).hexdigest()
            assert inside == hashlib.sha256((shipped / name).read_bytes()).hexdigest(), member


def test_the_wheel_carries_the_specs_and_rules_but_no_results_or_tests(wheel):
    names = set(wheel.namelist())
    specs = sorted(p.name for p in (paths.REPO_ROOT / "data" / "specs").glob("*.yaml"))
    assert specs and {f"forgetting/_data/specs/{s}" for s in specs} <= names
    assert "forgetting/_data/ledger_rules.yaml" in names
    assert "forgetting/_data/models/weights.json" in names  # the shipped weights' hashes (forgetting.runs.keys)
    assert not [n for n in names if n.startswith("forgetting/_data/results/")]  # 16 MB of tables stay in the repository
    assert not [n for n in names if n.startswith("tests/")]
    assert "forgetting/cli.py" in names and "forgetting/py.typed" in names


def test_in_the_checkout_data_is_the_repository_folder():
    assert paths.IN_CHECKOUT
    assert (paths.PACKAGE_DIR / "_data").resolve() == (paths.REPO_ROOT / "data").resolve()
