"""Verified code equivalence (forgetting.reproduce, forgetting.runs.equivalence): a change to the training
code that reproduces the published runs bit for bit keeps their names; one that does not is refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from forgetting import paths, reproduce
from forgetting.cli import main
from forgetting.errors import ForgettingError
from forgetting.publish import publish_run
from forgetting.runs import equivalence
from forgetting.runs.cache import published_dir
from forgetting.runs.equivalence import read_equivalences, record_path, run_code_label
from forgetting.runs.fingerprint import code_fingerprint
from forgetting.spec import parse_spec
from forgetting.train import run_experiment
from tests.conftest import small_spec

SPECS = {"seed0": small_spec(eval={"every": 0}), "seed1": small_spec(eval={"every": 0}, seed=1),
         "lora": small_spec(eval={"every": 0}, finetune={"method": "lora", "lora": {"r": 2, "alpha": 4}})}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """The three specs' runs, trained once with the current code (in the module's own folder), named
    by the code's own fingerprint (not by the repository's equivalence record, which these tests replace)."""
    root = tmp_path_factory.mktemp("trained")
    specs = {key: parse_spec(spec) for key, spec in SPECS.items()}
    return {key: run_experiment(spec, root / f"{spec.name}-{spec.hash()}-{code_fingerprint()}", progress=False)
            for key, spec in specs.items()}


@pytest.fixture
def results(trained, tmp_path, monkeypatch):
    """A data folder whose results hold the three runs published (tables and weights.json only); its
    other folders (the embedded models, the specs) are the real ones."""
    data = tmp_path / "data"
    data.mkdir()
    for entry in paths.DATA_DIR.iterdir():
        if entry.name != "results":
            (data / entry.name).symlink_to(entry)
    monkeypatch.setattr(paths, "DATA_DIR", data)
    folder = data / "results"
    for run in trained.values():
        publish_run(run, folder)
    return folder


def _new_code(monkeypatch, fingerprint: str = "feedbeef") -> str:
    """Stand in for an edit of the training code: its fingerprint changes, what it computes does not."""
    for module in (reproduce, equivalence):
        monkeypatch.setattr(module, "code_fingerprint", lambda entries=None: fingerprint)
    return fingerprint


def test_one_run_per_family_is_chosen(results):
    chosen = reproduce.sample(reproduce.published_runs(results))
    assert sorted(run.spec.finetune.method for run in chosen) == ["full", "lora"]  # the two seeds: one family


def test_unchanged_code_is_verified_and_nothing_is_recorded(results):
    entry = reproduce.verify_published(progress=False)
    assert entry["current"] == entry["same_as"] == code_fingerprint()
    assert len(entry["verified"]) == 2 and not record_path().exists()


def test_a_change_that_reproduces_the_runs_keeps_their_names(results, monkeypatch):
    published = code_fingerprint()
    new = _new_code(monkeypatch)
    spec = parse_spec(SPECS["seed1"])
    assert run_code_label() == new and not published_dir(spec).is_dir()  # before: the runs are not found
    entry = reproduce.verify_published(progress=False)
    assert entry["same_as"] == published and entry["current"] == new
    assert read_equivalences()[new]["same_as"] == published
    assert {v["run"] for v in read_equivalences()[new]["verified"]} == {run.folder.name for run in reproduce.sample(
        reproduce.published_runs(results))}
    assert run_code_label() == published and published_dir(spec).is_dir()  # after: published, by the old name
    _new_code(monkeypatch, "0ther0ne")  # a further change has no entry: verified again or remade
    assert run_code_label() == "0ther0ne"


def test_every_run_can_be_verified(results, monkeypatch):
    _new_code(monkeypatch)
    assert len(reproduce.verify_published(every=True, progress=False)["verified"]) == 3


@pytest.mark.parametrize("damage", ["evals", "weights"])
def test_a_change_that_alters_the_numbers_is_refused_and_nothing_is_recorded(results, monkeypatch, damage):
    _new_code(monkeypatch)
    lora = next(p for p in results.iterdir() if json.loads((p / "manifest.json").read_text())["spec"]["finetune"]["method"] == "lora")
    if damage == "evals":  # what a change of the numbers looks like: the re-trained tables differ from these
        evals = pd.read_parquet(lora / "evals.parquet")
        evals.loc[0, "value"] += 1e-7
        evals.to_parquet(lora / "evals.parquet")
    else:
        record = json.loads((lora / "weights.json").read_text())
        label = sorted(record["snapshots"])[-1]
        record["snapshots"][label] = "0" * 64
        (lora / "weights.json").write_text(json.dumps(record))
    with pytest.raises(ForgettingError) as err:
        reproduce.verify_published(progress=False)
    message = str(err.value)
    assert f"the training code feedbeef does not reproduce the published code {code_fingerprint()}" in message
    assert lora.name in message and "make results" in message
    assert ("evals" in message) if damage == "evals" else ("snapshots differ" in message)
    assert not record_path().exists() and run_code_label() == "feedbeef"


def test_runs_published_by_two_codes_are_refused(results):
    one = next(results.iterdir())
    one.rename(one.with_name(one.name.rsplit("-", 1)[0] + "-00000000"))
    with pytest.raises(ForgettingError, match="come from 2 codes"):
        reproduce.verify_published(progress=False)


def test_the_command_line_verifies_and_records(results, monkeypatch, capsys):
    _new_code(monkeypatch)
    assert main(["verify", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"the training code feedbeef reproduces the published code {code_fingerprint()} bit for bit on 2 runs" in printed
    assert str(record_path()) in printed


def _publish_capability(results, capability: str) -> None:
    for record in results.glob("*/weights.json"):
        data = json.loads(record.read_text())
        data["machine"]["cpu_capability"] = capability
        record.write_text(json.dumps(data))


def test_the_published_kernels_are_pinned_where_they_differ_from_this_process(results, monkeypatch):
    import torch

    here = torch.backends.cpu.get_cpu_capability()
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    assert reproduce.kernel_pin() == {}  # published on this machine: nothing to pin
    _publish_capability(results, "DEFAULT" if here != "DEFAULT" else "AVX2")
    wanted = "default" if here != "DEFAULT" else "avx2"
    assert reproduce.kernel_pin() == {"ATEN_CPU_CAPABILITY": wanted}
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert reproduce.kernel_pin() == {}  # already pinned: the child process does not pin again


def test_the_command_line_verifies_in_a_pinned_process(results, monkeypatch, capfd):
    import torch

    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.setenv("FORGETTING_DATA", str(paths.DATA_DIR))  # the child process reads the same results
    capability = "DEFAULT" if torch.backends.cpu.get_cpu_capability() != "DEFAULT" else "AVX2"
    _publish_capability(results, capability)
    code = main(["verify", "--quiet"])
    out, err = capfd.readouterr()
    assert f"verifying in a process pinned to them (ATEN_CPU_CAPABILITY={capability.lower()})" in err
    # the child's verdict, whichever it is, comes from re-training under the pinned kernels
    assert (code == 0 and "reproduces" in out or "is the published code" in out) or (
        code == 1 and "does not reproduce the published code" in err)


def test_a_weights_mismatch_across_kernels_says_how_to_pin_them(results, trained):
    import torch

    from forgetting.runs.integrity import WeightsMismatch, check_pairing

    other = "DEFAULT" if torch.backends.cpu.get_cpu_capability() != "DEFAULT" else "AVX2"
    _publish_capability(results, other)
    published = results / trained["seed0"].name
    record = json.loads((published / "weights.json").read_text())
    record["snapshots"][sorted(record["snapshots"])[-1]] = "0" * 64
    (published / "weights.json").write_text(json.dumps(record))
    with pytest.raises(WeightsMismatch, match=f"start it with ATEN_CPU_CAPABILITY={other.lower()} to compute as"):
        check_pairing(published, trained["seed0"])
