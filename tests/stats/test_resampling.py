"""Known answers for forgetting.stats.resampling: bootstrap weights (ordinary and cluster), percentile
intervals, the label permutation (Mantel) scheme and permutation p-values."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from forgetting.stats import rankdata
from forgetting.stats.resampling import (
    _bootstrap,
    _bootstrap_weights,
    _group_codes,
    _p_value,
    _percentile_interval,
    _permutation_indices,
    _permutation_r,
    _permutation_scheme,
    _weighted_pearson,
    _weighted_ranks,
)


def ordered_pairs(K: int) -> np.ndarray:
    return np.array([(i, j) for i in range(K) for j in range(K) if i != j])


def test_cluster_bootstrap_weights_are_the_sweep_rerun_on_the_resampled_tasks():
    # Re-running the sweep on drawn tasks, e.g. (0, 0, 1, 2): every ordered pair of draws (p, q), p != q,
    # whose tasks differ yields the measured pair (task_p, task_q); (0, 1) then appears 2 x 1 times,
    # pairs with task 3 vanish. The bootstrap weights must be exactly these counts.
    pairs = np.array([(i, j) for i in range(4) for j in range(4) if i != j])
    weights = _bootstrap_weights(np.random.default_rng(0), len(pairs), 50, pairs)
    draws = np.random.default_rng(0).integers(0, 4, size=(50, 4))  # the same task draws
    for w, drawn in zip(weights, draws):
        want = np.zeros(len(pairs))
        for p in range(4):
            for q in range(4):
                if p != q and drawn[p] != drawn[q]:
                    want[np.flatnonzero((pairs[:, 0] == drawn[p]) & (pairs[:, 1] == drawn[q]))] += 1
        np.testing.assert_array_equal(w, want)


def test_weighted_statistics_equal_those_of_the_repeated_sample():
    """Integer weights w: Pearson r and average ranks as if observation i appeared w_i times."""
    rng = np.random.default_rng(4)
    x = np.round(rng.normal(size=9), 1)  # ties
    y = x + rng.normal(size=9)
    w = np.array([[2, 0, 1, 1, 3, 0, 1, 1, 2], [1] * 9], dtype=float)
    r = _weighted_pearson(x[None, :], y[None, :], w)
    ranks = _weighted_ranks(x, w)
    for b in range(2):
        rep = np.repeat(np.arange(9), w[b].astype(int))
        assert r[b] == pytest.approx(np.corrcoef(x[rep], y[rep])[0, 1], rel=1e-12)
        kept = w[b] > 0
        want = {float(v): rk for v, rk in zip(x[rep], rankdata(x[rep]))}
        np.testing.assert_allclose(ranks[b][kept], [want[float(v)] for v in x[kept]])
    flat = _weighted_pearson(np.ones(5), np.arange(5.0), np.ones(5))
    assert np.isnan(flat)  # a constant side: undefined, not +-1 from rounding


def test_ordinary_bootstrap_weights_count_the_draws():
    w = _bootstrap_weights(np.random.default_rng(1), 7, 30, None)
    draws = np.random.default_rng(1).integers(0, 7, size=(30, 7))
    assert w.shape == (30, 7) and w.dtype == np.float64
    np.testing.assert_array_equal(w, [np.bincount(d, minlength=7) for d in draws])
    assert (w.sum(axis=1) == 7).all()


def test_bootstrap_evaluates_in_chunks_in_draw_order():
    """More replicates than one chunk: the same weights as drawn in one go, in order."""
    rows = _bootstrap(np.random.default_rng(2), 5, 600, None, lambda w: w)
    assert rows.shape == (600, 5)
    rng = np.random.default_rng(2)
    want = np.concatenate([_bootstrap_weights(rng, 5, b, None) for b in (256, 256, 88)])
    np.testing.assert_array_equal(rows, want)
    assert _bootstrap(np.random.default_rng(2), 5, 0, None, lambda w: w).shape == (0,)


def test_percentile_interval_drops_nan_replicates():
    reps = np.arange(100.0)
    low, high, n_valid = _percentile_interval(reps, 0.9, "x")
    assert (low, high, n_valid) == (pytest.approx(4.95), pytest.approx(94.05), 100)
    with_nan = np.concatenate([reps, [np.nan] * 5])
    assert _percentile_interval(with_nan, 0.9, "x") == (low, high, 100)  # 5 of 105 dropped: no warning
    with pytest.warns(RuntimeWarning, match="x: only 100 of 200"):
        _percentile_interval(np.concatenate([reps, [np.nan] * 100]), 0.9, "x")
    low, high, n_valid = _percentile_interval(np.zeros((0, 3)), 0.9, "x")
    assert n_valid == 0 and low.shape == (3,) and np.isnan(low).all()


def test_group_codes():
    codes = _group_codes(list(zip("abca", "bcab")), 4)
    np.testing.assert_array_equal(codes, [[0, 1], [1, 2], [2, 0], [0, 1]])
    assert _group_codes(None, 4) is None
    with pytest.raises(ValueError, match="at least 3 distinct groups"):
        _group_codes(["a", "b", "a"], 3)
    with pytest.raises(ValueError, match=r"groups: expected shape \(4,\) or \(4, m\)"):
        _group_codes(["a", "b", "c"], 4)


def test_permutation_scheme_recognises_complete_sweeps():
    assert _permutation_scheme(None) is None
    assert _permutation_scheme(ordered_pairs(5)) is False  # ordered: (A, B) and (B, A) both measured
    unordered = np.array([(i, j) for i in range(5) for j in range(i + 1, 5)])
    assert _permutation_scheme(unordered) is True
    with pytest.warns(RuntimeWarning, match="do not form a complete sweep"):
        assert _permutation_scheme(ordered_pairs(5)[:-1]) is None


@pytest.mark.parametrize("canonical", [False, True])
def test_label_permutation_relabels_every_pair_consistently(canonical):
    """idx[p, i] is the observation whose labels are pi_p(labels of i): a bijection of the sweep, and
    the pair (A, B) goes where (pi(A), pi(B)) is, for one pi per permutation."""
    K = 5
    codes = np.array([(i, j) for i in range(K) for j in range(K) if (i != j and (not canonical or i < j))])
    idx = _permutation_indices(np.random.default_rng(3), len(codes), 20, codes, canonical)
    for row in idx:
        assert sorted(row) == list(range(len(codes)))
        pi = []  # recover pi: label a goes to the one label shared by the images of all pairs with a
        for label in range(K):
            candidates = set(range(K))
            for i in np.flatnonzero((codes == label).any(axis=1)):
                candidates &= set(codes[row[i]].tolist())
            assert len(candidates) == 1
            pi.append(candidates.pop())
        assert sorted(pi) == list(range(K))
        for i, j in enumerate(row):
            mapped = (pi[codes[i][0]], pi[codes[i][1]])
            if canonical:
                assert set(codes[j].tolist()) == set(mapped)
            else:
                assert tuple(codes[j].tolist()) == mapped
    plain = _permutation_indices(np.random.default_rng(3), 6, 4, None, None)
    assert all(sorted(r) == list(range(6)) for r in plain)


def test_p_value_and_permuted_correlations():
    assert _p_value(0.5, np.array([0.1, -0.6, 0.5, 0.2])) == 3 / 5  # |-0.6| and |0.5| count, plus one
    assert np.isnan(_p_value(0.5, np.zeros(0)))
    z = np.array([-1.0, 0.0, 1.0]) / np.sqrt(2.0 / 3.0)  # standardised: r = z . z_perm / n
    r = _permutation_r(np.random.default_rng(0), z, z, 50, None, None)
    # the 6 permutations of 3: identity 1, the swap of the ends -1, the other swaps 0.5, the cycles -0.5
    assert r.shape == (50,) and set(np.round(r, 12).tolist()) == {1.0, 0.5, -0.5, -1.0}


def test_deterministic_and_no_warning_on_complete_sweeps():
    codes = ordered_pairs(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = _permutation_indices(np.random.default_rng(5), len(codes), 7, codes, _permutation_scheme(codes))
    b = _permutation_indices(np.random.default_rng(5), len(codes), 7, codes, False)
    np.testing.assert_array_equal(a, b)
