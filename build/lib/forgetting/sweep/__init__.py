"""The pairwise task-similarity sweep (:mod:`~forgetting.sweep.pairs`: train A then B for every ordered
pair, measure A's forgetting) and its statistics (:mod:`~forgetting.sweep.statistics`: similarity
against forgetting). The similarity measures themselves are :mod:`forgetting.mechanisms.similarity`."""

from forgetting.sweep.pairs import (
    SWEEP_COLUMNS,
    pairwise_sweep,
    sweep_alignment,
    sweep_answers,
    sweep_spec,
    sweep_table,
)
from forgetting.sweep.statistics import (
    FORGETTING_MEASURES,
    PAIR_SIMILARITIES,
    leave_one_task_out,
    pair_table,
    quadratic_peak,
    similarity_correlations,
    similarity_tests,
    task_effects,
)

__all__ = [
    "FORGETTING_MEASURES",
    "PAIR_SIMILARITIES",
    "SWEEP_COLUMNS",
    "leave_one_task_out",
    "pair_table",
    "pairwise_sweep",
    "quadratic_peak",
    "similarity_correlations",
    "similarity_tests",
    "sweep_alignment",
    "sweep_answers",
    "sweep_spec",
    "sweep_table",
    "task_effects",
]
