"""The mitigation front's arithmetic (forgetting.sweep.front): known answers for learning, forgetting,
the non-dominated front, the hypervolume and the targeted-minus-control differences, and the specs."""

from __future__ import annotations

import pandas as pd
import pytest

from forgetting import mitigations
from forgetting.errors import SpecError
from forgetting.sweep.front import (
    METHODS,
    control_differences,
    front_runs,
    front_spec,
    hypervolume,
    is_on_front,
    learning_and_forgetting,
)


def _evals(r):
    """Long evaluation rows of an R matrix given as rows after task 1..T (base row of zeros)."""
    tasks = [f"t{k}" for k in range(len(r[0]))]
    rows = []
    for stage, values in enumerate([[0.0] * len(tasks)] + r):
        for index, (task, value) in enumerate(zip(tasks, values)):
            rows.append({"stage": stage, "stage_task": "base" if stage == 0 else tasks[stage - 1], "end_of_stage": True,
                         "metric": "exact_match", "task": task, "task_index": index, "value": value, "step": stage})
    return pd.DataFrame(rows)


def test_learning_is_the_mean_new_task_diagonal_and_forgetting_the_mean_drop_from_the_best():
    r = [[0.9, 0.1, 0.0],
         [0.5, 0.8, 0.0],
         [0.2, 0.6, 0.7]]
    learning, forgetting = learning_and_forgetting(_evals(r))
    assert learning == pytest.approx((0.8 + 0.7) / 2)
    assert forgetting == pytest.approx(((0.9 - 0.2) + (0.8 - 0.6)) / 2)


def test_the_front_keeps_the_non_dominated_points():
    points = pd.DataFrame({"learning": [0.5, 0.6, 0.4, 0.6], "forgetting": [0.2, 0.3, 0.25, 0.3]})
    assert is_on_front(points).tolist() == [True, True, False, True]  # two equal points dominate neither


def test_the_hypervolume_is_the_area_under_the_plain_forgetting():
    points = pd.DataFrame({"learning": [0.5, 0.8], "forgetting": [0.2, 0.6]})
    # rectangles [0, 0.8] x [0.6, 1.0] and [0, 0.5] x [0.2, 1.0]: 0.8 * 0.4 + 0.5 * 0.4
    assert hypervolume(points, 1.0) == pytest.approx(0.32 + 0.20)
    assert hypervolume(pd.DataFrame({"learning": [0.9], "forgetting": [1.2]}), 1.0) == 0.0


def test_targeted_minus_control_is_paired_by_seed():
    rows = []
    for seed, (ft, fc) in enumerate([(0.2, 0.5), (0.3, 0.5), (0.25, 0.6)]):
        rows += [{"method": "drift", "strength": 1.0, "seed": seed, "forgetting": ft, "learning": 0.5},
                 {"method": "drift_random", "strength": 1.0, "seed": seed, "forgetting": fc, "learning": 0.5}]
    table = control_differences(pd.DataFrame(rows))
    (row,) = table.to_dict("records")
    assert row["method"] == "drift" and row["n_seeds"] == 3
    assert row["forgetting_diff"] == pytest.approx((-0.3 - 0.2 - 0.35) / 3) and row["forgetting_high"] < 0
    assert row["learning_diff"] == 0.0


def test_every_method_makes_a_valid_spec_and_its_controls_are_matched():
    assert len(METHODS) >= 12 and all(len(m.strengths) >= 4 for m in METHODS.values())
    for method in METHODS.values():
        for strength in method.strengths:
            spec = front_spec(method.name, strength, 3)
            assert spec.seed == 3 and spec.name.startswith("front-")
            if spec.finetune.mitigation is not None:
                mitigations.build(spec.finetune.mitigation.name, spec.finetune.mitigation.strength,
                                  spec.finetune.mitigation.options)  # options and strength accepted
        if method.control_of:
            assert METHODS[method.control_of].strengths == method.strengths
    assert len(front_runs(seeds=(0, 1, 2, 3, 4))) == 5 * (1 + sum(len(m.strengths) for m in METHODS.values()))
    with pytest.raises(SpecError, match="method: 'ewk' not allowed"):
        front_spec("ewk", 1.0, 0)


def test_points_average_the_seeds_and_mark_the_front_and_the_summary_ranks_by_hypervolume():
    from forgetting.sweep.front import front_points, method_summary

    rows = []
    for seed in range(3):
        rows.append({"method": "plain", "strength": 0.0, "seed": seed, "learning": 0.6, "forgetting": 0.8 + 0.01 * seed})
        for strength, (x, y) in {0.25: (0.6, 0.5), 0.5: (0.4, 0.3)}.items():
            rows.append({"method": "replay", "strength": strength, "seed": seed, "learning": x, "forgetting": y})
            rows.append({"method": "l2", "strength": strength, "seed": seed, "learning": x - 0.1, "forgetting": y + 0.1})
    points = front_points(pd.DataFrame(rows))
    plain = points[points["method"] == "plain"].iloc[0]
    assert plain["forgetting"] == pytest.approx(0.81) and plain["n_seeds"] == 3 and plain["role"] == "plain"
    assert plain["forgetting_low"] < 0.81 < plain["forgetting_high"]
    assert points.loc[points["method"] == "replay", "on_front"].all()
    assert not points.loc[points["method"] == "l2", "on_front"].any()
    summary = method_summary(points)
    assert summary["method"].tolist() == ["replay", "l2"] and summary.loc[0, "best_strength"] == 0.5
    # replay: [0, 0.6] x [0.5, 0.81] and [0, 0.4] x [0.3, 0.5]
    assert summary.loc[0, "hypervolume"] == pytest.approx(0.6 * 0.31 + 0.4 * 0.2)
