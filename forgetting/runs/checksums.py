"""Every file of a run folder, checked before it is read: a record of checksums and a check of it.

Two kinds of files live in a run folder, and each kind keeps its checksums where its writer can keep
them current:

- **The run's own files**, written by the training run and never rewritten by anything else: its
  ``manifest.json``, ``tasks.json``, ``state.json``, ``evals.parquet``, ``train_log.parquet``, ``reference.parquet``,
  ``weights.json``, every snapshot under ``snapshots/`` and every null snapshot under ``nulls/``.
  ``DIR/checksums.json`` holds the size in bytes and the sha256 of each::

      {"format": 1, "files": {"evals.parquet": {"bytes": 48213, "sha256": "9f2c..."}, ...}}

  :func:`record_files` writes it (``forgetting run`` when a run ends or stops, ``forgetting analyze``
  and :func:`forgetting.runs.cache.stored_or_compute` after they add null snapshots,
  :func:`forgetting.profiles.run_cached` for the profiles' runs).
- **Products** computed from the run and rewritten when their arguments change (``analysis/``,
  ``dynamics.parquet``, ``causal.parquet``, ...): their manifest gets ``outputs_sha256``, the sha256 of
  each of its tables (:func:`record_outputs`), checked when the product is read back
  (:func:`check_outputs`).

:func:`check_files` compares the run's files with the record before a command reads the folder and
raises :class:`~forgetting.errors.DamagedFile` naming every file that is missing, truncated (a size other
than the recorded one) or altered (same size, other bytes). A file without a record (a run written
through the API, a product computed before records existed) is checked structurally only: a safetensors
header and a parquet footer must parse, which catches truncation but not bytes flipped inside a tensor.
The lock file and the hidden temporary files of atomic writes are never recorded.
"""

from __future__ import annotations

from pathlib import Path

from forgetting.errors import DamagedFile
from forgetting.files import atomic_write_json, read_json
from forgetting.runs.integrity import file_sha256
from forgetting.runs.layout import (
    EVALS,
    MANIFEST,
    NULLS,
    REFERENCE,
    SNAPSHOTS,
    STATE,
    TASKS,
    TRAIN_LOG,
    WEIGHTS_RECORD,
)

CHECKSUMS = "checksums.json"
FORMAT = 1
OUTPUTS = "outputs_sha256"  # the key of a product manifest's checksums
_RUN_FILES = (MANIFEST, TASKS, STATE, EVALS, TRAIN_LOG, REFERENCE, WEIGHTS_RECORD)  # top-level files of the run itself
_RUN_FOLDERS = (SNAPSHOTS, NULLS)  # every file below these


def _visible(run_dir: Path, path: Path) -> bool:
    return path.is_file() and not any(part.startswith(".") for part in path.relative_to(run_dir).parts)


def _files(run_dir: Path) -> list[Path]:
    """Every file of the folder (products too), in a stable order: not the record, not hidden temporaries."""
    return sorted(p for p in run_dir.rglob("*") if p.name != CHECKSUMS and _visible(run_dir, p))


def run_files(run_dir: str | Path) -> list[Path]:
    """The run's own files now in ``run_dir`` (see the module docstring), in a stable order."""
    run_dir = Path(run_dir)
    top = [run_dir / name for name in _RUN_FILES if (run_dir / name).is_file()]
    below = [p for folder in _RUN_FOLDERS for p in (run_dir / folder).rglob("*") if _visible(run_dir, p)]
    return sorted(top + below)


def _entry(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


def record_files(run_dir: str | Path) -> Path:
    """Write ``run_dir/checksums.json`` with the size and sha256 of each of the run's own files now there."""
    run_dir = Path(run_dir)
    files = {p.relative_to(run_dir).as_posix(): _entry(p) for p in run_files(run_dir)}
    target = run_dir / CHECKSUMS
    atomic_write_json(target, {"format": FORMAT, "files": files})
    return target


def extend_record(run_dir: str | Path) -> None:
    """Add to ``run_dir``'s record, where it has one, the run files written since (null snapshots made
    by an analysis); the entries already there are kept as they are, not re-read."""
    run_dir = Path(run_dir)
    record = read_record(run_dir)
    if record is None:
        return
    new = {name: _entry(p) for p in run_files(run_dir) if (name := p.relative_to(run_dir).as_posix()) not in record}
    if new:
        atomic_write_json(run_dir / CHECKSUMS, {"format": FORMAT, "files": {**record, **new}})


def read_record(run_dir: str | Path) -> dict[str, dict] | None:
    """``{relative path: {"bytes", "sha256"}}`` of the folder's record, or ``None`` without one."""
    path = Path(run_dir) / CHECKSUMS
    if not path.is_file():
        return None
    record = read_json(path)  # a damaged record is itself a DamagedFile
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, dict):
        raise DamagedFile(path, "has no 'files' mapping")
    return files


def _structural_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as the format its name says (safetensors, parquet), or ``None``."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open  # deferred: only where a run folder is checked

            with safe_open(str(path), framework="pt") as fh:
                fh.keys()
        elif path.suffix == ".parquet":
            import pyarrow.parquet as pq  # deferred: as above

            pq.read_metadata(path)
    except Exception as exc:  # noqa: BLE001 - every reader error here means the file cannot be read
        return f"cannot be read as {path.suffix[1:]} ({type(exc).__name__}: {str(exc).strip()[:120]})"
    return None


def damaged_files(run_dir: str | Path) -> list[tuple[Path, str]]:
    """``[(file, what is wrong)]`` for every damaged file of ``run_dir``: the run's own files against
    its record where there is one, and every other file structurally (safetensors headers, parquet
    footers)."""
    run_dir = Path(run_dir)
    record = read_record(run_dir) or {}
    problems = []
    for name, entry in record.items():
        path = run_dir / name
        if not path.is_file():
            problems.append((path, "is missing (it is in checksums.json, written with the run)"))
        elif path.stat().st_size != entry["bytes"]:
            problems.append((path, f"has {path.stat().st_size} bytes where {entry['bytes']} were written (truncated or altered)"))
        elif file_sha256(path) != entry["sha256"]:
            problems.append((path, "has other bytes than were written (its sha256 differs from checksums.json)"))
    for path in _files(run_dir):
        if path.relative_to(run_dir).as_posix() not in record and (problem := _structural_problem(path)):
            problems.append((path, problem))
    return problems


def check_files(run_dir: str | Path) -> None:
    """Raise :class:`~forgetting.errors.DamagedFile` naming every damaged file of ``run_dir`` (see
    :func:`damaged_files`); return quietly when there is none."""
    _raise(damaged_files(run_dir))


def _raise(problems: list[tuple[Path, str]]) -> None:
    """One :class:`~forgetting.errors.DamagedFile` naming every problem, the first one first."""
    if problems:
        first, *rest = problems
        also = "".join(f"; also {path}: {what}" for path, what in rest)
        raise DamagedFile(first[0], first[1] + also)


def record_outputs(manifest: str | Path, outputs: list[Path]) -> None:
    """Add ``outputs_sha256`` (``{file name: sha256}`` of each existing file of ``outputs`` but the
    manifest itself) to a product's ``manifest``, where it exists and there is such a file; not part
    of the product's key."""
    manifest = Path(manifest)
    tables = [Path(p) for p in outputs if Path(p).is_file() and Path(p) != manifest]
    if manifest.is_file() and tables:
        sums = {p.relative_to(manifest.parent).as_posix(): file_sha256(p) for p in tables}
        atomic_write_json(manifest, {**read_json(manifest), OUTPUTS: sums})


def check_outputs(manifest: str | Path) -> None:
    """Raise :class:`~forgetting.errors.DamagedFile` naming every table of a product whose sha256
    differs from its manifest's ``outputs_sha256`` (or that is missing); quiet without the entry."""
    manifest = Path(manifest)
    sums = read_json(manifest).get(OUTPUTS) or {}
    problems = []
    for name, digest in sums.items():
        path = manifest.parent / name
        if not path.is_file():
            problems.append((path, f"is missing (it is in {manifest.name}'s {OUTPUTS})"))
        elif file_sha256(path) != digest:
            problems.append((path, f"has other bytes than were written (its sha256 differs from {manifest.name})"))
    _raise(problems)
