"""Which published training code the current code is verified to reproduce, bit for bit.

A run folder is named by the fingerprint of the training code (:data:`~forgetting.runs.fingerprint.RUN_CODE`),
so any change to that code (a new mitigation, a clearer error message in the spec) gives every run a new
name, and the runs published in ``data/results`` (hours of training) would be remade. Where the change
does not change the numbers, that can be *shown* rather than assumed: :func:`forgetting.reproduce.verify_published`
re-trains a sample of the published runs with the current code and compares every snapshot's sha256
with the published ``weights.json`` and the evaluations and train log with the published tables. When
all are identical it records here that the current fingerprint reproduces the published one::

    data/results/code_equivalence.json
    {"format": 1, "run_code": {"<current fingerprint>": {"same_as": "<published fingerprint>",
        "verified": [{"run": "<published run folder>", "snapshots": 9, "rows": 2212}, ...],
        "rule": "...", "machine": {...}, "created_at": "..."}}}

:func:`run_code_label` is then the published fingerprint, and runs keep their published names. The
record is keyed by the exact fingerprint: any further change to the training code is a new fingerprint
with no entry, so it must be verified again (or its runs remade with ``make results``). The record
never covers a change that alters the numbers: such a change fails the verification.
"""

from __future__ import annotations

from pathlib import Path

from forgetting import paths
from forgetting.errors import DamagedFile
from forgetting.files import atomic_write_json, read_json
from forgetting.runs.fingerprint import code_fingerprint

RECORD = "code_equivalence.json"
FORMAT = 1


def record_path() -> Path:
    """``data/results/code_equivalence.json`` (in the folder the published runs are read from)."""
    return paths.DATA_DIR / "results" / RECORD


def read_equivalences() -> dict[str, dict]:
    """``{current fingerprint: entry}`` of the record (``{}`` without one)."""
    path = record_path()
    if not path.is_file():
        return {}
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("run_code"), dict):
        raise DamagedFile(path, "has no 'run_code' mapping")
    return record["run_code"]


def run_code_label(fingerprint: str | None = None) -> str:
    """The fingerprint runs are named by: the published one the current training code (or
    ``fingerprint``) is verified to reproduce, else the code's own fingerprint."""
    fingerprint = fingerprint or code_fingerprint()
    entry = read_equivalences().get(fingerprint)
    return entry["same_as"] if entry else fingerprint


def record_equivalence(fingerprint: str, same_as: str, entry: dict) -> Path:
    """Add (or replace) the entry ``fingerprint -> same_as`` with its evidence ``entry``."""
    record = {"format": FORMAT, "run_code": {**read_equivalences(), fingerprint: {"same_as": same_as, **entry}}}
    atomic_write_json(record_path(), record)
    return record_path()
