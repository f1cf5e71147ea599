"""What names a run besides its spec: the weights it starts from and the data of its dataset tasks.

A run folder is named ``<spec name>-<run key>-<code fingerprint>`` (:func:`forgetting.runs.cache.run_name`),
so that the same name means the same numbers. The spec hash alone does not promise that: the same
``model: path/to/folder`` may hold other weights tomorrow, an embedded model rebuilt on another machine
differs from the shipped one in every tensor, and ``tasks: {mine: {dataset: path}}`` may hold other
rows. The run key is therefore the spec hash combined with what the run reads beyond the spec::

    run_key = spec.hash()                                        when there is nothing beyond it
            = sha256(json({"spec": spec.hash(), "weights": w, "data": {task: d}}))[:12]   otherwise

- ``weights``: the sha256 of the model's weight files (:func:`forgetting.models.model_fingerprint`),
  included unless they are the weights the published runs were trained from, recorded for each
  embedded model in ``data/models/weights.json`` (so published runs keep their names), and left out
  for a hub id whose files are not on this machine (nothing to hash; the id is in the spec).
- ``data``: for each task defined under ``tasks:``, the sha256 of the rows read from its dataset
  (:func:`forgetting.tasks.hf.entry_source`, train rows then eval rows).

Hashes are memoised per process by the files' sizes and modification times (hashing is done once).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forgetting import paths
from forgetting.files import read_json
from forgetting.models import model_fingerprint, model_folder
from forgetting.spec import ExperimentSpec
from forgetting.tasks.hf import entry_source

#: ``data/models/weights.json``: the sha256 of the weights of each shipped embedded model.
SHIPPED_WEIGHTS = "weights.json"


def shipped_weights() -> dict[str, str]:
    """``{embedded model: sha256 of the weights the published runs were trained from}``."""
    path = paths.DATA_DIR / "models" / SHIPPED_WEIGHTS
    return dict(read_json(path)["sha256"]) if path.is_file() else {}


def _stat_key(folder: Path) -> tuple:
    return tuple(sorted((p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()))


_MEMO: dict[tuple, object] = {}


def _memo(key: tuple, compute):
    if key not in _MEMO:
        _MEMO[key] = compute()
    return _MEMO[key]


def weights_sha256(model: str) -> str | None:
    """The sha256 of ``model``'s weight files (``None`` for a hub id not on this machine), memoised."""
    folder = model_folder(model)
    if folder is None:
        return None
    return _memo(("weights", model, _stat_key(folder)), lambda: model_fingerprint(model)["weights_sha256"])


def dataset_sha256(spec: ExperimentSpec) -> dict[str, str]:
    """``{task: sha256 of its rows}`` for each task the spec defines under ``tasks:`` and uses."""
    out = {}
    for name in spec.task_list():
        entry = spec.tasks.get(name)
        if entry is None:
            continue
        folder = Path(entry.dataset).expanduser()
        stat = _stat_key(folder) if folder.is_dir() else ()
        key = ("data", name, entry.model_dump_json(), stat)
        out[name] = _memo(key, lambda: _rows_digest(name, entry))
    return out


def _rows_digest(name, entry) -> str:
    source = entry_source(name, entry)[2]
    return hashlib.sha256(f"{source['rows_sha256']}:{source['eval_rows_sha256']}".encode()).hexdigest()


def beyond_spec(spec: ExperimentSpec) -> dict:
    """What the run reads beyond its spec that names it (module docstring): ``{"weights"?, "data"?}``."""
    extra: dict = {}
    weights = weights_sha256(spec.model)
    if weights is not None and weights != shipped_weights().get(spec.model):
        extra["weights"] = weights
    if data := dataset_sha256(spec):
        extra["data"] = data
    return extra


def run_key(spec: ExperimentSpec) -> str:
    """The 12 hex digits that name the spec's run (module docstring)."""
    extra = beyond_spec(spec)
    if not extra:
        return spec.hash()
    blob = json.dumps({"spec": spec.hash(), **extra}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
