"""forgetting.stats.clustered: Holm's adjustment (known answers, invariants) and the correlation over task
pairs with seeds (point estimate, determinism, coverage of a known r, a calibrated null)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from forgetting.stats import correlation, holm, pearson, seeded_correlation, spearman

# --- Holm ------------------------------------------------------------------------------------------------


def test_holm_known_answers():
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max
    # 0.02, 0.03, 0.06, 0.06, back in the input order
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])  # 2 x 0.5 = 1, capped
    np.testing.assert_allclose(holm([0.02]), [0.02])  # a family of one: unchanged
    out = holm([0.5, np.nan, 0.01])  # NaN stays NaN and is not counted: m = 2
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.5, 0.02])
    assert holm([]).shape == (0,)


def test_holm_invariants_and_bad_input():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 0.2, size=25)
    adj = holm(p)
    assert (adj >= p).all() and (adj <= 1).all()
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all()  # the order of the p-values is kept
    assert adj[order[0]] == pytest.approx(min(1, 25 * p[order[0]]))  # the smallest: Bonferroni
    with pytest.raises(ValueError, match="p_values"):
        holm([0.1, 1.2])


# --- the correlation over pairs and seeds ---------------------------------------------------------------------


def _sweep(n_tasks: int, n_seeds: int, beta: float, rng, tau: float = 0.5, sigma: float = 1.0) -> pd.DataFrame:
    """All ordered pairs of n_tasks tasks, x_p ~ N(0, 1), y_ps = beta x_p + t_a + e_ps with a task effect
    t_a ~ N(0, tau^2) of task A (shared by all of A's pairs) and seed noise e ~ N(0, sigma^2)."""
    tasks = [f"t{i}" for i in range(n_tasks)]
    effect = dict(zip(tasks, rng.normal(0, tau, n_tasks)))
    rows = []
    for a, b in itertools.permutations(tasks, 2):
        x = rng.normal()
        rows += [{"task_a": a, "task_b": b, "seed": s, "x": x, "y": beta * x + effect[a] + rng.normal(0, sigma)}
                 for s in range(n_seeds)]
    return pd.DataFrame(rows)


def _fit(d: pd.DataFrame, method: str = "pearson", **kwargs):
    return seeded_correlation(d["x"], d["y"], d[["task_a", "task_b"]], d["seed"], method, **kwargs)


def test_point_estimate_is_the_correlation_with_the_seed_mean():
    d = _sweep(6, 3, 0.8, np.random.default_rng(0))
    means = d.groupby(["task_a", "task_b"], sort=False).agg(x=("x", "mean"), y=("y", "mean"))
    res = _fit(d, n_boot=200, n_perm=200)
    assert res.r == pytest.approx(pearson(means["x"], means["y"]))
    assert _fit(d, "spearman", n_boot=0, n_perm=0).r == pytest.approx(spearman(means["x"], means["y"]))
    assert (res.n_pairs, res.n_tasks, res.n_seeds, res.permutation) == (30, 6, 3, "labels")
    assert res.ci_low <= res.r <= res.ci_high and res.n_boot_valid == 200
    assert res == _fit(d, n_boot=200, n_perm=200)  # deterministic given seed
    assert res.to_dict()["r"] == res.r and "6 tasks x 3 seeds" in str(res)
    # the row order of the observations does not matter
    assert _fit(d.sample(frac=1, random_state=1), n_boot=0, n_perm=0).r == pytest.approx(res.r)


def test_one_seed_matches_the_task_cluster_bootstrap():
    d = _sweep(8, 1, 0.5, np.random.default_rng(1))
    ours = _fit(d, n_boot=2000, n_perm=2000)
    theirs = correlation(d["x"], d["y"], groups=d[["task_a", "task_b"]].to_numpy(), n_boot=2000, n_perm=2000)
    assert ours.r == pytest.approx(theirs.r)
    # one seed: the same resampling scheme, other random draws: the intervals and p agree to Monte Carlo error
    assert abs(ours.ci_low - theirs.ci_low) < 0.06 and abs(ours.ci_high - theirs.ci_high) < 0.06
    assert abs(ours.p_value - theirs.p_value) < 0.02


def test_interval_covers_the_true_correlation():
    rng = np.random.default_rng(7)
    beta, tau, sigma, S = 0.8, 0.5, 1.0, 3
    true_r = beta / np.sqrt(beta**2 + tau**2 + sigma**2 / S)  # corr(x_p, ybar_p) in the population
    fits = [_fit(_sweep(8, S, beta, rng, tau, sigma), n_boot=400, n_perm=0, seed=i) for i in range(40)]
    covered = [res.ci_low <= true_r <= res.ci_high for res in fits]
    assert np.mean(covered) >= 0.85  # nominal 0.95; the check is coarse (40 sweeps)


def test_null_gives_r_near_zero_and_roughly_uniform_p():
    rng = np.random.default_rng(11)
    results = [_fit(_sweep(8, 3, 0.0, rng), n_boot=0, n_perm=300, seed=i) for i in range(80)]
    r = np.array([res.r for res in results])
    p = np.array([res.p_value for res in results])
    assert abs(r.mean()) < 0.05
    assert 0.35 < p.mean() < 0.65
    assert (p < 0.05).mean() <= 0.125 and (p < 0.5).mean() > 0.3


def test_incomplete_sweep_and_bad_input():
    d = _sweep(6, 2, 0.8, np.random.default_rng(2))
    partial = d[(d.task_a != "t0") | (d.task_b != "t1")]  # one pair missing: label permutation impossible
    with pytest.warns(RuntimeWarning, match="complete sweep"):
        assert _fit(partial, n_boot=100, n_perm=100).permutation == "observations"
    one_seed_missing = d.drop(index=d.index[0])  # a pair with one of its two seeds: still every pair
    assert _fit(one_seed_missing, n_boot=100, n_perm=100).n_pairs == 30
    with pytest.raises(ValueError, match="appears twice"):
        _fit(pd.concat([d, d.iloc[:1]]))
    with pytest.raises(ValueError, match="method"):
        _fit(d, "kendall")
    with pytest.raises(ValueError, match="pairs"):
        seeded_correlation(d["x"], d["y"], d["task_a"], d["seed"])
    with pytest.raises(ValueError, match="all .* values equal"):
        seeded_correlation(np.ones(len(d)), d["y"], d[["task_a", "task_b"]], d["seed"])
