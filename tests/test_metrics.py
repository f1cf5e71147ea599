"""Continual-learning metrics on hand-written matrices, with the arithmetic written out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.metrics import (
    bwt_per_task,
    chaudhry_forgetting_per_task,
    forgetting_curve,
    forgetting_matrix,
    fwt_per_task,
    higher_is_better,
    intransigence_per_task,
    summarize,
    summarize_frame,
)

R3 = np.array([
    [0.9, 0.1, 0.0],
    [0.5, 0.8, 0.2],
    [0.3, 0.6, 0.7],
])

# Task 0 improves after task 1 (0.6 -> 0.8) and then drops to 0.5, so BWT and Chaudhry forgetting differ.
R4 = np.array([
    [0.6, 0.0, 0.0, 0.0],
    [0.8, 0.7, 0.1, 0.0],
    [0.7, 0.9, 0.9, 0.3],
    [0.5, 0.5, 0.4, 0.8],
])


def test_summarize_3x3_by_hand():
    s = summarize(R3, baseline=[0.1, 0.0, 0.1], reference=[1.0, 0.9, 0.8])
    assert set(s) == {"acc", "bwt", "fwt", "forgetting", "intransigence"}
    assert s["acc"] == pytest.approx((0.3 + 0.6 + 0.7) / 3)  # last row: 1.6 / 3
    assert s["bwt"] == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)  # (-0.6 - 0.2) / 2 = -0.4
    assert s["fwt"] == pytest.approx(((0.1 - 0.0) + (0.2 - 0.1)) / 2)  # R[0,1]-b1, R[1,2]-b2: 0.1
    assert s["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)  # best earlier = diagonal here: 0.4
    assert s["intransigence"] == pytest.approx(((1.0 - 0.9) + (0.9 - 0.8) + (0.8 - 0.7)) / 3)  # 0.1
    assert all(isinstance(v, float) for v in s.values())


def test_summarize_4x4_by_hand_with_baseline_and_reference():
    s = summarize(R4, baseline=[0.05, 0.0, 0.2, 0.1], reference=[0.9, 0.95, 0.9, 0.85])
    # ACC: (0.5 + 0.5 + 0.4 + 0.8) / 4 = 2.2 / 4 = 0.55
    assert s["acc"] == pytest.approx(0.55)
    # BWT: ((0.5 - 0.6) + (0.5 - 0.7) + (0.4 - 0.9)) / 3 = (-0.1 - 0.2 - 0.5) / 3 = -0.8 / 3
    assert s["bwt"] == pytest.approx(-0.8 / 3)
    # forgetting: best of rows 0..2 per column 0..2 = (0.8, 0.9, 0.9); minus final (0.5, 0.5, 0.4)
    # = (0.3, 0.4, 0.5), mean 0.4. BWT's -0.8/3 = -0.267 misses task 0's later peak.
    assert s["forgetting"] == pytest.approx(0.4)
    # FWT: R[0,1] - b1 = 0.0 - 0.0, R[1,2] - b2 = 0.1 - 0.2, R[2,3] - b3 = 0.3 - 0.1 -> (0 - 0.1 + 0.2) / 3
    assert s["fwt"] == pytest.approx(0.1 / 3)
    # intransigence: (0.9-0.6, 0.95-0.7, 0.9-0.9, 0.85-0.8) = (0.3, 0.25, 0.0, 0.05), mean 0.6 / 4 = 0.15
    assert s["intransigence"] == pytest.approx(0.15)


def test_per_task_vectors():
    assert bwt_per_task(R4) == pytest.approx([-0.1, -0.2, -0.5])
    assert chaudhry_forgetting_per_task(R4) == pytest.approx([0.8 - 0.5, 0.9 - 0.5, 0.9 - 0.4])
    assert fwt_per_task(R4, [0.05, 0.0, 0.2, 0.1]) == pytest.approx([0.0, -0.1, 0.2])
    assert intransigence_per_task(R4, [0.9, 0.95, 0.9, 0.85]) == pytest.approx([0.3, 0.25, 0.0, 0.05])
    assert bwt_per_task([[0.7]]).shape == (0,) and chaudhry_forgetting_per_task([[0.7]]).shape == (0,)
    with pytest.raises(ValueError, match="baseline: required"):
        fwt_per_task(R4, None)
    with pytest.raises(ValueError, match="reference: required"):
        intransigence_per_task(R4, None)


def test_forgetting_uses_the_best_earlier_row_not_the_diagonal():
    s = summarize(R4)
    assert s["bwt"] == pytest.approx(((0.5 - 0.6) + (0.5 - 0.7) + (0.4 - 0.9)) / 3)
    assert s["forgetting"] == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    assert s["fwt"] is None and s["intransigence"] is None


def test_forgetting_matrix_is_the_forgetting_after_every_stage():
    F = forgetting_matrix(R4)
    # stage 1: task 0 went 0.6 -> 0.8, nothing forgotten
    # stage 2: task 0: max(0.6, 0.8) - 0.7 = 0.1; task 1: 0.7 - 0.9 = -0.2 (it improved)
    # stage 3: the Chaudhry vector (0.3, 0.4, 0.5)
    want = np.array([
        [np.nan, np.nan, np.nan, np.nan],
        [0.6 - 0.8, np.nan, np.nan, np.nan],
        [0.1, -0.2, np.nan, np.nan],
        [0.3, 0.4, 0.5, np.nan],
    ])
    np.testing.assert_allclose(F, want, equal_nan=True)
    np.testing.assert_allclose(F[-1, :-1], chaudhry_forgetting_per_task(R4))


def test_inputs_of_every_kind_agree():
    want = summarize(R3, baseline=[0.1, 0.0, 0.1])
    assert summarize(R3.tolist(), baseline=[0.1, 0.0, 0.1]) == want
    assert summarize(torch.tensor(R3), baseline=torch.tensor([0.1, 0.0, 0.1])) == pytest.approx(want)
    needs_grad = torch.tensor(R3, dtype=torch.float32, requires_grad=True)
    assert summarize(needs_grad) == pytest.approx(summarize(R3), abs=1e-6)
    frame = pd.DataFrame(R3, index=["a", "b", "c"], columns=["a", "b", "c"])
    assert summarize(frame, baseline=pd.Series([0.1, 0.0, 0.1])) == want


def test_single_task():
    assert summarize([[0.7]]) == {"acc": 0.7, "bwt": None, "forgetting": None, "fwt": None, "intransigence": None}
    s = summarize([[0.7]], baseline=[0.2], reference=[0.9])
    assert s["fwt"] is None and s["bwt"] is None
    assert s["intransigence"] == pytest.approx(0.2)  # 0.9 - 0.7


def test_all_nan_baseline_means_not_measured():
    assert summarize(R3, baseline=[np.nan] * 3)["fwt"] is None
    with pytest.raises(ValueError, match=r"baseline: contains NaN or infinite values at tasks \[1\]"):
        summarize(R3, baseline=[0.1, np.nan, 0.1])


@pytest.mark.parametrize(
    ("R", "kwargs", "message"),
    [
        (np.ones((2, 3)), {}, "R: expected a square T x T matrix, got shape (2, 3)"),
        (np.ones((2, 2, 2)), {}, "R: expected a square T x T matrix, got shape (2, 2, 2)"),
        (np.zeros((0, 0)), {}, "R: expected a square T x T matrix, got shape (0, 0)"),
        ([0.1, 0.2], {}, "R: expected a square T x T matrix, got shape (2,)"),
        ([[0.1, 0.2], [0.3]], {}, "R: expected numbers"),
        ([["a", "b"], ["c", "d"]], {}, "R: expected numbers"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), {}, "R: contains NaN or infinite values (first at [(0, 1)])"),
        (np.array([[1.0, 0.0], [np.inf, 1.0]]), {}, "R: contains NaN or infinite values"),
        (np.eye(3), {"baseline": [0.0, 0.0]}, "baseline: expected a vector of length T=3, got shape (2,)"),
        (np.eye(3), {"reference": [0.0] * 4}, "reference: expected a vector of length T=3, got shape (4,)"),
        (np.eye(3), {"reference": {0: 1.0}}, "reference: expected a vector of length T=3 in task order"),
    ],
)
def test_bad_input_names_the_argument(R, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        summarize(R, **kwargs)


def test_higher_is_better_negates_losses_only():
    losses = np.array([[1.0, 3.0], [2.0, 0.5]])
    np.testing.assert_array_equal(higher_is_better(losses, "loss"), -losses)
    np.testing.assert_array_equal(higher_is_better(losses, "eval_loss"), -losses)
    np.testing.assert_array_equal(higher_is_better(losses, "exact_match"), losses)
    # with losses negated, a rise of task 0's loss from 1.0 to 2.0 is forgetting of 1.0
    s = summarize(higher_is_better(losses, "loss"))
    assert s["forgetting"] == pytest.approx(1.0) and s["bwt"] == pytest.approx(-1.0)


def _long(R: np.ndarray, before: list[float]) -> pd.DataFrame:
    rows = [{"row": 0, "col": j, "value": v} for j, v in enumerate(before)]
    rows += [{"row": i + 1, "col": j, "value": R[i, j]} for i in range(len(R)) for j in range(len(R))]
    return pd.DataFrame(rows)


def test_long_table_with_the_row_before():
    table = _long(R3, [0.1, 0.0, 0.1]).sample(frac=1.0, random_state=0)  # order does not matter
    assert summarize_frame(table) == pytest.approx(summarize(R3, baseline=[0.1, 0.0, 0.1]))
    with_ref = summarize_frame(table, reference={0: 1.0, 1: 0.9, 2: 0.8})
    assert with_ref["intransigence"] == pytest.approx(0.1)
    assert summarize_frame(table, reference=[1.0, 0.9, 0.8]) == pytest.approx(with_ref)
    renamed = table.rename(columns={"row": "stage", "col": "task_index"})
    assert summarize_frame(renamed, row="stage", col="task_index") == pytest.approx(summarize_frame(table))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop(columns="value"), r"R_table: missing columns \['value'\]"),
        (lambda t: t.iloc[1:], r"R_table: missing or NaN cells \(row, col\) \[\(0, 0\)\]"),
        (lambda t: pd.concat([t, t.iloc[:1]]), r"R_table: cell \(row, col\) = \[0, 0\] appears more than once"),
        (lambda t: t[t["row"] > 0], r"R_table: expected row = 0..T and col = 0..T-1"),
        (lambda t: t.to_numpy(), "R_table: expected a pandas DataFrame"),
    ],
)
def test_long_table_errors(mutate, message):
    with pytest.raises(ValueError, match=message):
        summarize_frame(mutate(_long(R3, [0.1, 0.0, 0.1])))


def test_long_table_reference_mapping_must_cover_every_task():
    with pytest.raises(ValueError, match=r"reference: no value for col \[2\]"):
        summarize_frame(_long(R3, [0.1, 0.0, 0.1]), reference={0: 1.0, 1: 0.9})


def test_forgetting_curve():
    # best so far from index 1: 0.5, 0.9, 0.9, 0.9 -> minus now: 0, 0, 0.5, 0.3
    assert forgetting_curve([0.0, 0.5, 0.9, 0.4, 0.6], learned_at=1) == pytest.approx([0, 0, 0, 0.5, 0.3])
    # a column of R4 is a curve: task 0 from stage 0 -> (0, 0, 0.1, 0.3)
    assert forgetting_curve(R4[:, 0]) == pytest.approx([0.0, 0.0, 0.1, 0.3])
    assert forgetting_curve(torch.tensor([1.0, 0.5])) == pytest.approx([0.0, 0.5])
    with pytest.raises(ValueError, match=r"learned_at: expected an index in 0..1, got 2"):
        forgetting_curve([1.0, 0.5], learned_at=2)
    with pytest.raises(ValueError, match="values: expected a 1-D sequence"):
        forgetting_curve(R4)
    with pytest.raises(ValueError, match=r"values: contains NaN or infinite values at \[1\]"):
        forgetting_curve([1.0, np.nan])
