"""Curvature at matched loss: known answers on synthetic learning and forgetting paths."""

from __future__ import annotations

import numpy as np
import pytest

from forgetting.mechanisms.matched_loss import (
    matched_loss_curvature,
    matched_loss_summary,
)


def test_a_constant_log_offset_is_recovered_at_every_matched_loss():
    # learning path: log lambda = 1 + 0.5 L (any order of the points); forgetting path 0.3 lower in log
    learn_loss = np.array([4.0, 0.2, 2.5, 1.0, 0.5])
    learn_lam = np.exp(1 + 0.5 * learn_loss)
    forget_loss = np.array([0.1, 0.3, 1.7, 3.9, 4.5])  # 0.1 and 4.5 lie outside [0.2, 4.0]
    forget_lam = np.exp(1 + 0.5 * forget_loss - 0.3)
    points = matched_loss_curvature(learn_loss, learn_lam, forget_loss, forget_lam)
    assert list(points.matched) == [False, True, True, True, False]
    assert points.difference[points.matched].to_numpy() == pytest.approx([-0.3] * 3, abs=1e-12)
    assert points.difference[~points.matched].isna().all()
    # learning losses sorted: 0.2, 0.5, 1.0, 2.5, 4.0; 0.3 lies in [0.2, 0.5], 1.7 in [1.0, 2.5], 3.9 in [2.5, 4.0]
    assert points.bracket[points.matched].to_numpy() == pytest.approx([0.3, 1.5, 1.5])
    summary = matched_loss_summary(points)
    assert summary["value"] == pytest.approx(-0.3, abs=1e-12)
    assert (summary["n_matched"], summary["n_points"], summary["loss_low"], summary["loss_high"]) == (3, 5, 0.3, 3.9)
    assert summary["max_bracket"] == pytest.approx(1.5)


def test_interpolation_is_piecewise_linear_in_log_lambda():
    # two learning points (L, lambda) = (1, e^0), (3, e^2): at L = 2 the learning path has log lambda = 1
    points = matched_loss_curvature([3.0, 1.0], [np.e**2, 1.0], [2.0], [np.e**1.5])
    assert points.log_lambda_learning[0] == pytest.approx(1.0) and points.difference[0] == pytest.approx(0.5)


def test_equal_losses_are_averaged_and_nonpositive_eigenvalues_left_out():
    points = matched_loss_curvature([1.0, 1.0, 2.0, 1.5], [np.e**0, np.e**2, np.e**3, -1.0],
                                    [1.0, 2.0, 1.5], [np.e**1, np.e**3, 0.0])
    # learning grid: L = 1 -> mean log = 1, L = 2 -> 3 (the point with lambda = -1 is dropped)
    assert points.difference[:2].to_numpy() == pytest.approx([0.0, 0.0])
    assert not points.matched[2]  # lambda = 0 on the forgetting path: no logarithm
    assert np.isnan(matched_loss_summary(points.iloc[2:])["value"])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="two points"):
        matched_loss_curvature([1.0, 2.0], [1.0, -1.0], [1.5], [1.0])
    with pytest.raises(ValueError, match="same length"):
        matched_loss_curvature([1.0, 2.0], [1.0], [1.5], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        matched_loss_curvature([1.0, 2.0], [1.0, 2.0], [np.nan], [1.0])
