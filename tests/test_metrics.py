"""Continual-learning metrics on hand-written matrices, with the arithmetic written out."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.metrics import chaudhry_forgetting_per_task, forgetting_curve, summarize, summarize_frame

R3 = np.array([
    [0.9, 0.1, 0.0],
    [0.5, 0.8, 0.2],
    [0.3, 0.6, 0.7],
])


def test_summarize_3x3_by_hand():
    s = summarize(R3, baseline=[0.1, 0.0, 0.1], reference=[1.0, 0.9, 0.8])
    assert s["acc"] == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    assert s["bwt"] == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)  # -0.4
    assert s["fwt"] == pytest.approx(((0.1 - 0.0) + (0.2 - 0.1)) / 2)  # R[0,1]-b1, R[1,2]-b2
    assert s["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert s["intransigence"] == pytest.approx(((1.0 - 0.9) + (0.9 - 0.8) + (0.8 - 0.7)) / 3)


def test_forgetting_uses_the_best_earlier_row_not_the_diagonal():
    # task 0 improves after task 1 (0.6 -> 0.8) then drops to 0.5: BWT sees -0.1, forgetting 0.3
    R = np.array([[0.6, 0.0, 0.0, 0.0], [0.8, 0.7, 0.0, 0.0], [0.7, 0.9, 0.9, 0.0], [0.5, 0.5, 0.4, 0.8]])
    s = summarize(R)
    assert s["bwt"] == pytest.approx(((0.5 - 0.6) + (0.5 - 0.7) + (0.4 - 0.9)) / 3)
    assert chaudhry_forgetting_per_task(R) == pytest.approx([0.8 - 0.5, 0.9 - 0.5, 0.9 - 0.4])
    assert s["forgetting"] == pytest.approx((0.3 + 0.4 + 0.5) / 3)
    assert s["fwt"] is None and s["intransigence"] is None


def test_inputs_of_every_kind_agree():
    want = summarize(R3)
    assert summarize(R3.tolist()) == want
    assert summarize(torch.tensor(R3)) == pytest.approx(want)
    assert summarize(pd.DataFrame(R3)) == want


def test_single_task():
    s = summarize([[0.7]])
    assert s == {"acc": 0.7, "bwt": None, "forgetting": None, "fwt": None, "intransigence": None}


@pytest.mark.parametrize(
    ("R", "kwargs", "message"),
    [
        (np.ones((2, 3)), {}, "R: expected a square T x T matrix, got shape (2, 3)"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), {}, "R: contains NaN"),
        (np.eye(3), {"baseline": [0.0, 0.0]}, "baseline: expected a vector of length T=3"),
        (np.eye(3), {"reference": [0.0] * 4}, "reference: expected a vector of length T=3"),
    ],
)
def test_bad_input_names_the_argument(R, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        summarize(R, **kwargs)


def test_long_table_with_the_row_before():
    rows = [{"row": 0, "col": j, "value": v} for j, v in enumerate([0.1, 0.0, 0.1])]
    rows += [{"row": i + 1, "col": j, "value": R3[i, j]} for i in range(3) for j in range(3)]
    assert summarize_frame(pd.DataFrame(rows)) == pytest.approx(summarize(R3, baseline=[0.1, 0.0, 0.1]))


def test_forgetting_curve():
    assert forgetting_curve([0.0, 0.5, 0.9, 0.4, 0.6], learned_at=1).tolist() == pytest.approx([0, 0, 0, 0.5, 0.3])
