"""Where runs are cached, and the one cache-or-compute helper for what is measured on them.

- A run of a spec lives in ``<cache>/runs/<run name>`` (``$FORGETTING_CACHE``, default
  ``~/.cache/forgetting``), or in ``data/results/<run name>`` when published there (tables only, no
  weights). The run name ``<spec name>-<run key>-<code fingerprint>`` changes with the spec (and the
  weights and dataset rows it reads, :mod:`forgetting.runs.keys`) and with the training code (:data:`forgetting.runs.fingerprint.RUN_CODE`), so a run is never reused with
  numbers the current code would not produce; where a change of the training code is verified to
  reproduce the published runs bit for bit, they keep their names (:mod:`forgetting.runs.equivalence`).
- A *product* of a run (the mechanism report in ``analysis/``, the dynamics table) is stored beside it
  with a manifest holding the key it was made with (its arguments and a fingerprint of the measuring
  code). :func:`stored_or_compute` reads a stored product back when the key matches, in the run folder
  or, for a published run, in its cache twin (where it may have been recomputed), and otherwise
  computes it on a copy of the run that has its weights.
- A product is never paired with the tables of other weights: whenever it is read from, or computed
  in, a cache twin re-trained from a published run, :func:`forgetting.runs.integrity.check_pairing`
  compares the twin's snapshots with the published ``weights.json`` and refuses if they differ (a
  re-training on another machine or thread count need not give the same weights). A product computed
  here also gets, in its manifest, ``weights_sha256``: the checksums of the snapshots (and null
  snapshots) of the folder it was computed in (:func:`forgetting.runs.integrity.weights_digest`).
- A product is never computed from a damaged file, nor read back from one: the folder it is computed in
  is checked against its ``checksums.json`` first (:func:`forgetting.runs.checksums.check_files`; null
  snapshots the computation made join the record), and a computed product's manifest gets
  ``outputs_sha256``, the checksums of its tables, checked whenever it is read back
  (:func:`forgetting.runs.checksums.check_outputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from forgetting import paths
from forgetting.files import atomic_write_json, read_json
from forgetting.runs.checksums import check_files, check_outputs, extend_record, record_outputs
from forgetting.runs.equivalence import run_code_label
from forgetting.runs.integrity import check_pairing, weights_digest
from forgetting.runs.keys import run_key
from forgetting.runs.layout import RunLayout
from forgetting.spec import ExperimentSpec


def run_name(spec: ExperimentSpec) -> str:
    """``<spec name>-<run key>-<code fingerprint>``: the folder name of a cached run. The run key is the
    spec hash, combined with the model's weights and the dataset tasks' rows where they are not the
    published ones (:func:`forgetting.runs.keys.run_key`); the fingerprint is the training code's, or
    the published code's where the current code is verified to reproduce it bit for bit
    (:func:`forgetting.runs.equivalence.run_code_label`)."""
    return f"{spec.name}-{run_key(spec)}-{run_code_label()}"


def published_dir(spec: ExperimentSpec) -> Path:
    """Where ``make results`` publishes the spec's run: ``data/results/<run name>``."""
    return paths.DATA_DIR / "results" / run_name(spec)


#: Spec names (before the first ``-``) whose published runs are read even with ``$FORGETTING_RETRAIN``.
ALWAYS_PUBLISHED = ("full", "front")


def is_published(spec: ExperimentSpec) -> bool:
    """Whether the spec's run (as the current code would make it) is published in ``data/results``
    and is to be read from there: not with ``$FORGETTING_RETRAIN`` set (:func:`forgetting.paths.retrain`),
    unless the spec is one of :data:`ALWAYS_PUBLISHED` (``full``, ``full-sweep``, the mitigation front's ``front-*``)."""
    if paths.retrain() and spec.name.split("-")[0] not in ALWAYS_PUBLISHED:
        return False
    return RunLayout(published_dir(spec)).state.is_file()


def result_dir(spec: ExperimentSpec) -> Path:
    """Where a spec's run lives: ``data/results/`` when published there, else the user cache."""
    return published_dir(spec) if is_published(spec) else paths.cache_dir() / "runs" / run_name(spec)


def cache_twin(run_dir: str | Path) -> Path:
    """Where the weights of a published run live when re-run: ``<cache>/runs/<same name>``."""
    return paths.cache_dir() / "runs" / Path(run_dir).name


def has_weights(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds its snapshots (a run folder, not a published copy of its tables)."""
    return RunLayout(Path(run_dir)).has_weights()


def stored_or_compute(
    run_dir: str | Path,
    *,
    key: dict[str, Any],
    manifest: Callable[[RunLayout], Path],
    outputs: Callable[[RunLayout], list[Path]],
    compute: Callable[[Path], None],
    read: Callable[[Path], Any],
    weights: Callable[[Path], Path],
    stored_only: bool = False,
    what: str = "result",
) -> Any:
    """A product of ``run_dir``: read back if stored with ``key``, else computed and stored.

    ``manifest(layout)`` is the product's manifest file and ``outputs(layout)`` the files it must have;
    it is *current* in a folder when all exist and the manifest's entries for the keys of ``key`` equal
    ``key``. The run folder is tried first, then its :func:`cache_twin`. Otherwise (unless
    ``stored_only``, which raises :class:`LookupError`) ``weights(run_dir)`` gives a folder of the run
    with its snapshots (the run itself, or its spec re-run into the cache twin), ``compute(folder)``
    writes the product there (its manifest must carry ``key``), and ``read(folder)`` returns it.
    A product read from or computed in another folder than ``run_dir`` is checked to come from the
    weights ``run_dir``'s tables were computed from (:func:`~forgetting.runs.integrity.check_pairing`:
    raises :class:`~forgetting.runs.integrity.WeightsMismatch` otherwise). The manifest of a computed
    product gets ``weights_sha256`` (:func:`record_weights_read`).
    """
    run_dir = Path(run_dir)
    for folder in (run_dir, cache_twin(run_dir)):
        layout = RunLayout(folder)
        file = manifest(layout)
        if file.is_file() and all(p.is_file() for p in outputs(layout)):
            stored = read_json(file)
            if {k: stored.get(k) for k in key} == key:
                if folder != run_dir and has_weights(folder):
                    check_pairing(run_dir, folder)
                check_outputs(file)
                return read(folder)
    if stored_only:
        raise LookupError(f"{run_dir}: no stored {what} made by the current code with these arguments")
    source = check_pairing(run_dir, weights(run_dir))
    check_files(source)  # never computed from a damaged or altered file
    compute(source)
    layout = RunLayout(source)
    record_weights_read(manifest(layout), source)
    record_outputs(manifest(layout), outputs(layout))
    extend_record(source)
    return read(source)


#: The manifest entry of a product that holds :func:`~forgetting.runs.integrity.weights_digest`.
WEIGHTS_READ = "weights_sha256"


def record_weights_read(manifest: Path, folder: Path) -> None:
    """Add ``weights_sha256`` (the checksums of ``folder``'s snapshots and null snapshots, which the
    product may have read) to a product's ``manifest``, where both exist; not part of its key."""
    if manifest.is_file() and has_weights(folder):
        atomic_write_json(manifest, {**read_json(manifest), WEIGHTS_READ: weights_digest(folder)})
