"""The layer x head explorer (forgetting.viz.explorer): its callbacks recompute what the mechanism
functions compute directly, its controls follow each other, bad choices are named, and it runs in a
real kernel (nbclient), where its Output widgets capture the redrawn charts."""

from __future__ import annotations

import json

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from forgetting.errors import SpecError
from forgetting.mechanisms.heads import head_activity, head_disruption
from forgetting.runs import Run
from forgetting.spec import parse_spec
from forgetting.train import run_experiment
from forgetting.viz.explorer import EXPLORER_MEASURES, HeadExplorer
from tests.conftest import small_spec

SEQUENCE = ["recall_city", "update_city", "sort"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    spec = parse_spec(small_spec(sequence=SEQUENCE))
    return run_experiment(spec, tmp_path_factory.mktemp("explorer") / "run", progress=False)


@pytest.fixture(scope="module")
def run(run_dir):
    return Run.open(run_dir)


def _direct(run, stage, old_task, n):
    examples = run.task(old_task).eval.select(slice(0, n))
    before = head_activity(run.model_at(stage - 1), examples, ablation=None)
    after = head_activity(run.model_at(stage), examples, ablation=None)
    return head_disruption(before, after)


def test_opens_on_stage_2_and_its_first_old_task(run):
    e = HeadExplorer(run, n_examples=4)
    assert (e.stage.value, e.old_task.value) == (2, "recall_city")
    assert list(e.old_task.options) == ["recall_city"]
    assert e.recorded == [(2, "recall_city")]
    pd.testing.assert_frame_equal(e.disruption, _direct(run, 2, "recall_city", 4))


def test_choosing_a_pair_recomputes_it_from_the_snapshots(run):
    e = HeadExplorer(run, n_examples=4)
    e.choose(stage=3, old_task="update_city", measure="entropy_change", layer=1, head=3, example=2)
    assert list(e.old_task.options) == SEQUENCE[:2]
    pd.testing.assert_frame_equal(e.disruption, _direct(run, 3, "update_city", 4))
    # the map shows the chosen measure of the chosen pair, and only those
    spec = e.head_map.to_dict()
    assert spec["title"]["text"].startswith("attention entropy change (bits): update_city after stage 3")
    rows = [r for data in spec["datasets"].values() for r in data]
    assert {r["metric"] for r in rows} == {"entropy_change"}
    table = e.head_table().set_index(["layer", "head"])["entropy_change"]
    for r in rows:
        assert r["value"] == pytest.approx(table[(r["layer"], r["head"])])
    # the pattern is the chosen head on the chosen example
    assert e.pattern.to_dict()["title"]["text"].endswith("(layer 1, head 3)")
    assert "example 2" in e.pattern.to_dict()["title"]["text"]


def test_a_pair_is_recorded_once_and_the_old_task_survives_a_stage_change(run):
    e = HeadExplorer(run, n_examples=4)
    e.choose(stage=3)
    assert e.old_task.value == "recall_city"  # still allowed at stage 3: kept
    e.choose(old_task="update_city")
    e.choose(stage=2)  # update_city is not before stage 2: the first allowed task
    assert e.old_task.value == "recall_city" and list(e.old_task.options) == ["recall_city"]
    assert e.recorded == [(2, "recall_city"), (3, "recall_city"), (3, "update_city")]
    pd.testing.assert_frame_equal(e.disruption, _direct(run, 2, "recall_city", 4))


def test_the_measure_changes_the_map_not_the_records(run):
    e = HeadExplorer(run, n_examples=4)
    before = e.disruption
    for measure in EXPLORER_MEASURES:
        e.choose(measure=measure)
        rows = [r for d in e.head_map.to_dict()["datasets"].values() for r in d]
        assert {r["metric"] for r in rows} == {measure}
    assert e.recorded == [(2, "recall_city")]
    assert e.disruption is before


def test_bad_choices_are_named_all_at_once(run):
    with pytest.raises(SpecError) as err:
        HeadExplorer(run, stage=7, measure="loudness", n_examples=0)
    message = str(err.value)
    for part in ("stage: 7 not allowed; allowed: 2..3", "measure: 'loudness'", "n_examples: 0"):
        assert part in message
    with pytest.raises(SpecError, match="allowed: recall_city"):
        HeadExplorer(run, stage=2, old_task="sort")
    with pytest.raises(SpecError, match="colour not allowed"):
        HeadExplorer(run).choose(colour="red")


KERNEL_CELLS = [
    "import json, os\n"
    "os.environ['FORGETTING_QUIET'] = '1'\n"
    "from IPython.display import display\n"
    "from forgetting.runs import Run\n"
    "from forgetting.viz.explorer import HeadExplorer\n"
    "e = HeadExplorer(Run.open({run_dir!r}), n_examples=4)\n"
    "display(e.widget)",
    "e.choose(stage=3, old_task='update_city', measure='js_divergence', layer=1, head=2)\n"
    "def mimes(out):\n"
    "    return [sorted(k for k, v in o.get('data', {{}}).items() if 'vega' in k or 'vegaEmbed' in str(v))\n"
    "            for o in out.outputs]\n"
    "print(json.dumps({{'map': mimes(e.map_out), 'pattern': mimes(e.pattern_out),\n"
    "                   'title': e.head_map.to_dict()['title']['text'], 'recorded': e.recorded}}))",
]


def test_callbacks_run_in_a_kernel_and_outputs_capture_the_charts(run_dir):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.format(run_dir=str(run_dir))) for c in KERNEL_CELLS])
    NotebookClient(nb, kernel_name="python3", timeout=300).execute()
    shown = nb.cells[0].outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in shown)
    report = json.loads(nb.cells[1].outputs[-1]["text"])
    assert report["title"].startswith("attention JS divergence (bits): update_city after stage 3")
    assert report["recorded"] == [[2, "recall_city"], [3, "recall_city"], [3, "update_city"]]
    # each Output widget holds exactly the chart last drawn (clear_output(wait=True) before each), drawn by
    # Vega-Embed: the offline renderer's HTML or a Vega-Lite bundle
    for name in ("map", "pattern"):
        assert len(report[name]) == 1 and report[name][0], report[name]
