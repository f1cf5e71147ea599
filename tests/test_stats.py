"""Statistics: exact values against numpy references, interval coverage in simulations, the cluster
bootstrap and the label permutation on pair sweeps with shared tasks, partial correlation, OLS."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from forgetting import stats
from forgetting.stats import (
    CorrelationResult,
    bootstrap_mean_ci,
    correlation,
    linear_model,
    partial_correlation,
    pearson,
    rankdata,
    spearman,
)


def brute_ranks(x) -> np.ndarray:
    """rank_i = #{x_k < x_i} + (#{x_k == x_i} + 1) / 2, written out in O(n^2)."""
    x = np.asarray(x, dtype=float)
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


def pair_sweep(rng: np.random.Generator, K: int = 8, rho: float = 0.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An ordered sweep over the K (K - 1) pairs of K tasks: x_AB = u_A + u_B + e, y_AB = v_A + v_B + f.

    corr(u, v) = rho across tasks, every term has variance 1 except e, f (sd 0.5), so the correlation
    over pairs is cov / var = 2 rho / (2 + 0.25). Pairs sharing a task share its u and v: not independent.
    """
    u = rng.normal(size=K)
    v = rho * u + np.sqrt(1 - rho**2) * rng.normal(size=K)
    a, b = np.array([(i, j) for i in range(K) for j in range(K) if i != j]).T
    x = u[a] + u[b] + 0.5 * rng.normal(size=len(a))
    y = v[a] + v[b] + 0.5 * rng.normal(size=len(a))
    return x, y, np.column_stack([a, b])


# ----------------------------------------------------------------------------------------------
# Coefficients
# ----------------------------------------------------------------------------------------------


def test_pearson_exact_on_known_data():
    # x - 3 = (-2, -1, 0, 1, 2), y - 4 = (-2, 0, 1, 0, 1): sxy = 4 + 0 + 0 + 0 + 2 = 6, sxx = 10, syy = 6
    # r = 6 / sqrt(60) = sqrt(0.6)
    x, y = [1, 2, 3, 4, 5], [2, 4, 5, 4, 5]
    assert pearson(x, y) == pytest.approx(np.sqrt(0.6), abs=1e-14)
    assert correlation(x, y, n_boot=10, n_perm=10).r == pytest.approx(np.sqrt(0.6), abs=1e-14)


def test_pearson_and_spearman_match_numpy_references():
    rng = np.random.default_rng(0)
    x = rng.normal(size=50)
    y = x + rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    xt, yt = np.round(x, 0), np.round(y, 0)  # many ties
    assert np.array_equal(rankdata(xt), brute_ranks(xt))
    want = np.corrcoef(brute_ranks(xt), brute_ranks(yt))[0, 1]
    assert spearman(xt, yt) == pytest.approx(want, abs=1e-12)
    assert correlation(xt, yt, "spearman", n_boot=10, n_perm=10).r == pytest.approx(want, abs=1e-12)


def test_spearman_by_hand_with_ties_and_monotone_invariance():
    # ranks of y = (2, 4, 5, 4, 5): 2 -> 1, the two 4s -> 2.5, the two 5s -> 4.5
    assert rankdata([2, 4, 5, 4, 5]).tolist() == [1.0, 2.5, 4.5, 2.5, 4.5]
    # x ranks 1..5 (centred -2..2), y ranks centred (-2, -0.5, 1.5, -0.5, 1.5):
    # sxy = 4 + 0.5 + 0 - 0.5 + 3 = 7, sxx = 10, syy = 4 + 0.25 + 2.25 + 0.25 + 2.25 = 9 -> 7 / sqrt(90)
    assert spearman([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]) == pytest.approx(7 / np.sqrt(90), abs=1e-14)
    x = np.linspace(0.1, 3, 20)
    assert spearman(x, np.exp(3 * x)) == pytest.approx(1.0)
    assert spearman(x, -np.log(x)) == pytest.approx(-1.0)
    assert pearson(x, np.exp(3 * x)) < 0.9


# ----------------------------------------------------------------------------------------------
# Bootstrap intervals
# ----------------------------------------------------------------------------------------------


def test_correlation_interval_covers_the_truth_in_a_simulation():
    rng = np.random.default_rng(1)
    rho, covered, trials = 0.6, 0, 100
    cov = [[1.0, rho], [rho, 1.0]]
    for trial in range(trials):
        x, y = rng.multivariate_normal([0, 0], cov, size=60).T
        result = correlation(x, y, n_boot=400, n_perm=0, seed=trial)
        assert result.ci_low < result.r < result.ci_high
        covered += result.ci_low <= rho <= result.ci_high
    assert 0.85 <= covered / trials <= 0.99  # nominal 0.95; the percentile interval runs a bit narrow


def test_cluster_bootstrap_is_wider_and_covers_where_the_pair_bootstrap_does_not():
    rng = np.random.default_rng(2)
    truth = 2 * 0.6 / 2.25
    covered = {"pairs": 0, "tasks": 0}
    width = {"pairs": 0.0, "tasks": 0.0}
    trials = 80
    for trial in range(trials):
        x, y, pairs = pair_sweep(rng)
        naive = correlation(x, y, n_boot=300, n_perm=0, seed=trial)
        cluster = correlation(x, y, n_boot=300, n_perm=0, seed=trial, groups=pairs)
        assert cluster.r == naive.r and cluster.resampling == "clusters" and cluster.n_clusters == 8
        for key, result in (("pairs", naive), ("tasks", cluster)):
            covered[key] += result.ci_low <= truth <= result.ci_high
            width[key] += result.ci_high - result.ci_low
    # pairs resampled as if independent: intervals far too narrow (about half the nominal coverage)
    assert width["tasks"] > 1.8 * width["pairs"]
    assert covered["pairs"] / trials < 0.75
    assert covered["tasks"] / trials > 0.8


def test_constant_resamples_are_dropped_and_counted():
    # 3 distinct points: about 1 in 4 resamples of 3 repeats a single point (or a constant x) -> dropped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = correlation([0.0, 1.0, 2.0], [0.0, 1.0, 3.0], n_boot=400, n_perm=0)
    assert 0 < result.n_boot_valid < 400
    assert np.isfinite(result.ci_low) and np.isfinite(result.ci_high)


# ----------------------------------------------------------------------------------------------
# Permutation p-values
# ----------------------------------------------------------------------------------------------


def test_permutation_p_value_small_for_strong_and_uniformish_for_none():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    strong = correlation(x, x + 0.3 * rng.normal(size=40), n_boot=0, n_perm=2000)
    assert strong.p_value == pytest.approx(1 / 2001)  # no permutation reaches r ~ 0.95
    assert np.isnan(strong.ci_low)
    p_values = np.array([
        correlation(rng.normal(size=30), rng.normal(size=30), n_boot=0, n_perm=500, seed=i).p_value for i in range(60)
    ])
    assert 0.35 < p_values.mean() < 0.65  # uniform on (0, 1) has mean 0.5
    assert (p_values < 0.05).mean() <= 0.15  # about 5 percent


def test_label_permutation_controls_false_positives_on_pair_sweeps():
    rng = np.random.default_rng(4)
    naive, mantel = [], []
    for trial in range(40):
        x, y, pairs = pair_sweep(rng, rho=0.0)  # no association between the tasks' u and v
        naive.append(correlation(x, y, n_boot=0, n_perm=500, seed=trial).p_value)
        result = correlation(x, y, n_boot=0, n_perm=500, seed=trial, groups=pairs)
        assert result.permutation == "labels"
        mantel.append(result.p_value)
    assert np.mean(np.array(naive) < 0.05) > 0.3  # pairs permuted as if independent: many false alarms
    assert np.mean(np.array(mantel) < 0.05) <= 0.15


def test_unordered_sweeps_and_incomplete_sweeps():
    x, y, pairs = pair_sweep(np.random.default_rng(5))
    upper = pairs[:, 0] < pairs[:, 1]
    result = correlation(x[upper], y[upper], n_boot=50, n_perm=200, groups=pairs[upper])
    assert result.permutation == "labels" and result.n == 28
    with pytest.warns(RuntimeWarning, match="do not form a complete sweep"):
        result = correlation(x[:-1], y[:-1], n_boot=50, n_perm=200, groups=pairs[:-1])
    assert result.permutation == "observations"
    labelled = [(f"task{a}", f"task{b}") for a, b in pairs]  # any hashable labels work
    assert correlation(x, y, n_boot=50, n_perm=50, groups=labelled) == correlation(x, y, n_boot=50, n_perm=50, groups=pairs)


def test_one_label_per_observation_is_the_ordinary_cluster_bootstrap():
    # 10 tasks measured with 3 seeds each: the seeds of a task share it, so resample tasks
    rng = np.random.default_rng(12)
    task_effect = rng.normal(size=10)
    task = np.repeat(np.arange(10), 3)
    x = task_effect[task] + 0.2 * rng.normal(size=30)
    y = task_effect[task] + 0.2 * rng.normal(size=30)
    with pytest.warns(RuntimeWarning, match="permutes observations"):  # labels repeat: no Mantel test
        result = correlation(x, y, n_boot=300, n_perm=100, groups=task)
    assert result.resampling == "clusters" and result.n_clusters == 10 and result.permutation == "observations"
    assert result.ci_high - result.ci_low > correlation(x, y, n_boot=300, n_perm=0).ci_high - \
        correlation(x, y, n_boot=300, n_perm=0).ci_low


def test_deterministic_given_seed():
    rng = np.random.default_rng(6)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    first = correlation(x, y, "spearman", n_boot=300, n_perm=300, seed=7)
    assert first == correlation(x, y, "spearman", n_boot=300, n_perm=300, seed=7)
    assert first.ci_low != correlation(x, y, "spearman", n_boot=300, n_perm=300, seed=8).ci_low
    assert isinstance(first, CorrelationResult) and first.to_dict()["method"] == "spearman"
    assert str(first).startswith("spearman r = ")


# ----------------------------------------------------------------------------------------------
# Partial correlation
# ----------------------------------------------------------------------------------------------


def test_partial_correlation_equals_the_one_covariate_formula():
    rng = np.random.default_rng(7)
    z = rng.normal(size=80)
    x = z + rng.normal(size=80)
    y = 0.5 * x + z + rng.normal(size=80)
    rxy, rxz, ryz = np.corrcoef(x, y)[0, 1], np.corrcoef(x, z)[0, 1], np.corrcoef(y, z)[0, 1]
    want = (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert partial_correlation(x, y, z, n_boot=20, n_perm=20).r == pytest.approx(want, abs=1e-12)
    # partial Spearman = the same formula on ranks
    rx, ry, rz = rankdata(x), rankdata(y), rankdata(z)
    sxy, sxz, syz = np.corrcoef(rx, ry)[0, 1], np.corrcoef(rx, rz)[0, 1], np.corrcoef(ry, rz)[0, 1]
    want_s = (sxy - sxz * syz) / np.sqrt((1 - sxz**2) * (1 - syz**2))
    assert partial_correlation(x, y, [z], "spearman", n_boot=20, n_perm=20).r == pytest.approx(want_s, abs=1e-12)


def test_partial_correlation_removes_a_confound():
    rng = np.random.default_rng(8)
    n = 400
    z = rng.normal(size=n)
    x, y = z + rng.normal(size=n), z + rng.normal(size=n)  # related only through z
    raw = correlation(x, y, n_boot=300, n_perm=300)
    assert raw.r == pytest.approx(0.5, abs=0.1) and raw.ci_low > 0.3 and raw.p_value < 0.01
    partial = partial_correlation(x, y, z, n_boot=300, n_perm=300)
    assert partial.ci_low < 0 < partial.ci_high and partial.p_value > 0.05 and partial.partial_on == 1
    # a direct effect survives: residuals e1 and 0.5 e1 + e2 correlate 0.5 / sqrt(1.25) = 0.447
    y2 = 0.5 * x + z + rng.normal(size=n)
    direct = partial_correlation(x, y2, np.column_stack([z, rng.normal(size=n)]), n_boot=300, n_perm=300)
    assert direct.r == pytest.approx(0.5 / np.sqrt(1.25), abs=0.08)
    assert direct.ci_low < 0.5 / np.sqrt(1.25) < direct.ci_high and direct.partial_on == 2


def test_partial_correlation_errors():
    x, y = np.arange(10.0), np.arange(10.0) ** 2
    with pytest.raises(ValueError, match="covariates: column 0 is constant"):
        partial_correlation(x, y, np.ones(10))
    with pytest.raises(ValueError, match=r"covariates: expected shape \(10,\) or \(10, k\)"):
        partial_correlation(x, y, np.ones(9))
    with pytest.raises(ValueError, match="covariates: explain x or y completely"):
        partial_correlation(x, y, 2 * x + 1)
    with pytest.raises(ValueError, match="covariates: columns are collinear"):
        partial_correlation(x, y, np.column_stack([np.sin(x), 2 * np.sin(x)]))


# ----------------------------------------------------------------------------------------------
# Linear model
# ----------------------------------------------------------------------------------------------


def test_linear_model_recovers_known_coefficients():
    rng = np.random.default_rng(9)
    n = 200
    df = pd.DataFrame({"x1": rng.normal(size=n), "x2": rng.normal(2.0, 3.0, size=n)})
    df["y"] = 1.0 + 2.0 * df["x1"] - 3.0 * df["x2"] + 0.5 * rng.normal(size=n)
    fit = linear_model(df, "y", ["x1", "x2"], n_boot=400)
    assert fit.table["term"].tolist() == ["intercept", "x1", "x2"]
    for term, truth in {"intercept": 1.0, "x1": 2.0, "x2": -3.0}.items():
        row = fit.table.set_index("term").loc[term]
        assert row["coef"] == pytest.approx(truth, abs=4 * row["se"])
        # the bootstrap interval agrees with the normal-theory one, coef +- 1.96 se
        assert row["ci_low"] < row["coef"] < row["ci_high"]
        assert row["ci_high"] - row["ci_low"] == pytest.approx(2 * 1.96 * row["se"], rel=0.25)
    assert fit.r2 > 0.99 and fit.adj_r2 < fit.r2 and fit.n == n
    # the normal equations give the same coefficients
    X = np.column_stack([np.ones(n), df["x1"], df["x2"]])
    np.testing.assert_allclose(list(fit.coef.values()), np.linalg.solve(X.T @ X, X.T @ df["y"]), rtol=1e-10)
    # standardised: coefficient = beta * sd(x); the intercept becomes mean(y)
    z = linear_model(df, "y", ["x1", "x2"], standardize=True, n_boot=0)
    assert z.coef["x2"] == pytest.approx(fit.coef["x2"] * df["x2"].std(ddof=0), rel=1e-10)
    assert z.coef["intercept"] == pytest.approx(df["y"].mean())
    assert z.r2 == pytest.approx(fit.r2) and np.isnan(z.table["ci_low"]).all()


def test_linear_model_standard_errors_are_calibrated():
    rng = np.random.default_rng(10)
    x = rng.normal(size=50)  # a fixed design
    estimates, ses = [], []
    for _ in range(300):
        df = pd.DataFrame({"x": x, "y": 0.7 * x + rng.normal(size=50)})
        fit = linear_model(df, "y", ["x"], n_boot=0)
        estimates.append(fit.coef["x"])
        ses.append(fit.se["x"])
    assert np.std(estimates) == pytest.approx(np.mean(ses), rel=0.15)
    assert np.mean(estimates) == pytest.approx(0.7, abs=0.03)


def test_linear_model_with_groups_by_column_name():
    x, y, pairs = pair_sweep(np.random.default_rng(11))
    df = pd.DataFrame({"x": x, "y": y, "a": pairs[:, 0], "b": pairs[:, 1]})
    naive = linear_model(df, "y", ["x"], n_boot=300)
    cluster = linear_model(df, "y", ["x"], n_boot=300, groups=["a", "b"])
    assert cluster.resampling == "clusters" and cluster.coef == naive.coef
    width = lambda fit: (fit.table["ci_high"] - fit.table["ci_low"]).iloc[1]  # noqa: E731
    assert width(cluster) > width(naive)


def test_linear_model_errors():
    df = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "c": [1.0] * 4, "y": [1.0, 3.0, 2.0, 5.0]})
    with pytest.raises(ValueError, match=r"df: missing columns \['nope'\]"):
        linear_model(df, "y", ["nope"])
    with pytest.raises(ValueError, match="features: column 'c' is constant"):
        linear_model(df, "y", ["x", "c"])
    with pytest.raises(ValueError, match="features: columns .* are collinear"):
        linear_model(df.assign(x2=2 * df["x"]), "y", ["x", "x2"])
    with pytest.raises(ValueError, match=r"df: need more rows than coefficients \(2\)"):
        linear_model(df.iloc[:2], "y", ["x"])
    with pytest.raises(ValueError, match="groups: column 'task' not in df"):
        linear_model(df, "y", ["x"], groups="task")


# ----------------------------------------------------------------------------------------------
# Degenerate input
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0]), {}, "x: all 4 values equal 1.0; a correlation with a constant"),
        (([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]), {}, "y: all 3 values equal 5.0"),
        (([1.0, 2.0, 3.0], [1.0, 2.0]), {}, r"y: expected 3 values \(as many as x\), got 2"),
        (([1.0, 2.0], [1.0, 2.0]), {}, "x, y: need at least 3 observations"),
        (([1.0, np.nan, 3.0], [1.0, 2.0, 3.0]), {}, r"x: contains NaN or infinite values at \[1\]"),
        (([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), {"method": "kendall"}, "method: 'kendall' is not one of pearson, spearman"),
        (([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), {"ci": 95}, "ci: must be strictly between 0 and 1"),
        (([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]), {"groups": ["a", "b"]}, r"groups: expected shape \(3,\) or \(3, m\)"),
        (([1.0, 2.0, 3.0], [1.0, 2.0, 4.0]), {"groups": [("a", "b"), ("b", "a"), ("a", "b")]},
         "groups: need at least 3 distinct groups"),
    ],
)
def test_correlation_errors_name_the_argument(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        correlation(*args, **kwargs)


def test_bootstrap_mean_interval_contains_the_truth_at_the_nominal_rate():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        x = rng.normal(2.0, 1.0, size=30)
        mean, low, high = bootstrap_mean_ci(x, n_boot=500, seed=trial)
        assert mean == pytest.approx(x.mean())
        assert low < mean < high
        covered += low <= 2.0 <= high
    assert 0.88 <= covered / 200 <= 0.99  # nominal 0.95, percentile bootstrap runs slightly narrow at n=30


def test_bootstrap_mean_deterministic_and_degenerate_cases():
    x = [0.1, 0.4, 0.35, 0.8]
    assert bootstrap_mean_ci(x, seed=3) == bootstrap_mean_ci(x, seed=3)
    assert bootstrap_mean_ci([0.5]) == (0.5, 0.5, 0.5)
    assert bootstrap_mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="values: need at least one value"):
        bootstrap_mean_ci([])
    with pytest.raises(ValueError, match="values: contains NaN"):
        bootstrap_mean_ci([0.1, np.nan])


def test_stats_is_the_stable_path_of_its_parts():
    """Every public name of the modules forgetting.stats is split into is importable from
    forgetting.stats as the same object, and forgetting.stats.__all__ lists them."""
    for part in (stats.correlations, stats.linear_models, stats.resampling):
        for name in part.__all__:
            assert name in stats.__all__, name
            assert getattr(stats, name) is getattr(part, name), name
    assert all(hasattr(stats, name) for name in stats.__all__)

