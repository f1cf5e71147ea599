"""Weight checksums: a published copy records the sha256 of every snapshot its tables were computed from,
and tables are never paired with re-trained weights whose checksums differ (nor, for an older copy
without the record, whose evaluations differ)."""

from __future__ import annotations

import hashlib
import shutil
import warnings

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from forgetting.files import atomic_write_json, read_json
from forgetting.publish import publish_run, record_published_weights
from forgetting.runs import (
    RunLayout,
    UnverifiedWeights,
    WeightsMismatch,
    cache_twin,
    check_pairing,
    stored_or_compute,
)
from forgetting.runs.integrity import (
    compare_snapshots,
    machine,
    snapshot_checksums,
    weights_digest,
)
from forgetting.spec import parse_spec
from forgetting.train import run_experiment, with_weights
from tests.conftest import small_spec

LABELS = ["stage00-base", "stage01-recall_city", "stage01-recall_city-step000003", "stage02-update_city",
          "stage02-update_city-step000009"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny spec trained twice: ``run`` (where the tables are published from) and ``cache``, a
    cache folder whose ``runs/r`` is the same spec re-trained (the cache twin of the published copy)."""
    spec = parse_spec(small_spec(snapshots={"every": 3}))
    root = tmp_path_factory.mktemp("integrity")
    run = run_experiment(spec, root / "r", progress=False)
    run_experiment(spec, root / "cache" / "runs" / "r", progress=False)
    return run, root / "cache"


@pytest.fixture
def published(runs, tmp_path, monkeypatch):
    """The run published into a fresh results folder; the cache (with the re-trained twin) in use."""
    run, cache = runs
    monkeypatch.setenv("FORGETTING_CACHE", str(cache))
    return publish_run(run, tmp_path / "results")


def _tamper(folder, label: str) -> None:
    record = read_json(RunLayout(folder).weights_record)
    record["snapshots"][label] = "0" * 64
    atomic_write_json(RunLayout(folder).weights_record, record)


def test_checksums_are_the_sha256_of_each_snapshot_file(runs):
    run, _ = runs
    sums = snapshot_checksums(run)
    assert sorted(sums) == LABELS
    raw = (RunLayout(run).snapshot("stage01-recall_city") / "weights.safetensors").read_bytes()
    assert sums["stage01-recall_city"] == hashlib.sha256(raw).hexdigest()
    assert len(set(sums.values())) == 5  # training moves the weights between every two snapshots
    assert sorted(snapshot_checksums(run, end_of_stage_only=True)) == ["stage00-base", "stage01-recall_city",
                                                                       "stage02-update_city"]
    assert snapshot_checksums(run.parent / "nowhere") == {}


def test_publish_records_the_checksums_and_the_machine(runs, published):
    run, _ = runs
    record = read_json(published / "weights.json")
    assert record["snapshots"] == snapshot_checksums(run) and record["algorithm"] == "sha256"
    assert record["machine"]["torch"] == torch.__version__ and record["machine"]["torch_threads"] == 1
    assert record["machine"] == machine() and record["machine"]["cpu_capability"]
    manifest = read_json(run / "manifest.json")
    assert record["trained"]["torch_threads"] == manifest["torch_threads"] == 1
    assert record["trained"]["created_at"] == manifest["created_at"]
    # a published copy re-published keeps its record (it has no weights to take one from)
    again = publish_run(published, published.parent / "again")
    assert read_json(again / "weights.json") == record and not RunLayout(again).has_weights()


def test_re_training_on_this_machine_gives_the_published_weights(runs, published):
    _, cache = runs
    twin = with_weights(published)
    assert twin == cache / "runs" / "r" == cache_twin(published)
    assert check_pairing(published, twin) == twin
    diffs = compare_snapshots(runs[0], twin, end_of_stage_only=False)
    tensors = load_file(str(RunLayout(twin).snapshot("stage00-base") / "weights.safetensors"))
    assert sorted(set(diffs["label"])) == LABELS and len(diffs) == 5 * len(tensors)
    assert diffs["same_file"].all() and (diffs["max_abs_diff"] == 0).all() and (diffs["max_abs"] > 0).all()


def test_a_changed_checksum_is_refused_naming_the_snapshot_and_what_to_do(published):
    _tamper(published, "stage02-update_city")
    with pytest.raises(WeightsMismatch) as err:
        check_pairing(published, cache_twin(published))
    message = str(err.value)
    assert "1 of 5 snapshots differ (stage02-update_city)" in message
    assert "computed from other weights" in message and "make results" in message and "stored_only=True" in message
    assert "up to 0 nats" in message  # the evaluations agree: only the checksum was changed
    assert f"Published from: torch {torch.__version__}, trained with 1 thread(s), {machine()['cpu']}" in message


def test_a_missing_snapshot_counts_as_different(published):
    record = read_json(published / "weights.json")
    record["snapshots"]["stage03-sort"] = "f" * 64
    atomic_write_json(published / "weights.json", record)
    with pytest.raises(WeightsMismatch, match=r"1 of 6 snapshots differ \(stage03-sort\), 1 of them missing there"):
        check_pairing(published, cache_twin(published))


def _toy(calls: list) -> dict:
    """A product computed on the folder with the weights (like the analysis), key ``{"n": 1}``."""
    def compute(folder):
        calls.append(folder)
        atomic_write_json(folder / "toy.json", {"n": 1})

    return {"key": {"n": 1}, "manifest": lambda layout: layout.root / "toy.json",
            "outputs": lambda layout: [layout.root / "toy.json"], "compute": compute, "read": lambda folder: folder,
            "weights": with_weights}


def test_stored_or_compute_refuses_to_compute_or_read_from_other_weights(published):
    twin = cache_twin(published)
    (twin / "toy.json").unlink(missing_ok=True)
    calls: list = []
    assert stored_or_compute(published, **_toy(calls)) == twin and calls == [twin]  # matching: computed
    assert read_json(twin / "toy.json") == {"n": 1, "weights_sha256": weights_digest(twin)}  # what it read
    assert weights_digest(twin)["snapshots"] == read_json(published / "weights.json")["snapshots"]
    assert stored_or_compute(published, **_toy(calls)) == twin and len(calls) == 1  # and read back
    _tamper(published, "stage01-recall_city-step000003")
    with pytest.raises(WeightsMismatch, match=r"stage01-recall_city-step000003"):  # read back: refused
        stored_or_compute(published, **_toy(calls))
    (twin / "toy.json").unlink()
    with pytest.raises(WeightsMismatch, match=r"1 of 5 snapshots differ"):  # computed: refused
        stored_or_compute(published, **_toy(calls))
    assert len(calls) == 1 and not (twin / "toy.json").exists()


def test_an_older_copy_without_a_record_is_judged_by_its_evaluations(published):
    twin = cache_twin(published)
    (published / "weights.json").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_pairing(published, twin) == twin  # every evaluation equal bit for bit: allowed
    evals = pd.read_parquet(published / "evals.parquet")
    at = (evals["stage"] == 2) & evals["end_of_stage"] & (evals["metric"] == "loss")
    evals.loc[at, "value"] += 0.25
    evals.to_parquet(published / "evals.parquet", index=False)
    with pytest.raises(WeightsMismatch) as err:
        check_pairing(published, twin)
    assert "no weights.json" in str(err.value) and "after 1 of 3 stages" in str(err.value)
    assert "snapshots stage02-update_city differ" in str(err.value) and "up to 0.25 nats (stage 2)" in str(err.value)
    assert "trained with 1 thread(s), CPU not recorded" in str(err.value)  # from the copy's manifest
    (published / "evals.parquet").unlink()
    with pytest.warns(UnverifiedWeights, match="unchecked"):
        assert check_pairing(published, twin) == twin


def test_record_published_weights_adds_a_record_only_where_the_cache_has_the_same_run(runs, published):
    record = read_json(published / "weights.json")
    (published / "weights.json").unlink()
    other = shutil.copytree(published, published.parent / "other")  # its twin is not in the cache
    assert record_published_weights(published.parent) == {"other": "no weights in the cache", "r": "recorded"}
    assert read_json(published / "weights.json")["snapshots"] == record["snapshots"]
    assert record_published_weights(published.parent)["r"] == "has a record"
    (published / "weights.json").unlink()
    evals = pd.read_parquet(published / "evals.parquet")
    evals.loc[0, "value"] += 1e-7
    evals.to_parquet(published / "evals.parquet", index=False)
    assert record_published_weights(published.parent)["r"] == "cache evaluations differ"
    assert not (published / "weights.json").exists() and not (other / "weights.json").exists()


def test_weights_digest_covers_the_snapshots_and_the_nulls(runs, tmp_path):
    run, _ = runs
    assert weights_digest(run) == {"snapshots": snapshot_checksums(run)}
    copy = shutil.copytree(run, tmp_path / "r")
    shutil.copytree(RunLayout(copy).snapshot("stage01-recall_city"), RunLayout(copy).null("continue-x"))
    digest = weights_digest(copy)
    assert digest["nulls"] == {"continue-x": digest["snapshots"]["stage01-recall_city"]}


def test_compare_snapshots_gives_the_largest_change_of_each_tensor(runs, tmp_path):
    run, _ = runs
    copy = shutil.copytree(run, tmp_path / "r")
    file = RunLayout(copy).snapshot("stage02-update_city") / "weights.safetensors"
    state = load_file(str(file))
    name = min(state)
    state[name] = state[name].clone()
    state[name].view(-1)[0] += 0.5
    save_file(state, str(file))
    diffs = compare_snapshots(run, copy).set_index(["label", "tensor"])
    assert sorted(set(diffs.index.get_level_values("label"))) == ["stage00-base", "stage01-recall_city",
                                                                  "stage02-update_city"]
    changed = diffs.loc[("stage02-update_city", name)]
    assert not changed["same_file"] and changed["max_abs_diff"] == pytest.approx(0.5, abs=1e-6)
    assert (diffs.drop(("stage02-update_city", name))["max_abs_diff"] == 0).all()
    assert not diffs.loc["stage02-update_city"]["same_file"].any() and diffs.loc["stage00-base"]["same_file"].all()
