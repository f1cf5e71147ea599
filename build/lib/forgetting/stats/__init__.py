"""Statistics for the book: correlations, partial correlations and linear models with bootstrap
confidence intervals and permutation p-values; bootstrap intervals for means. numpy only.

**Percentile bootstrap** (Efron & Tibshirani 1993): draw ``n_boot`` resamples, compute the statistic
on each, and report the (1-ci)/2 and (1+ci)/2 quantiles of those values.

**Cluster bootstrap over tasks** (``groups=``). In a pairwise sweep every observation is a task pair
(A, B) and many pairs share a task: the pairs (A, B), (A, C), (A, D) all carry task A's peculiarities
(how easy it is, how far it sits from pretraining). They are not independent, so resampling pairs as if
they were makes intervals too narrow. The cluster bootstrap resamples the *tasks*: draw K tasks with
replacement from the K tasks, and keep every observation whose tasks were all drawn, with multiplicity
``prod_m c(g_m)`` where ``c(t)`` is how often task t was drawn (a task drawn twice appears in twice as
many pairs, exactly as if the sweep had been run on the resampled task set). ``groups`` is an array of
shape (n,) (one cluster label per observation: the ordinary cluster bootstrap) or (n, m) (m labels per
observation: m = 2 for pairs, e.g. ``list(zip(task_a, task_b))``).

**Permutation p-values** are two-sided: ``p = (1 + #{|r_perm| >= |r|}) / (1 + n_perm)`` (Phipson &
Smyth 2010: never exactly zero). Without groups, y is permuted against x. With groups, pairs are not
exchangeable either, so task *labels* are permuted instead (a Mantel test: ``y'_(A,B) = y_(pi(A), pi(B))``),
which keeps the dependence between pairs that share a task. That needs every relabelled pair to exist
in the sweep (a complete sweep, ordered or unordered); otherwise a warning says so and observations are
permuted.

Everything is deterministic given ``seed`` (one ``numpy.random.Generator`` per call).

The package is split by step, and every name in ``__all__`` is importable from here, its stable path:
:mod:`forgetting.stats.correlations` (correlation coefficients, partial correlation, their validation),
:mod:`forgetting.stats.linear_models` (ordinary least squares), :mod:`forgetting.stats.clustered` (the
Holm correction and correlations over task pairs with several seeds: a two-way bootstrap over tasks and
seeds) and :mod:`forgetting.stats.resampling`
(bootstrap weights, the weighted Pearson r and ranks of a resample, percentile intervals,
permutations, the bootstrap interval of a mean).
"""

from __future__ import annotations

from forgetting.stats.clustered import SeededCorrelation, holm, seeded_correlation
from forgetting.stats.correlations import (
    METHODS,  # noqa: F401  (forgetting.stats.METHODS, the method names, as before the split)
    CorrelationResult,
    correlation,
    partial_correlation,
    pearson,
    rankdata,
    spearman,
)
from forgetting.stats.linear_models import LinearModelResult, linear_model
from forgetting.stats.resampling import bootstrap_mean_ci

__all__ = [
    "CorrelationResult",
    "LinearModelResult",
    "SeededCorrelation",
    "bootstrap_mean_ci",
    "correlation",
    "holm",
    "linear_model",
    "partial_correlation",
    "pearson",
    "rankdata",
    "seeded_correlation",
    "spearman",
]
