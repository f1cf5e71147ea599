"""Does the current training code reproduce the published runs bit for bit? Re-train a sample and compare.

:func:`verify_published` re-trains, with the code as it is now, one published run of each *family* of
``data/results`` and compares it with what was published:

- every snapshot's sha256 with the published ``weights.json`` (:func:`~forgetting.runs.integrity.snapshot_differences`);
- the evaluations and the train log with the published tables, row for row and bit for bit.

The rule is fixed here, before any comparison: a *family* is the published runs that share spec name,
model, fine-tuning method, number of tasks and whether a joint reference run is trained; its first run
in folder-name order is re-trained (``every=True``: all of them). The current code reproduces the
published code when every re-trained run is identical; then, and only then,
:func:`~forgetting.runs.equivalence.record_equivalence` records it and the published runs keep their
names under the current code. Any difference is reported with the runs that differ, and nothing is
recorded: the published runs must then be remade (``make results``).

Bit-for-bit equality needs the arithmetic the runs were published with (torch version, thread count,
and the vector instructions of torch's CPU kernels; :func:`~forgetting.runs.integrity.machine`). The
instructions can be pinned: torch reads ``ATEN_CPU_CAPABILITY`` (``avx2``, ``avx512``, ``default``) when
it is imported. Measured: runs published on an AVX2 machine were re-trained on an AVX512 one with
different weights in every trained snapshot of all six families; with ``ATEN_CPU_CAPABILITY=avx2`` the
same re-training was identical bit for bit. :func:`kernel_pin` says which setting reproduces the
published runs (``forgetting verify`` re-runs itself with it); a machine that lacks the published
instructions cannot be pinned to them, and there the verification fails honestly, as
:func:`~forgetting.runs.integrity.check_pairing` does.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from forgetting import paths
from forgetting.errors import ForgettingError
from forgetting.runs import Run
from forgetting.runs.equivalence import record_equivalence
from forgetting.runs.fingerprint import code_fingerprint
from forgetting.runs.integrity import machine, read_weights_record, snapshot_differences
from forgetting.train import run_experiment

RULE = ("one published run per family (spec name, model, fine-tuning method, number of tasks, reference run "
        "on or off), the first in folder-name order, re-trained with the current code; equivalent when every "
        "snapshot's sha256 equals the published weights.json and the evaluations and train log equal the "
        "published tables bit for bit")


def published_runs(results: Path | None = None) -> list[Run]:
    """The published runs of ``data/results`` (folders with a ``state.json``), in folder-name order."""
    results = results or paths.DATA_DIR / "results"
    return [Run.open(state.parent) for state in sorted(results.glob("*/state.json"))]


def kernel_pin(runs: list[Run] | None = None) -> dict[str, str]:
    """``{"ATEN_CPU_CAPABILITY": "avx2"}`` when the published runs' weights were checksummed on a machine
    whose torch kernels used other vector instructions than this process's and none is pinned already;
    ``{}`` otherwise (also when the runs disagree among themselves, or record no capability)."""
    import torch  # deferred: the capability of the process's torch, which is imported by now

    if os.environ.get("ATEN_CPU_CAPABILITY"):
        return {}
    records = [read_weights_record(run.folder) for run in (runs if runs is not None else published_runs())]
    published = {r["machine"].get("cpu_capability") for r in records if r and r.get("machine")}
    if len(published) != 1 or None in published:
        return {}
    (wanted,) = published
    return {} if wanted == torch.backends.cpu.get_cpu_capability() else {"ATEN_CPU_CAPABILITY": wanted.lower()}


def family(run: Run) -> tuple:
    """The family of a published run (module docstring)."""
    spec = run.spec
    return spec.name, spec.model, spec.finetune.method, len(run.task_names), spec.reference.enabled


def sample(runs: list[Run]) -> list[Run]:
    """The first run of each family, in folder-name order."""
    chosen: dict[tuple, Run] = {}
    for run in runs:
        chosen.setdefault(family(run), run)
    return list(chosen.values())


def _differing_tables(published: Run, retrained: Run) -> list[str]:
    """The tables of ``retrained`` that differ from ``published``'s (``[]`` when all are equal)."""
    differ = []
    for name in ("evals", "train_log"):
        a, b = getattr(published, name), getattr(retrained, name)
        try:
            pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_exact=True)
        except AssertionError:
            differ.append(name)
    return differ


def compare_run(published: Run, workdir: Path, *, progress: bool = False) -> dict:
    """Re-train ``published``'s spec into ``workdir`` with the current code; ``{"run", "snapshots",
    "rows", "identical", "differs"}`` (``differs``: what is not identical, in words)."""
    out = run_experiment(published.spec, workdir / published.folder.name, progress=progress)
    retrained = Run.open(out)
    differs = _differing_tables(published, retrained)
    record = read_weights_record(published.folder)  # a copy published before the record: its tables decide
    if record is not None:
        _, how = snapshot_differences(record["snapshots"], out)
        if how:
            differs.append(how)
    return {"run": published.folder.name, "snapshots": len(retrained.snapshots()), "rows": len(retrained.evals),
            "identical": not differs, "differs": differs}


def verify_published(*, every: bool = False, progress: bool = True, results: Path | None = None) -> dict:
    """Verify that the current training code reproduces the published runs (module docstring) and
    record it; returns the record's entry. Raises :class:`~forgetting.errors.ForgettingError` naming
    the runs that differ (nothing is recorded), or when nothing is published."""
    runs = published_runs(results)
    if not runs:
        raise ForgettingError("nothing is published in data/results to verify against")
    labels = sorted({run.folder.name.rsplit("-", 1)[1] for run in runs})
    if len(labels) != 1:
        raise ForgettingError(f"the published runs come from {len(labels)} codes ({', '.join(labels)}); "
                              "remake them with `make results` first")
    current, published = code_fingerprint(), labels[0]
    chosen = runs if every else sample(runs)
    with tempfile.TemporaryDirectory(prefix="forgetting-verify-") as tmp:
        results_ = [compare_run(run, Path(tmp)) for run in tqdm(chosen, desc="re-training published runs",
                                                                 disable=not progress or paths.quiet())]
    failed = [r for r in results_ if not r["identical"]]
    if failed:
        raise ForgettingError(
            f"the training code {current} does not reproduce the published code {published}: "
            + "; ".join(f"{r['run']}: {', '.join(r['differs'])}" for r in failed)
            + ". Remake the published runs with `make results` (hours), or undo the change to the training code")
    entry = {"verified": [{k: r[k] for k in ("run", "snapshots", "rows")} for r in results_], "rule": RULE,
             "every": every, "machine": machine(),
             "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if current != published:
        record_equivalence(current, published, entry)
    return {"same_as": published, "current": current, **entry}
