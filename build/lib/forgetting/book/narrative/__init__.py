"""The words of the chapters' prose, computed from their tables by stated rules.

A chapter glues every number and every judging word its text shows ("close", "most", "none",
"larger", "flatter" ...) from one of these functions, so a sentence cannot be written for one set of
numbers and shown next to another. Each function takes the tables the chapter already has and returns
``{glue name: text}``; its docstring states the rule behind each word. Words that are not chapter
specific come from :mod:`forgetting.ledger.prose` (``share_word``, ``comparison_word``, ``count_text``,
``sign_word``).

- :mod:`~forgetting.book.narrative.gradients`: chapter 02 (gradient interference);
- :mod:`~forgetting.book.narrative.drift`: chapter 03 (representational drift);
- :mod:`~forgetting.book.narrative.landscape`: chapter 04 (loss landscape);
- :mod:`~forgetting.book.narrative.heads`: chapter 05 (attention heads);
- :mod:`~forgetting.book.narrative.similarity`: chapter 06 (task similarity);
- :mod:`~forgetting.book.narrative.measuring`: chapter 01 (the performance matrix and its metrics);
- :mod:`~forgetting.book.narrative.scale`: every chapter's words for our model's size next to the paper's.
"""

from __future__ import annotations

from forgetting.book.narrative.drift import (
    drift_words,
    head_drift_words,
    layer_words,
    readout_words,
)
from forgetting.book.narrative.gradients import (
    alignment_words,
    conflict_words,
    pair_words,
)
from forgetting.book.narrative.heads import (
    severity_words,
    threshold_words,
    timing_words,
)
from forgetting.book.narrative.landscape import (
    curvature_words,
    matched_words,
    plane_words,
    segment_words,
    spectrum_words,
    taylor_words,
)
from forgetting.book.narrative.measuring import (
    early_forgetting_words,
    heldout_words,
    intransigence_words,
    transfer_words,
)
from forgetting.book.narrative.scale import approximate_count, scale_words
from forgetting.book.narrative.similarity import (
    correlation_words,
    declared_words,
    jackknife_words,
    meaning_words,
    partial_words,
    peak_words,
    resampling_words,
    similarity_pair_words,
    strongest_measure,
    sweep_words,
    task_effect_words,
)

__all__ = [
    "alignment_words",
    "approximate_count",
    "conflict_words",
    "correlation_words",
    "curvature_words",
    "declared_words",
    "drift_words",
    "early_forgetting_words",
    "head_drift_words",
    "heldout_words",
    "intransigence_words",
    "jackknife_words",
    "layer_words",
    "matched_words",
    "meaning_words",
    "pair_words",
    "partial_words",
    "peak_words",
    "plane_words",
    "readout_words",
    "resampling_words",
    "scale_words",
    "segment_words",
    "severity_words",
    "similarity_pair_words",
    "spectrum_words",
    "strongest_measure",
    "sweep_words",
    "task_effect_words",
    "taylor_words",
    "threshold_words",
    "timing_words",
    "transfer_words",
]
