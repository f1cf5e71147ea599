"""Tasks made from Hugging Face datasets, named in a spec (``tasks:``), stored in the run folder
(``tasks.json``) and part of the run's name.

The whole pipeline runs on a dataset-made task through the CLI: ``run``, then the dataset folder is
removed, then ``show``, ``analyze`` and ``Run.open(...).tasks`` work from what the run stored.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from forgetting.cli import main
from forgetting.errors import DamagedFile, SpecError
from forgetting.runs import Run
from forgetting.runs.cache import run_name
from forgetting.runs.keys import run_key, shipped_weights
from forgetting.runs.run import build_tasks, stored_tasks
from forgetting.spec import parse_spec
from forgetting.tasks.records import examples_sha256, task_from_record, task_record
from tests.conftest import small_spec

LETTERS = list("abcdefgh")


def save_copy_dataset(folder: Path, n: int = 120, seed: int = 0, *, splits: bool = False) -> Path:
    """A copy task as a dataset with ``question`` / ``answer`` columns, saved with ``save_to_disk``
    (a ``DatasetDict`` with train and test splits when ``splits``)."""
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    seqs = [rng.choices(LETTERS, k=rng.choice([3, 4])) for _ in range(n)]
    rows = {"question": [f"Q : copy {' '.join(s)} A :" for s in seqs], "answer": [" ".join(s) for s in seqs]}
    ds = Dataset.from_dict(rows)
    if splits:
        ds = DatasetDict({"train": ds.select(range(n - 20)), "test": ds.select(range(n - 20, n))})
    ds.save_to_disk(str(folder))
    return folder


def dataset_spec(folder: Path, **entry) -> dict:
    spec = small_spec(name="dstest", sequence=["recall_city", "mycopy"])
    spec["tasks"] = {"mycopy": {"dataset": str(folder), "prompt_column": "question", "target_column": "answer",
                                **entry}}
    return spec


# -- the spec ------------------------------------------------------------------------------------


def test_a_spec_without_tasks_keeps_its_hash_and_its_published_run_name():
    spec = parse_spec(small_spec())
    assert spec.tasks == {}
    quick = yaml.safe_load(open(Path(__file__).parents[1] / "data" / "specs" / "quick.yaml"))
    assert parse_spec(quick).hash() == "841b4bba6986"  # the published quick run's name (data/results)
    assert run_key(parse_spec(quick)) == "841b4bba6986"  # the shipped tiny weights add nothing


def test_the_sequence_may_name_tasks_defined_in_the_spec(tmp_path):
    spec = parse_spec(dataset_spec(tmp_path / "ds", n_train=10))
    assert spec.task_list() == ["recall_city", "mycopy"] and spec.tasks["mycopy"].n_train == 10
    assert spec.hash() != parse_spec(dataset_spec(tmp_path / "ds", n_train=11)).hash()


def test_every_problem_of_a_tasks_entry_is_named(tmp_path):
    data = dataset_spec(tmp_path / "ds")
    data["tasks"]["mycopy"]["datset"] = "typo"
    data["tasks"]["mycopy"]["eval_fraction"] = 1.5
    data["sequence"] = ["recall_city", "mycopy", "other"]
    with pytest.raises(SpecError) as err:
        parse_spec(data)
    message = str(err.value)
    assert "tasks.mycopy.datset: unknown key; did you mean dataset?" in message
    assert "tasks.mycopy.eval_fraction" in message and "less than 1" in message


@pytest.mark.parametrize("name, expected", [
    ("copy", "'copy' already name registered tasks"),
    ("my-copy", "'my-copy' not allowed as task names"),
    ("9lives", "'9lives' not allowed as task names"),
])
def test_a_task_name_must_be_new_and_usable_in_a_folder_name(tmp_path, name, expected):
    data = small_spec(sequence=["recall_city", name])
    data["tasks"] = {name: {"dataset": str(tmp_path)}}
    with pytest.raises(SpecError, match=expected):
        parse_spec(data)


def test_an_unknown_task_lists_the_registered_and_the_defined_ones(tmp_path):
    data = dataset_spec(tmp_path / "ds")
    data["sequence"] = ["recall_city", "mycopi"]
    with pytest.raises(SpecError, match=r"unknown task\(s\) 'mycopi'; allowed: .*add, mycopy"):
        parse_spec(data)


# -- building the tasks --------------------------------------------------------------------------


def test_the_entry_caps_and_splits_the_rows_and_records_their_source(tmp_path):
    folder = save_copy_dataset(tmp_path / "ds", n=100)
    spec = parse_spec(dataset_spec(folder, n_train=30, n_eval=12))
    (city, _), (task, source) = build_tasks(spec)
    assert city.name == "recall_city" and task.name == "mycopy"
    assert (len(task.train), len(task.eval)) == (30, 12)
    assert {e.prompt for e in task.train}.isdisjoint({e.prompt for e in task.eval})
    assert all(e.prompt == f"Q : copy {e.target} A :" for e in task.train + task.eval)
    assert set(task.answer_vocab) <= set(LETTERS)
    assert source["kind"] == "dataset" and source["dataset"] == str(folder.resolve())
    assert build_tasks(spec)[1][0] == task  # seeded: the same examples every time


def test_a_saved_dataset_dict_is_read_by_its_splits(tmp_path):
    folder = save_copy_dataset(tmp_path / "ds", n=100, splits=True)
    spec = parse_spec(dataset_spec(folder, split="train", eval_split="test", n_eval=None))
    task = build_tasks(spec)[1][0]
    assert (len(task.train), len(task.eval)) == (32, 16)  # the spec's data caps (n_train 32, n_eval 16)
    with pytest.raises(SpecError, match=r"tasks.mycopy.split: 'validation' is not a split of .*; allowed: train, test"):
        build_tasks(parse_spec(dataset_spec(folder, split="validation")))


def test_max_length_drops_the_rows_with_more_tokens(tmp_path):
    from forgetting.models import load_model
    from forgetting.tasks.encoding import example_length

    _, tokenizer = load_model("tiny")
    folder = save_copy_dataset(tmp_path / "ds", n=100)
    data = dataset_spec(folder, max_length=13)
    data["data"] = {"n_train": None, "n_eval": 1000}  # no caps: every row that fits is kept
    spec = parse_spec(data)
    task, source = build_tasks(spec, tokenizer)[1]
    lengths = [example_length(tokenizer, e) for e in task.train + task.eval]
    assert max(lengths) <= 13 and source["dropped_too_long"] > 0
    assert len(task.train) + len(task.eval) == 100 - source["dropped_too_long"]
    # the length is what the encoder makes: [bos] prompt target eos
    from forgetting.tasks.encoding import encode_examples

    encoded = encode_examples(tokenizer, task.eval[:1])
    assert int(encoded.attention_mask.sum()) == lengths[len(task.train)]


def test_every_broken_dataset_task_is_named_at_once(tmp_path):
    folder = save_copy_dataset(tmp_path / "ds", n=50)
    data = dataset_spec(tmp_path / "missing")
    data["tasks"]["second"] = {"dataset": str(folder), "prompt_column": "q", "target_column": "answer"}
    data["sequence"] = ["mycopy", "second"]
    with pytest.raises(SpecError) as err:
        build_tasks(parse_spec(data))
    message = str(err.value)
    assert message.startswith("tasks: 2 problems: ")
    assert "tasks.mycopy.dataset: " in message and "neither a folder written by save_to_disk" in message
    assert "tasks.second.prompt_column: no column 'q'; the dataset has question, answer" in message


# -- the stored record ---------------------------------------------------------------------------


def test_a_task_record_round_trips_and_refuses_altered_examples():
    from forgetting.tasks import make_task

    task = make_task("sort", n_train=5, n_eval=3)
    record = json.loads(json.dumps(task_record(task)))
    assert task_from_record(record) == task and record["sha256"] == examples_sha256(task)
    record["train"][0][1] = "9 9 9"
    with pytest.raises(ValueError, match="do not hash to the recorded sha256"):
        task_from_record(record)


# -- the whole pipeline --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_run(tmp_path_factory) -> tuple[Path, Path]:
    """``(spec file, run folder)``: a run of recall_city then a dataset-made copy task, whose dataset
    folder is gone afterwards."""
    tmp = tmp_path_factory.mktemp("dsrun")
    folder = save_copy_dataset(tmp / "ds", n=80)
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(dataset_spec(folder)))
    assert main(["run", str(spec), "--out", str(tmp / "run"), "--quiet"]) == 0
    shutil.rmtree(folder)
    return spec, tmp / "run"


def test_the_run_folder_stores_its_tasks_and_their_sources(dataset_run):
    spec_file, run = dataset_run
    stored = stored_tasks(Run.open(run).layout)
    assert [t.name for t in stored] == ["recall_city", "mycopy"]
    manifest = json.loads((run / "manifest.json").read_text())
    sources = manifest["task_sources"]
    assert sources["recall_city"]["kind"] == "registered" and sources["mycopy"]["kind"] == "dataset"
    assert [sources[t.name]["sha256"] for t in stored] == [examples_sha256(t) for t in stored]
    assert (len(stored[1].train), len(stored[1].eval)) == (32, 16)


def test_show_analyze_and_the_api_work_without_the_dataset(dataset_run, capsys):
    _, run = dataset_run
    assert main(["show", str(run)]) == 0
    assert "mycopy" in capsys.readouterr().out
    assert main(["analyze", str(run), "--examples", "4", "--quiet"]) == 0
    opened = Run.open(run)
    assert [t.name for t in opened.tasks] == ["recall_city", "mycopy"]
    assert opened.task("mycopy").task == stored_tasks(opened.layout)[1]


def test_a_resumed_run_goes_on_with_the_examples_it_stored(dataset_run, tmp_path):
    """The dataset is gone, yet the run resumes (after losing its last stage) from ``tasks.json``."""
    spec_file, run = dataset_run
    copy = shutil.copytree(run, tmp_path / "copy", ignore=shutil.ignore_patterns("analysis", "nulls"))
    state = json.loads((copy / "state.json").read_text())
    state["completed_stages"], state["snapshots"] = 1, state["snapshots"][:2]
    (copy / "state.json").write_text(json.dumps(state))
    (copy / "checksums.json").unlink()  # the record would (rightly) call the edited state.json altered
    assert main(["run", str(spec_file), "--out", str(copy), "--quiet"]) == 0
    import pandas as pd

    for table in ("evals.parquet", "train_log.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(copy / table), pd.read_parquet(run / table))


def test_an_altered_task_record_is_refused(dataset_run, tmp_path):
    _, run = dataset_run
    copy = shutil.copytree(run, tmp_path / "copy")
    document = json.loads((copy / "tasks.json").read_text())
    document["tasks"][1]["eval"][0][1] = "z z z"
    (copy / "tasks.json").write_text(json.dumps(document))
    with pytest.raises(DamagedFile, match="tasks.json: is not a task record"):
        stored_tasks(Run.open(copy).layout)


# -- the run's name ------------------------------------------------------------------------------


def test_other_rows_under_the_same_folder_give_another_run_name(tmp_path):
    folder = save_copy_dataset(tmp_path / "ds", n=60, seed=0)
    spec = parse_spec(dataset_spec(folder))
    first = run_name(spec)
    assert run_name(spec) == first and run_key(spec) != spec.hash()
    shutil.rmtree(folder)
    save_copy_dataset(folder, n=60, seed=0)  # the same rows, saved again
    assert run_name(spec) == first
    shutil.rmtree(folder)
    save_copy_dataset(folder, n=60, seed=1)  # other rows
    assert run_name(spec) != first


def test_other_weights_in_the_same_model_folder_give_another_run_name(tmp_path):
    from tests._tiny_models import save_tiny

    folder = save_tiny("llama", tmp_path / "m", seed=0)
    spec = parse_spec(small_spec(model=str(folder)))
    first = run_name(spec)
    assert run_key(spec) != spec.hash()  # a local folder's weights are always part of the key
    save_tiny("llama", folder, seed=1)
    assert run_name(spec) != first


def test_the_shipped_weights_record_is_of_the_shipped_models():
    from forgetting.models import model_fingerprint

    recorded = shipped_weights()
    assert set(recorded) == {"tiny", "tiny-moe"}
    assert all(model_fingerprint(name)["weights_sha256"] == sha for name, sha in recorded.items())


def test_a_published_copy_of_registered_tasks_re_makes_them_and_checks_their_sha256(tmp_path):
    from forgetting.publish import publish_run

    assert main(["run", _spec_file(tmp_path, small_spec()), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    published = publish_run(tmp_path / "run", tmp_path / "results")
    assert not (published / "tasks.json").exists()  # registered tasks: the code re-makes them
    assert [t.name for t in Run.open(published).tasks] == ["recall_city", "update_city"]
    manifest = json.loads((published / "manifest.json").read_text())
    manifest["task_sources"]["update_city"]["sha256"] = "0" * 64  # as if the task code had changed since
    (published / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SpecError, match="update_city made again by this code differ from the examples"):
        Run.open(published).tasks


def test_a_published_copy_of_a_dataset_task_keeps_its_examples(dataset_run, tmp_path):
    from forgetting.publish import publish_run

    _, run = dataset_run
    published = publish_run(run, tmp_path / "results")
    assert (published / "tasks.json").is_file()
    assert stored_tasks(Run.open(published).layout) == stored_tasks(Run.open(run).layout)


def _spec_file(tmp_path, data) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)
