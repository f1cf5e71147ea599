"""The damaged-store table: every file type of a run folder (weights, snapshot metadata, tables, JSON),
each missing, truncated or altered, under every command that reads the folder (``show``, ``analyze``,
``run`` resuming). Each case must exit 2 with one message naming the damaged file, print no traceback,
and write or change nothing. The check is the run's ``checksums.json`` (forgetting.runs.checksums),
which ``forgetting run`` writes when it ends.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from forgetting.analysis import analysis_for
from forgetting.cli import main
from forgetting.errors import DamagedFile
from forgetting.runs.checksums import CHECKSUMS, OUTPUTS, damaged_files, read_record, run_files
from tests.conftest import small_spec

FILES = ("snapshots/{first}/weights.safetensors", "snapshots/{first}/meta.json", "evals.parquet",
         "train_log.parquet", "state.json", "manifest.json", "tasks.json")
DAMAGES = ("missing", "truncated", "altered")
COMMANDS = ("show", "analyze", "run")


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory) -> tuple[Path, Path]:
    """``(spec file, run folder)`` of a finished two-stage run written by ``forgetting run``."""
    tmp = tmp_path_factory.mktemp("store")
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump(small_spec()))
    assert main(["run", str(spec), "--out", str(tmp / "run"), "--quiet"]) == 0
    return spec, tmp / "run"


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # one byte flipped in the middle: same size, other bytes
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x5A]) + data[middle + 1:])


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file()}


def _argv(command: str, spec: Path, run: Path) -> list[str]:
    return {"show": ["show", str(run)],
            "analyze": ["analyze", str(run), "--examples", "4", "--quiet"],
            "run": ["run", str(spec), "--out", str(run), "--quiet"]}[command]


def test_the_record_lists_every_file_the_run_wrote(recorded_run):
    _, run = recorded_run
    record = read_record(run)
    on_disk = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file() and p.name != CHECKSUMS}
    assert set(record) == on_disk == {p.relative_to(run).as_posix() for p in run_files(run)}
    assert any(name.endswith("weights.safetensors") for name in record)
    assert damaged_files(run) == []


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("pattern", FILES)
def test_a_damaged_file_exits_2_naming_it_and_changes_nothing(recorded_run, tmp_path, capsys, pattern, how, command):
    spec, original = recorded_run
    run = Path(shutil.copytree(original, tmp_path / "run"))
    first = sorted(p.name for p in (run / "snapshots").iterdir())[0]
    target = run / pattern.format(first=first)
    _damage(target, how)
    before = _listing(run)
    capsys.readouterr()
    assert main(_argv(command, spec, run)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert str(target) in err, err
    assert err.count("\n") == 1  # one line
    assert _listing(run) == before  # nothing written, nothing changed
    assert not (run / "analysis").exists()


def test_without_a_record_a_truncated_snapshot_is_still_named(recorded_run, tmp_path, capsys):
    spec, original = recorded_run
    run = Path(shutil.copytree(original, tmp_path / "run"))
    (run / CHECKSUMS).unlink()  # a run written through the API, or before records existed
    weights = sorted((run / "snapshots").glob("*/weights.safetensors"))[-1]
    _damage(weights, "truncated")
    assert main(_argv("analyze", spec, run)) == 2
    err = capsys.readouterr().err
    assert f"{weights}: cannot be read as safetensors" in err and "Traceback" not in err
    assert not (run / "analysis").exists()


def test_analyze_records_its_tables_and_nulls_and_the_folder_checks_clean(recorded_run, tmp_path):
    spec, original = recorded_run
    run = Path(shutil.copytree(original, tmp_path / "run"))
    assert main([*_argv("analyze", spec, run), "--nulls"]) == 0
    record = read_record(run)
    assert any(name.startswith("nulls/") and name.endswith(".safetensors") for name in record)  # the nulls it made
    assert not any(name.startswith("analysis/") for name in record)  # products keep their own checksums
    sums = json.loads((run / "analysis" / "manifest.json").read_text())[OUTPUTS]
    assert set(sums) == {p.name for p in (run / "analysis").glob("*.parquet")} and sums
    assert damaged_files(run) == []
    assert main(_argv("show", spec, run)) == 0


def test_a_product_is_recomputed_after_new_arguments_and_never_read_back_altered(recorded_run, tmp_path):
    _, original = recorded_run
    run = Path(shutil.copytree(original, tmp_path / "run"))
    first = analysis_for(run, n_examples=4, hessian_iters=3, nulls=False, progress=False)
    analysis_for(run, n_examples=6, hessian_iters=3, nulls=False, progress=False)  # rewrites the tables
    assert damaged_files(run) == []  # a rewritten product is not mistaken for a damaged run file
    again = analysis_for(run, n_examples=6, hessian_iters=3, nulls=False, progress=False)  # read back
    assert set(again) == set(first)
    _damage(run / "analysis" / "drift.parquet", "altered")
    with pytest.raises(DamagedFile, match="drift.parquet: has other bytes than were written"):
        analysis_for(run, n_examples=6, hessian_iters=3, nulls=False, progress=False)
