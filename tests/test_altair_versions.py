"""The charts work under Altair 5 (what Colab images ship) and Altair 6 (the lock).

``forgetting.viz.offline`` picks the ``altair.vegalite.v<major>`` display module of the installed Altair.
Under the lock's Altair the chart tests run as usual; here the same chart tests run again in a
subprocess with Altair 5.5.0 first on ``sys.path`` (installed with ``pip --target``, no other package
changes), so every chart function of ``forgetting/viz/*.py`` builds and serializes (``to_dict()``,
and vl-convert renders where those tests render) under both majors.
"""

from __future__ import annotations

import os
import subprocess
import sys

import altair as alt
import pytest

from forgetting import paths
from forgetting.viz import offline, r_matrix_heatmap
from tests.viz_fixtures import synthetic_evals

ALTAIR_5 = "5.5.0"
#: The tests that build (and serialize, most of them render) every chart of forgetting/viz/*.py:
#: charts.py (test_viz), gradients, heads, landscape, similarity, drift, dynamics and every measure's chart.
CHART_TESTS = [
    "tests/test_viz.py",
    "tests/test_gradients_chapter.py",
    "tests/test_heads_chapter.py",
    "tests/test_landscape_chapter.py",
    "tests/test_similarity_chapter.py",
    "tests/test_drift_chapter.py",
    "tests/test_dynamics_ledger.py",
    "tests/test_measures.py",
]
CHART_K = "chart or heatmap or spec or renders or threshold_curves"
#: test_viz's renderer test imports altair.vegalite.v6 itself; the test below checks the same under Altair 5.
V6_ONLY = "tests/test_viz.py::test_offline_renderer_calls_the_global_vega_embed"


def test_display_module_matches_the_installed_major():
    major = alt.SCHEMA_VERSION.lstrip("v").split(".")[0]
    display = offline.display_module()
    assert display.__name__ == f"altair.vegalite.v{major}.display"
    assert display.VEGALITE_VERSION.split(".")[0] == major
    html = offline.chart_html(r_matrix_heatmap(synthetic_evals()).to_dict())
    assert f"vega-lite@{display.VEGALITE_VERSION}" in html


@pytest.fixture(scope="module")
def altair5(tmp_path_factory):
    """A folder holding Altair 5.5.0 alone (``pip install --no-deps --target``); skipped without the registry."""
    target = tmp_path_factory.mktemp("altair5")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"altair=={ALTAIR_5}"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.skip(f"pip could not install altair=={ALTAIR_5}: {proc.stderr.strip()[-300:]}")
    return target


def _with_altair5(target, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(paths.REPO_ROOT)])}
    return subprocess.run([sys.executable, *args], check=False, cwd=paths.REPO_ROOT, env=env,
                          capture_output=True, text=True,
                          timeout=timeout)


def test_offline_renderer_under_altair5(altair5):
    code = (
        "import altair as alt\n"
        "from forgetting.viz import offline, r_matrix_heatmap\n"
        "from tests.viz_fixtures import synthetic_evals\n"
        "d = offline.display_module()\n"
        "html = offline.chart_html(r_matrix_heatmap(synthetic_evals()).to_dict())\n"
        "print(alt.__version__, d.__name__, d.VEGALITE_VERSION, f'vega-lite@{d.VEGALITE_VERSION}' in html)\n"
    )
    proc = _with_altair5(altair5, "-c", code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    version, module, vegalite, pinned = proc.stdout.split()
    assert (version, module, pinned) == (ALTAIR_5, "altair.vegalite.v5.display", "True")
    assert vegalite.startswith("5.")


@pytest.mark.slow
def test_every_chart_builds_and_serializes_under_altair5(altair5):
    proc = _with_altair5(altair5, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CHART_TESTS, "-k", CHART_K,
                         "--deselect", V6_ONLY)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "failed" not in tail and "error" not in tail.lower(), tail
    n_passed = int(tail.rsplit(" passed", 1)[0].split()[-1])
    assert n_passed >= 20, tail  # the chart tests ran, not a handful
