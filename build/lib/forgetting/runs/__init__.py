"""Run folders: the :class:`~forgetting.runs.run.Run` object that reads one, its layout, its cache and
code fingerprints.

This package is the only code that knows where things are inside a run folder
(:mod:`forgetting.runs.layout`); everything else opens a run with
:meth:`~forgetting.runs.run.Run.open`.
"""

from forgetting.runs.cache import (
    cache_twin,
    has_weights,
    result_dir,
    run_name,
    stored_or_compute,
)
from forgetting.runs.fingerprint import RUN_CODE, code_fingerprint, code_only
from forgetting.runs.integrity import (
    UnverifiedWeights,
    WeightsMismatch,
    check_pairing,
    weights_digest,
)
from forgetting.runs.layout import RunLayout, snapshot_label
from forgetting.runs.run import Run, SnapshotInfo, model_for_spec, tasks_for_spec

__all__ = [
    "RUN_CODE", "Run", "RunLayout", "SnapshotInfo", "UnverifiedWeights", "WeightsMismatch", "cache_twin",
    "check_pairing", "code_fingerprint", "code_only", "has_weights", "model_for_spec", "result_dir", "run_name",
    "snapshot_label", "stored_or_compute", "tasks_for_spec", "weights_digest",
]
