"""Results on disk: atomic writes, provenance, and the run folder layout.

A run folder ``DIR`` (written by ``forgetting run SPEC --out DIR``)::

    DIR/manifest.json          spec, spec hash, seed, provenance (package version, git commit, created_at)
    DIR/state.json             which stages are complete (drives resume)
    DIR/evals.parquet          long-format evaluations (see forgetting.evaluate.EVAL_COLUMNS)
    DIR/train_log.parquet      step, stage, task, loss, learning rate
    DIR/snapshots/<label>/     trainable weights as safetensors (+ meta.json)

Every file is written to a temporary name in the same folder and moved into place with ``os.replace``,
so a killed run leaves complete files or none, never a half-written one.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from forgetting import paths
from forgetting.errors import DamagedFile, SpecError
from forgetting.version import __version__


def git_commit() -> str | None:
    """The commit of the checkout the package runs from (``None`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(paths.REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def file_digest(path: str | Path) -> str:
    """sha256 of the file's bytes, first 12 hex digits (the ledger's rule hash is this of its file)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def provenance() -> dict[str, Any]:
    """Who made a result: package version, git commit, created_at (UTC), library versions, torch threads,
    the vector instructions torch's CPU kernels use (``cpu_capability``; see :mod:`forgetting.reproduce`),
    and the hash of the ledger's rule file in force (``ledger_rules``; see :mod:`forgetting.ledger.rules`)."""
    import torch  # deferred: the file helpers are used where torch is not loaded yet
    import transformers  # deferred: as above

    return {
        "package_version": __version__,
        "git_commit": git_commit(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the vector instructions of torch's kernels
        "ledger_rules": file_digest(rules) if (rules := paths.DATA_DIR / "ledger_rules.yaml").is_file() else None,
    }


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    """The JSON file at ``path``; a file that is not valid JSON (truncated, altered) raises
    :class:`~forgetting.errors.DamagedFile` naming it."""
    text = Path(path).read_bytes()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedFile(path, f"not valid JSON ({exc})") from None


def atomic_write_table(path: Path, df: pd.DataFrame) -> None:
    """Write ``df`` as parquet atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: Path, *, option: str = "--out") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) while the block runs; another process
    holding it gets :class:`~forgetting.errors.SpecError` at once instead of writing into the same
    folder (two runs into one folder would mix their tables and snapshots).

    The lock is ``flock`` on the folder itself, so nothing is written into it and it is released when
    the process ends, however it ends; a folder this call created is removed again if the block left
    it empty (bad input found inside it writes nothing). Where ``fcntl`` does not exist (Windows) the
    block runs unlocked. Under a distributed launch (``accelerate launch``, ``torchrun``) only rank 0
    takes the lock: the other ranks (``$RANK`` above 0) are the same run, and only rank 0 writes.
    """
    folder = Path(folder)
    if int(os.environ.get("RANK", "0")) > 0:
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        try:
            import fcntl  # deferred: POSIX only
        except ImportError:  # pragma: no cover - Windows
            yield folder
            return
        fd = os.open(folder, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SpecError(option, f"{folder} is being written by another forgetting process; wait for it "
                                        "to finish or choose another folder") from None
            yield folder
        finally:
            os.close(fd)  # closing the descriptor releases the lock
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # bad input found inside the block: leave no empty folder behind
