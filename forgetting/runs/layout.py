"""The layout of a run folder: the one place that spells its file names.

A run folder ``DIR`` (written by ``forgetting run SPEC --out DIR``)::

    DIR/manifest.json          spec, spec hash, seed, tasks, provenance (package version, git commit, created_at)
    DIR/tasks.json             every task's examples, source and sha256 (forgetting.tasks.records): the run's own copy
    DIR/state.json             completed stages and snapshot labels, in order (drives resume)
    DIR/evals.parquet          long-format evaluations (see forgetting.evaluate.EVAL_COLUMNS)
    DIR/train_log.parquet      step, stage, task, loss, learning rate
    DIR/reference.parquet      the joint multi-task reference run's evaluations (when the spec asks for it)
    DIR/snapshots/<label>/     trainable weights as safetensors + meta.json (forgetting.runs.snapshots)
    DIR/nulls/<label>/         null snapshots (forgetting.nulls), same format
    DIR/analysis/              the mechanism report: one parquet per table + manifest.json
    DIR/dynamics.parquet       the mechanisms along a stage, + dynamics.json (arguments, code fingerprint)
    DIR/similarity_alignment_n<n>.parquet   a sweep pair's gradient alignment at theta_A (n examples)
    DIR/causal.parquet         the restoration studies (forgetting.causal), + causal.json (arguments, code fingerprint)
    DIR/weights.json           sha256 of each snapshot's weights + the machine (a published copy; forgetting.runs.integrity)
    DIR/checksums.json         size and sha256 of every file, checked before the folder is read (forgetting.runs.checksums)

Snapshot labels are ``stage{i:02d}-{task}`` at the end of stage ``i`` (``stage00-base`` before any
training) and ``stage{i:02d}-{task}-step{s:06d}`` inside a stage (``s`` = global optimizer step).
Every file is written atomically (:mod:`forgetting.files`): a killed run leaves complete files or none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MANIFEST = "manifest.json"
STATE = "state.json"
TASKS = "tasks.json"
EVALS = "evals.parquet"
TRAIN_LOG = "train_log.parquet"
REFERENCE = "reference.parquet"
SNAPSHOTS = "snapshots"
NULLS = "nulls"
ANALYSIS = "analysis"
PRODUCT_MANIFEST = "manifest.json"  # inside a product folder such as analysis/
DYNAMICS = "dynamics.parquet"
DYNAMICS_MANIFEST = "dynamics.json"
SWEEP_ALIGNMENT = "similarity_alignment_n{n}.parquet"  # per number of examples
CAUSAL = "causal.parquet"
CAUSAL_MANIFEST = "causal.json"
WEIGHTS_RECORD = "weights.json"  # the checksums of the snapshots a published copy's tables were computed from

#: The files a published copy of a run holds, where the run has them (tables, never weights).
TABLE_FILES = (MANIFEST, TASKS, STATE, EVALS, TRAIN_LOG, REFERENCE, DYNAMICS, DYNAMICS_MANIFEST, CAUSAL, CAUSAL_MANIFEST,
               WEIGHTS_RECORD)
TABLE_DIRS = (ANALYSIS,)
#: Glob patterns of further tables a run folder may hold, one file per argument (sweep alignment per n).
TABLE_PATTERNS = (SWEEP_ALIGNMENT.format(n="*"),)
WEIGHT_DIRS = (SNAPSHOTS, NULLS)


def snapshot_label(stage: int, task: str, step: int | None = None) -> str:
    """``stage{stage:02d}-{task}``, or ``...-step{step:06d}`` for a snapshot inside a stage."""
    return f"stage{stage:02d}-{task}" + (f"-step{step:06d}" if step is not None else "")


@dataclass(frozen=True)
class RunLayout:
    """The paths inside one run folder ``root``."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def state(self) -> Path:
        return self.root / STATE

    @property
    def tasks(self) -> Path:
        return self.root / TASKS

    @property
    def evals(self) -> Path:
        return self.root / EVALS

    @property
    def train_log(self) -> Path:
        return self.root / TRAIN_LOG

    @property
    def reference(self) -> Path:
        return self.root / REFERENCE

    @property
    def snapshots(self) -> Path:
        return self.root / SNAPSHOTS

    def snapshot(self, label: str) -> Path:
        return self.snapshots / label

    @property
    def nulls(self) -> Path:
        return self.root / NULLS

    def null(self, label: str) -> Path:
        return self.nulls / label

    @property
    def analysis(self) -> Path:
        return self.root / ANALYSIS

    @property
    def analysis_manifest(self) -> Path:
        return self.analysis / PRODUCT_MANIFEST

    @property
    def dynamics(self) -> Path:
        return self.root / DYNAMICS

    @property
    def dynamics_manifest(self) -> Path:
        return self.root / DYNAMICS_MANIFEST

    @property
    def causal(self) -> Path:
        """The restoration studies' table (:func:`forgetting.causal.report.causal_for`)."""
        return self.root / CAUSAL

    @property
    def causal_manifest(self) -> Path:
        return self.root / CAUSAL_MANIFEST

    def sweep_alignment(self, n_examples: int) -> Path:
        """The cached :func:`forgetting.sweep.pairs.sweep_alignment` rows of a sweep pair's run."""
        return self.root / SWEEP_ALIGNMENT.format(n=n_examples)

    @property
    def weights_record(self) -> Path:
        """The checksums of the snapshots (:mod:`forgetting.runs.integrity`), kept by a published copy."""
        return self.root / WEIGHTS_RECORD

    def has_weights(self) -> bool:
        """Whether the folder holds its snapshots (a run, not a published copy of its tables)."""
        return self.snapshots.is_dir()
