"""The :class:`Run` object: a finished (or partly finished) run folder, read back.

``Run.open(path)`` is the only reader of a run folder; :mod:`forgetting.runs.layout` is the only
place that names its files. A run gives its spec, tasks, stages, evaluations, provenance, and its
snapshots as state dicts or loaded models::

    run = Run.open("runs/quick")
    run.spec.task_list()                    # ['recall_city', 'recall_job', 'sort', 'update_city']
    run.stages                              # [0, 1, 2, 3, 4]: completed stages (0 = the base model)
    run.evals                               # long table of every evaluation (the R matrix rows)
    model = run.model_at(2)                 # the spec's model with the weights at the end of stage 2
    run.load_into(model, "stage01-recall_city")

A snapshot is named by its stage (the end-of-stage snapshot) or by its label.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from forgetting.errors import DamagedFile, SpecError
from forgetting.evaluate import PreparedTask, prepare_task
from forgetting.files import atomic_write_bytes, read_json
from forgetting.models import load_model
from forgetting.models.finetune import prepare_model
from forgetting.runs.layout import RunLayout, snapshot_label
from forgetting.runs.snapshots import is_snapshot, load_snapshot_state, restore_snapshot, snapshot_meta
from forgetting.spec import ExperimentSpec, parse_spec, stage_seed
from forgetting.tasks.encoding import example_length
from forgetting.tasks.families import Task, make_task
from forgetting.tasks.hf import task_from_entry
from forgetting.tasks.records import examples_sha256, task_from_record, tasks_document

#: A snapshot, named by the number of the stage whose end it marks or by its label.
SnapshotRef = int | str


def model_for_spec(spec: ExperimentSpec):
    """``(model, tokenizer)``: the spec's model made trainable by its fine-tuning method
    (:func:`forgetting.models.finetune.prepare_model`, seeded by ``stage_seed(seed, 0)``)."""
    model, tokenizer = load_model(spec.model, trust_remote_code=spec.trust_remote_code)
    return prepare_model(model, spec.finetune.method, spec.finetune, stage_seed(spec.seed, 0)), tokenizer


def build_tasks(spec: ExperimentSpec, tokenizer=None) -> list[tuple[Task, dict]]:
    """``(task, source)`` of each of the spec's tasks, in sequence order: a registered task
    (:func:`~forgetting.tasks.families.make_task`) or one defined under ``tasks:`` from a dataset
    (:func:`~forgetting.tasks.hf.task_from_entry`; with ``tokenizer``, rows longer than the entry's
    ``max_length`` tokens are dropped). Raises one :class:`~forgetting.errors.SpecError` naming every
    dataset task that cannot be made (a missing folder, split or column), before any work starts."""
    d, built, problems = spec.data, [], []
    for name in spec.task_list():
        entry = spec.tasks.get(name)
        if entry is None:
            task = make_task(name, n_train=d.n_train, n_eval=d.n_eval, seed=d.task_seed)
            built.append((task, {"kind": "registered", "task_seed": d.task_seed}))
            continue
        fits = None
        if entry.max_length is not None and tokenizer is not None:
            fits = lambda ex, limit=entry.max_length: example_length(tokenizer, ex) <= limit  # noqa: E731
        try:
            built.append(task_from_entry(name, entry, n_train=entry.n_train or d.n_train,
                                         n_eval=entry.n_eval or d.n_eval, seed=d.task_seed, fits=fits))
        except SpecError as exc:
            problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise SpecError("tasks", f"{len(problems)} problems: " + "; ".join(map(str, problems)))
    return built


def tasks_for_spec(spec: ExperimentSpec, tokenizer) -> list[PreparedTask]:
    """The spec's tasks, in sequence order, sampled and encoded for ``tokenizer`` (:func:`build_tasks`)."""
    return [prepare_task(task, tokenizer) for task, _ in build_tasks(spec, tokenizer)]


def check_remade(tasks: list[Task], sources: dict[str, dict], manifest: Path) -> None:
    """Refuse tasks made again from the spec whose examples differ from those the run recorded (the
    sha256 in its manifest's ``task_sources``; a run published without its ``tasks.json``)."""
    changed = [t.name for t in tasks if (recorded := sources.get(t.name, {}).get("sha256")) and recorded != examples_sha256(t)]
    if changed:
        raise SpecError("tasks", f"{', '.join(changed)} made again by this code differ from the examples the run in "
                        f"{manifest.parent} was trained on (sha256 in {manifest.name}); the task code changed since, so "
                        "its tables cannot be paired with them: re-run the spec")


def write_tasks(layout: RunLayout, records: list[dict]) -> Path:
    """Write the run's ``tasks.json`` (:func:`forgetting.tasks.records.tasks_document`, compact JSON)."""
    text = json.dumps(tasks_document(records), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    atomic_write_bytes(layout.tasks, (text + "\n").encode())
    return layout.tasks


def stored_tasks(layout: RunLayout) -> list[Task] | None:
    """The tasks a run folder stores (``tasks.json``), in sequence order; ``None`` for a folder without
    one (a run made before runs kept their tasks: its tasks are re-made from the spec)."""
    if not layout.tasks.is_file():
        return None
    document = read_json(layout.tasks)
    try:
        return [task_from_record(record) for record in document["tasks"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DamagedFile(layout.tasks, f"is not a task record ({exc})") from None


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot of a run: its label, stage, task, global ``step`` and whether it ends its stage."""

    label: str
    stage: int
    task: str
    step: int
    end_of_stage: bool


def _info(meta: dict) -> SnapshotInfo:
    return SnapshotInfo(meta["label"], int(meta["stage"]), meta["task"], int(meta["step"]), bool(meta["end_of_stage"]))


class Run:
    """A run folder read back (see the module docstring). Tables and the spec are read once, lazily."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.layout = RunLayout(self.folder)
        self._loaded: tuple | None = None  # (model, tokenizer) of the spec, reused by model_at

    @classmethod
    def open(cls, path: str | Path) -> "Run":
        """The run in folder ``path``; raises :class:`~forgetting.errors.SpecError` if it is not one."""
        run = cls(Path(path))
        if not run.layout.manifest.is_file():
            raise SpecError("DIR", f"{path} is not a run folder (no {run.layout.manifest.name})")
        return run

    def __repr__(self) -> str:
        return f"Run({str(self.folder)!r})"

    # -- what the run is -------------------------------------------------------------------------

    @functools.cached_property
    def manifest(self) -> dict:
        """Spec, spec hash, seed, task names, number of processes and provenance."""
        return read_json(self.layout.manifest)

    @functools.cached_property
    def spec(self) -> ExperimentSpec:
        return parse_spec(self.manifest["spec"], source=str(self.layout.manifest))

    @property
    def seed(self) -> int:
        return int(self.manifest["seed"])

    @property
    def task_names(self) -> list[str]:
        return self.spec.task_list()

    @property
    def state(self) -> dict:
        """Completed stages and snapshot labels, re-read on every call (a run being written moves on)."""
        return read_json(self.layout.state) if self.layout.state.is_file() else {}

    @property
    def stages(self) -> list[int]:
        """The completed stages, ``0`` (the base model) to the last one finished."""
        return list(range(self.state.get("completed_stages", -1) + 1))

    @property
    def has_weights(self) -> bool:
        """Whether the snapshots are here (a published copy holds only the tables)."""
        return self.layout.has_weights()

    # -- tables ----------------------------------------------------------------------------------

    @functools.cached_property
    def evals(self) -> pd.DataFrame:
        """Every evaluation, one row per (stage, step, task, metric) (columns ``forgetting.evaluate.EVAL_COLUMNS``)."""
        return pd.read_parquet(self.layout.evals)

    @functools.cached_property
    def train_log(self) -> pd.DataFrame:
        """One row per optimizer step with ``stage, task, step, loss, lr`` (empty before any training)."""
        return pd.read_parquet(self.layout.train_log) if self.layout.train_log.is_file() else pd.DataFrame()

    @functools.cached_property
    def reference(self) -> pd.DataFrame | None:
        """The joint multi-task reference run's evaluations, or ``None`` without one."""
        return pd.read_parquet(self.layout.reference) if self.layout.reference.is_file() else None

    # -- snapshots -------------------------------------------------------------------------------

    def stage_label(self, stage: int) -> str:
        """The label of the snapshot at the end of ``stage`` (``stage00-base`` for 0)."""
        names = self.task_names
        if not 0 <= stage <= len(names):
            raise SpecError("stage", f"{stage} not allowed; allowed: 0..{len(names)}")
        return snapshot_label(stage, "base" if stage == 0 else names[stage - 1])

    def label(self, ref: SnapshotRef) -> str:
        return self.stage_label(ref) if isinstance(ref, int) else ref

    def snapshot_folder(self, ref: SnapshotRef) -> Path:
        """The folder of snapshot ``ref``; names the snapshots there if it is missing."""
        label = self.label(ref)
        folder = self.layout.snapshot(label)
        if not is_snapshot(folder):
            have = ", ".join(s.label for s in self.snapshots()) or "none"
            raise SpecError("snapshot", f"{label!r} not in {self.layout.snapshots}; have: {have}")
        return folder

    def snapshots(self, stage: int | None = None) -> list[SnapshotInfo]:
        """Every snapshot on disk ordered by step (end-of-stage before step snapshots of the next stage),
        or only those of ``stage``."""
        if not self.layout.snapshots.is_dir():
            return []
        found = []
        for folder in self.layout.snapshots.iterdir():
            if is_snapshot(folder):
                found.append(_info(snapshot_meta(folder)))
        found.sort(key=lambda s: (s.step, s.stage))
        return [s for s in found if stage is None or s.stage == stage]

    def snapshot_info(self, ref: SnapshotRef) -> SnapshotInfo:
        return _info(snapshot_meta(self.snapshot_folder(ref)))

    def stage_snapshots(self, stage: int) -> list[Path]:
        """The end of stage ``stage - 1`` followed by every snapshot of ``stage`` in step order
        (the points along the training of ``stage``'s task)."""
        inside = [self.layout.snapshot(s.label) for s in self.snapshots(stage)]
        if not inside:
            raise SpecError("stage", f"stage {stage} has no snapshots in {self.layout.snapshots}")
        return [self.snapshot_folder(stage - 1), *inside]

    def snapshot(self, ref: SnapshotRef) -> dict[str, torch.Tensor]:
        """The trainable weights of snapshot ``ref`` as a state dict (CPU tensors by parameter name)."""
        return load_snapshot_state(self.snapshot_folder(ref))

    def load_into(self, model: torch.nn.Module, ref: SnapshotRef | Path) -> torch.nn.Module:
        """Copy snapshot ``ref`` (or a snapshot folder such as a null's) into ``model``; returns it in eval mode."""
        restore_snapshot(model, ref if isinstance(ref, Path) else self.snapshot_folder(ref))
        model.eval()
        return model

    def load_model(self):
        """A fresh ``(model, tokenizer)`` of the spec (base weights, fine-tuning method applied)."""
        return model_for_spec(self.spec)

    def model_at(self, ref: SnapshotRef | Path):
        """The spec's model with snapshot ``ref``'s weights, in eval mode. The model object is shared
        between calls on this ``Run`` (each call overwrites its trainable weights)."""
        return self.load_into(self._model_and_tokenizer()[0], ref)

    @property
    def tokenizer(self):
        return self._model_and_tokenizer()[1]

    def _model_and_tokenizer(self) -> tuple:
        if self._loaded is None:
            self._loaded = self.load_model()
        return self._loaded

    @functools.cached_property
    def tasks(self) -> list[PreparedTask]:
        """The run's tasks, encoded with the run's tokenizer, in sequence order. They are the examples the
        run stored (``tasks.json``), or for an older run without them, the spec's tasks made again."""
        stored = stored_tasks(self.layout)
        if stored is None:
            stored = [task for task, _ in build_tasks(self.spec, self.tokenizer)]
            check_remade(stored, self.manifest.get("task_sources") or {}, self.layout.manifest)
        return [prepare_task(task, self.tokenizer) for task in stored]

    def task(self, name: str) -> PreparedTask:
        for t in self.tasks:
            if t.name == name:
                return t
        raise SpecError("task", f"{name!r} not in this run; allowed: {', '.join(self.task_names)}")

    # -- null snapshots ----------------------------------------------------------------------------

    def null_folder(self, label: str) -> Path:
        """Where the null snapshot ``label`` lives (it may not exist yet: :mod:`forgetting.nulls`)."""
        return self.layout.null(label)
