"""Where does forgetting live? Restore part of a model to its value before a stage and measure how much
of the old task's lost loss comes back.

- :func:`~forgetting.causal.restore.recovery` (the primitive), :func:`~forgetting.causal.restore.slice_recovery` (parameter slices) and :func:`~forgetting.causal.heads.head_recovery`
  (attention heads, plain and LoRA): :mod:`forgetting.causal.restore`, :mod:`forgetting.causal.heads`;
- the studies of one pair of models (layers, groups, matrix types, severe vs random heads, interaction):
  :mod:`forgetting.causal.studies`; the spurious-forgetting probe: :mod:`forgetting.causal.spurious`;
- the table of a run, computed once and stored beside it: :func:`~forgetting.causal.report.causal_for` (:mod:`forgetting.causal.report`).
"""

from forgetting.causal.heads import head_patch, head_recovery
from forgetting.causal.report import CAUSAL_CODE, causal_for, causal_run, load_causal
from forgetting.causal.restore import (
    parameter_patch,
    patched,
    recovery,
    slice_patch,
    slice_recovery,
)
from forgetting.causal.studies import CAUSAL_COLUMNS, STUDIES, restoration_rows

__all__ = [
    "CAUSAL_CODE", "CAUSAL_COLUMNS", "STUDIES", "causal_for", "causal_run", "head_patch", "head_recovery",
    "load_causal", "parameter_patch", "patched", "recovery", "restoration_rows", "slice_patch", "slice_recovery",
]
