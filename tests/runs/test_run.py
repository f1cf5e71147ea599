"""The Run object: what a run folder holds, read back through one API; bad folders and snapshot names
get errors that say what exists; the cache-or-compute helper reuses, recomputes and refuses as documented."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from forgetting.errors import SpecError
from forgetting.files import atomic_write_json
from forgetting.runs import Run, RunLayout, cache_twin, snapshot_label, stored_or_compute
from forgetting.spec import parse_spec
from forgetting.train import run_experiment
from tests.conftest import small_spec


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    spec = parse_spec(small_spec(snapshots={"every": 3}))
    return Run.open(run_experiment(spec, tmp_path_factory.mktemp("run") / "r", progress=False))


def test_a_run_knows_its_spec_stages_and_tables(run):
    assert run.spec.task_list() == run.task_names == ["recall_city", "update_city"]
    assert run.seed == 0 and run.manifest["spec_hash"] == run.spec.hash()
    assert run.stages == [0, 1, 2] and run.has_weights
    assert set(run.evals["stage"]) == {0, 1, 2} and list(run.train_log["step"]) == list(range(1, 13))
    assert run.reference is None


def test_snapshots_are_listed_in_step_order_with_their_stage(run):
    infos = run.snapshots()
    assert [(s.label, s.stage, s.step, s.end_of_stage) for s in infos] == [
        ("stage00-base", 0, 0, True), ("stage01-recall_city-step000003", 1, 3, False), ("stage01-recall_city", 1, 6, True),
        ("stage02-update_city-step000009", 2, 9, False), ("stage02-update_city", 2, 12, True),
    ]
    assert [s.label for s in run.snapshots(stage=1)] == ["stage01-recall_city-step000003", "stage01-recall_city"]
    assert [f.name for f in run.stage_snapshots(2)] == ["stage01-recall_city", "stage02-update_city-step000009",
                                                         "stage02-update_city"]
    assert run.stage_label(0) == "stage00-base" and run.stage_label(2) == snapshot_label(2, "update_city")


def test_model_at_loads_the_snapshot_weights(run):
    state = run.snapshot(1)
    model = run.model_at(1)
    params = dict(model.named_parameters())
    assert state and all(torch.equal(params[n], t) for n, t in state.items())
    assert not model.training
    other = run.model_at("stage02-update_city")
    assert other is model  # one model object per Run, weights overwritten
    assert any(not torch.equal(dict(other.named_parameters())[n], t) for n, t in state.items())
    assert [t.name for t in run.tasks] == run.task_names and run.task("update_city").name == "update_city"


def test_errors_name_what_exists(run, tmp_path):
    with pytest.raises(SpecError, match="is not a run folder"):
        Run.open(tmp_path)
    with pytest.raises(SpecError, match=r"'stage09-x' not in .*have: stage00-base, stage01-recall_city-step000003"):
        run.snapshot("stage09-x")
    with pytest.raises(SpecError, match=r"stage: 7 not allowed; allowed: 0..2"):
        run.stage_label(7)
    with pytest.raises(SpecError, match=r"task: 'sort' not in this run; allowed: recall_city, update_city"):
        run.task("sort")


def _product(folder, key, calls):
    """A toy product: one JSON file with the key in it, like the analysis manifest."""
    manifest = lambda layout: layout.root / "toy.json"  # noqa: E731

    def compute(target):
        calls.append(target)
        atomic_write_json(target / "toy.json", {**key, "value": len(calls)})

    return dict(key=key, manifest=manifest, outputs=lambda layout: [manifest(layout)], compute=compute,
                read=lambda target: json.loads((target / "toy.json").read_text())["value"], weights=lambda d: d)


def test_stored_or_compute_reuses_a_matching_product_and_recomputes_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETTING_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "run"
    folder.mkdir()
    calls: list = []
    assert stored_or_compute(folder, **_product(folder, {"n": 1}, calls)) == 1
    assert stored_or_compute(folder, **_product(folder, {"n": 1}, calls)) == 1 and len(calls) == 1
    with pytest.raises(LookupError, match="no stored toy made by the current code"):
        stored_or_compute(folder, **_product(folder, {"n": 2}, calls), stored_only=True, what="toy")
    assert stored_or_compute(folder, **_product(folder, {"n": 2}, calls)) == 2 and len(calls) == 2
    # a product recomputed in the cache twin of a published copy is found there
    twin = cache_twin(folder)
    twin.mkdir(parents=True)
    atomic_write_json(twin / "toy.json", {"n": 3, "value": 30})
    assert stored_or_compute(folder, **_product(folder, {"n": 3}, calls)) == 30 and len(calls) == 2


def test_layout_is_the_only_spelling_of_the_folder(run):
    layout = RunLayout(run.folder)
    assert layout.manifest.is_file() and layout.state.is_file() and layout.evals.is_file()
    assert layout.snapshot("stage00-base").is_dir() and layout.has_weights()
    pd.testing.assert_frame_equal(pd.read_parquet(layout.evals), run.evals)
