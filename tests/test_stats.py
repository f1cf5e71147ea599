"""Bootstrap intervals: known answers and coverage."""

from __future__ import annotations

import numpy as np
import pytest

from forgetting.stats import bootstrap_mean_ci


def test_mean_and_interval_contain_the_truth_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        x = rng.normal(2.0, 1.0, size=30)
        mean, low, high = bootstrap_mean_ci(x, n_boot=500, seed=trial)
        assert mean == pytest.approx(x.mean())
        assert low < mean < high
        covered += low <= 2.0 <= high
    assert 0.88 <= covered / 200 <= 0.99  # nominal 0.95, percentile bootstrap runs slightly narrow at n=30


def test_deterministic_and_degenerate_cases():
    x = [0.1, 0.4, 0.35, 0.8]
    assert bootstrap_mean_ci(x, seed=3) == bootstrap_mean_ci(x, seed=3)
    assert bootstrap_mean_ci([0.5]) == (0.5, 0.5, 0.5)
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="values: need at least one value"):
        bootstrap_mean_ci([])
