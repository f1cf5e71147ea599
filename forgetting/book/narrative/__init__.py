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
- :mod:`~forgetting.book.narrative.heads`: chapter 05 (attention heads).
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

__all__ = [
    "alignment_words",
    "conflict_words",
    "curvature_words",
    "drift_words",
    "head_drift_words",
    "layer_words",
    "matched_words",
    "pair_words",
    "plane_words",
    "readout_words",
    "segment_words",
    "severity_words",
    "spectrum_words",
    "taylor_words",
    "threshold_words",
    "timing_words",
]
