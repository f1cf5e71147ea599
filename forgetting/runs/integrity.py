"""Which weights a run's tables were computed from: checksums of its snapshots, recorded when the
tables are published and checked whenever tables are paired with weights trained elsewhere.

Training is not reproducible across machines bit for bit: the same spec, code fingerprint and torch
version gave old-task losses several nats apart after a few stages on two CPUs, because the float
sums of a kernel depend on the CPU's vector unit and on the number of torch threads, and a sequence
of fine-tuning stages amplifies a last-bit difference. So a published run folder (tables only) carries
``weights.json`` (:func:`weights_record`): the sha256 of each snapshot's weight file, with the machine
that held them. When a published run's spec is re-trained into the cache to compute a stale table,
:func:`check_pairing` compares the re-trained snapshots with that record and refuses
(:class:`WeightsMismatch`) if any differs, instead of pairing tables of other weights.

A checksum is ``sha256(bytes of snapshots/<label>/weights.safetensors)``: two snapshots have the same
checksum exactly when their files are equal byte for byte, i.e. (safetensors writes the tensors in a
fixed order with a fixed header) when every tensor is equal bit for bit. :func:`compare_snapshots`
says by how much two runs' snapshots differ where they do: ``max_t max_i |a_{t,i} - b_{t,i}|`` over
the elements ``i`` of each tensor ``t``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import warnings
from pathlib import Path

import pandas as pd
import torch
from safetensors import __version__ as safetensors_version

from forgetting.errors import ForgettingError
from forgetting.files import atomic_write_json, read_json
from forgetting.runs.layout import RunLayout
from forgetting.runs.snapshots import (
    WEIGHTS,
    is_snapshot,
    load_snapshot_state,
    snapshot_meta,
)

#: Labels shown in a message before "and N more".
SHOWN = 6


class WeightsMismatch(ForgettingError, RuntimeError):
    """Tables of a published run would be paired with weights they were not computed from."""


class UnverifiedWeights(UserWarning):
    """A published run has no ``weights.json`` (published before it existed): the pairing of its tables
    with re-trained weights cannot be checked."""


@functools.lru_cache(maxsize=4096)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes; remembered per (path, modification time, size)."""
    stat = os.stat(path)
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


def _checksums(folder: Path, *, end_of_stage_only: bool = False) -> dict[str, str]:
    """label -> sha256 of every complete snapshot folder under ``folder`` (by label order)."""
    if not folder.is_dir():
        return {}
    found = {}
    for snap in sorted(folder.iterdir()):
        if is_snapshot(snap) and (not end_of_stage_only or snapshot_meta(snap).get("end_of_stage", True)):
            found[snap.name] = file_sha256(snap / WEIGHTS)
    return found


def snapshot_checksums(run_dir: str | Path, *, end_of_stage_only: bool = False) -> dict[str, str]:
    """``{label: sha256 of snapshots/<label>/weights.safetensors}`` for the run's snapshots (all of them,
    or only the stage-end ones); empty for a folder without weights."""
    return _checksums(RunLayout(Path(run_dir)).snapshots, end_of_stage_only=end_of_stage_only)


def weights_digest(folder: str | Path) -> dict[str, dict[str, str]]:
    """The checksums of every weight file a derived table of ``folder`` may have read, for its manifest:
    ``{"snapshots": {label: sha256}, "nulls": {label: sha256}}`` (``nulls`` only where there are null
    snapshots). Call it after the table is computed (the null snapshots are made on the way)."""
    layout = RunLayout(Path(folder))
    digest = {"snapshots": _checksums(layout.snapshots)}
    nulls = _checksums(layout.nulls)
    return digest | ({"nulls": nulls} if nulls else {})


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    """What decides a float's last bits on this machine: torch version, torch threads, the CPU and the
    vector instructions torch's kernels use, the GPU (when there is one)."""
    return {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "arch": platform.machine(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "safetensors": safetensors_version,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


#: The fields of the run's manifest (its training provenance) copied into the record.
TRAINED_FIELDS = ("created_at", "git_commit", "torch", "torch_threads", "num_processes")


def weights_record(run_dir: str | Path) -> dict:
    """The record of ``run_dir``'s weights: ``snapshots`` ``{label: sha256}``, how a checksum is taken
    (``algorithm``, ``file``), ``machine`` (:func:`machine`, where the checksums were taken) and
    ``trained`` (the training provenance of the run's manifest)."""
    layout = RunLayout(Path(run_dir))
    manifest = read_json(layout.manifest) if layout.manifest.is_file() else {}
    return {
        "algorithm": "sha256", "file": f"{layout.snapshots.name}/<label>/{WEIGHTS}",
        "snapshots": snapshot_checksums(run_dir), "machine": machine(),
        "trained": {k: manifest[k] for k in TRAINED_FIELDS if k in manifest},
    }


def write_weights_record(run_dir: str | Path, target: str | Path | None = None) -> Path:
    """Write :func:`weights_record` of ``run_dir`` as ``weights.json`` into ``target`` (default the run
    folder itself, e.g. a folder a published copy is staged in); returns the file."""
    file = RunLayout(Path(target or run_dir)).weights_record
    atomic_write_json(file, weights_record(run_dir))
    return file


def read_weights_record(folder: str | Path) -> dict | None:
    """The ``weights.json`` of ``folder``, or ``None`` without one."""
    file = RunLayout(Path(folder)).weights_record
    return read_json(file) if file.is_file() else None


def _names(labels: list[str]) -> str:
    more = f" and {len(labels) - SHOWN} more" if len(labels) > SHOWN else ""
    return ", ".join(labels[:SHOWN]) + more


def _setting(m: dict, trained: dict) -> str:
    """The machine ``m`` in words, with the thread count the weights were trained with (``trained``, the
    run's training provenance) where known."""
    threads = trained.get("torch_threads", m.get("torch_threads"))
    cpu = f"{m['cpu']} ({m.get('cpu_capability')})" if "cpu" in m else "CPU not recorded"
    return f"torch {m.get('torch', trained.get('torch'))}, trained with {threads} thread(s), {cpu}"


def _manifest(folder: Path) -> dict:
    """The training provenance of a run folder (its manifest), empty without one."""
    file = RunLayout(folder).manifest
    return read_json(file) if file.is_file() else {}


def _eval_changes(tables_dir: Path, weights_dir: Path) -> pd.DataFrame | None:
    """Per stage, ``max |v_tables - v_weights|`` over the evaluation rows (every step, task, metric) the
    two folders share, and that of the stage-end losses; ``None`` where one has no evaluations."""
    files = [RunLayout(d).evals for d in (tables_dir, weights_dir)]
    if not all(f.is_file() for f in files):
        return None
    keys = ["stage", "step", "task", "metric", "end_of_stage"]
    a, b = (pd.read_parquet(f)[keys + ["value"]] for f in files)
    both = a.merge(b, on=keys, suffixes=("_tables", "_weights"))
    if both.empty:
        return None
    both["gap"] = (both["value_tables"] - both["value_weights"]).abs().fillna(0.0)
    both["loss_gap"] = both["gap"].where(both["end_of_stage"] & (both["metric"] == "loss"), 0.0)
    return both.groupby("stage")[["gap", "loss_gap"]].max()


def _stage_labels(weights_dir: Path) -> dict[int, str]:
    """stage -> label of its stage-end snapshot in ``weights_dir``."""
    folder = RunLayout(weights_dir).snapshots
    metas = [snapshot_meta(f) for f in sorted(folder.iterdir()) if is_snapshot(f)] if folder.is_dir() else []
    return {int(m["stage"]): m["label"] for m in metas if m.get("end_of_stage")}


def snapshot_differences(expected: dict[str, str], weights_dir: str | Path) -> tuple[list[str], str]:
    """``(differ, how)``: the labels of ``expected`` (``{label: sha256}``, e.g. a ``weights.json``'s
    snapshots) whose snapshot in ``weights_dir`` has another checksum or is missing, and that in words
    (``"2 of 5 snapshots differ (a, b), 1 of them missing there"``; ``""`` when none differs)."""
    actual = snapshot_checksums(weights_dir)
    differ = [label for label, sha in expected.items() if actual.get(label) != sha]
    missing = [label for label in differ if label not in actual]
    how = f"{len(differ)} of {len(expected)} snapshots differ ({_names(differ)})" + (
        f", {len(missing)} of them missing there" if missing else "") if differ else ""
    return differ, how


def check_pairing(tables_dir: str | Path, weights_dir: str | Path) -> Path:
    """``weights_dir`` if its snapshots are those the tables of ``tables_dir`` were computed from; else
    raises :class:`WeightsMismatch` naming the snapshots that differ and what to do.

    The expected checksums are ``tables_dir``'s ``weights.json`` (a published copy) or, without one,
    those of its own snapshots (a run folder with weights); every recorded snapshot counts, and one
    missing from ``weights_dir`` differs. A copy published before the record existed has neither: then
    the evaluations decide, since they are computed from the weights. Where some evaluation of stage
    ``i`` differs at all, the snapshots differ (the stage-end snapshots of those stages are named) and
    the pairing is refused; where every shared evaluation is equal bit for bit it is allowed. Without
    evaluations to compare the pairing is allowed with an :class:`UnverifiedWeights` warning (refusing
    would make every stale table of an older publication unrecomputable); such a copy's record can be
    added without re-training (:func:`forgetting.publish.record_published_weights`).
    """
    tables_dir, weights_dir = Path(tables_dir), Path(weights_dir)
    if tables_dir.resolve() == weights_dir.resolve():
        return weights_dir
    record = read_weights_record(tables_dir)
    if record is None and RunLayout(tables_dir).has_weights():
        record = {"snapshots": snapshot_checksums(tables_dir), "machine": machine()}
    changes = _eval_changes(tables_dir, weights_dir)
    if record is not None:
        differ, how = snapshot_differences(record["snapshots"], weights_dir)
    elif changes is not None:
        labels = _stage_labels(weights_dir)
        differ = [labels.get(int(stage), f"stage {stage}") for stage in changes.index[changes["gap"] > 0]]
        how = (f"it has no {RunLayout(tables_dir).weights_record.name}, but its evaluations differ from those"
               f" of the re-trained run after {len(differ)} of {len(changes)} stages, so the snapshots"
               f" {_names(differ)} differ")
    else:
        warnings.warn(
            f"{tables_dir} has no {RunLayout(tables_dir).weights_record.name} (published before weight "
            f"checksums were recorded) and no evaluations to compare: its tables are paired with the weights "
            f"in {weights_dir} unchecked", UnverifiedWeights, stacklevel=2,
        )
        return weights_dir
    if not differ:
        return weights_dir
    where, trained = (record or {}).get("machine", {}), (record or {}).get("trained") or _manifest(tables_dir)
    gap = "" if changes is None else (
        f" Their stage-end eval losses differ by up to {changes['loss_gap'].max():.4g} nats"
        f" (stage {int(changes['loss_gap'].idxmax())}).")
    published_kernels, here = where.get("cpu_capability"), machine()["cpu_capability"]
    pin = (f" The published weights used torch's {published_kernels} kernels and this process {here}: start it with"
           f" ATEN_CPU_CAPABILITY={published_kernels.lower()} to compute as they were computed (forgetting.reproduce)."
           if published_kernels and published_kernels != here else "")
    raise WeightsMismatch(
        f"{tables_dir}: its tables were computed from other weights than those re-trained into {weights_dir}:"
        f" {how}.{gap} Published from: {_setting(where, trained)};"
        f" here: {_setting(machine(), _manifest(weights_dir))}.{pin}"
        " Tables computed from these weights would be paired with evaluations of other weights. Either"
        " re-run `make results` on this machine to publish every table from these weights, or read only"
        " the stored tables (stored_only=True), or re-train where the tables were published."
    )


def compare_snapshots(a: str | Path, b: str | Path, *, end_of_stage_only: bool = True) -> pd.DataFrame:
    """Snapshot by snapshot, how two runs of a spec differ: one row per (label, tensor) of the labels
    both have, with ``same_file`` (equal sha256), ``max_abs_diff`` ``max_i |a_i - b_i|`` and ``max_abs``
    ``max_i |a_i|`` (the tensor's scale)."""
    sums_a = snapshot_checksums(a, end_of_stage_only=end_of_stage_only)
    sums_b = snapshot_checksums(b, end_of_stage_only=end_of_stage_only)
    rows = []
    for label in (lab for lab in sums_a if lab in sums_b):
        state_a = load_snapshot_state(RunLayout(Path(a)).snapshot(label))
        state_b = load_snapshot_state(RunLayout(Path(b)).snapshot(label))
        for name in sorted(state_a.keys() & state_b.keys()):
            x, y = state_a[name].double(), state_b[name].double()
            rows.append({"label": label, "tensor": name, "same_file": sums_a[label] == sums_b[label],
                         "max_abs_diff": float((x - y).abs().max()), "max_abs": float(x.abs().max())})
    return pd.DataFrame(rows, columns=["label", "tensor", "same_file", "max_abs_diff", "max_abs"])
