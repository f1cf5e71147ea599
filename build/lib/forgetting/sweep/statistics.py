"""Similarity against forgetting: correlations, the intermediate-similarity peak and task effects over
the pairs of a sweep (:mod:`forgetting.sweep.pairs`).

**Similarity against forgetting** (:func:`pair_table`, :func:`similarity_correlations`,
:func:`quadratic_peak`). The pairs of a sweep share tasks, so correlations are bootstrapped over TASKS
(the cluster bootstrap of :mod:`forgetting.stats`), not over pairs. The intermediate-similarity peak
(Ramasesh et al. 2020) is tested with a quadratic ``f = b0 + b1 s + b2 s^2``: a peak inside the data needs
b2 < 0 (its interval below 0) and the vertex ``s* = -b1 / (2 b2)`` inside the observed range of s.
:func:`task_effects` says how much of the forgetting is explained by which task is A and which is B alone
(the pairs share tasks, so task identity alone can look like a similarity effect), before any similarity enters.

**The claim-5 tests** (:func:`similarity_tests`), declared before the sweep was run. Primary (claim 5):
predictor ``fisher`` (the Fisher task-embedding cosine at the base model), forgetting ``forgetting_loss``
(A's loss increase, nats/token). Primary (claim 5b): ``gradient_conflict = -gradient_cosine`` (base-model
gradients) with ``forgetting_loss``. Secondary: every other aggregate measure of
:func:`forgetting.mechanisms.similarity.similarity_matrix` (``gradient_cosine`` is left out: it is
``-gradient_conflict``) and the two primary predictors, against each of ``forgetting_loss``,
``forgetting_fraction``, ``forgetting_answer``; their p-values are Holm-corrected together
(:func:`forgetting.stats.holm`), each primary is a family of one. Every test is
:func:`forgetting.stats.seeded_correlation`: r of the predictor with the seed-mean forgetting of each ordered
pair, the interval of the two-way cluster bootstrap over tasks and seeds, the task-label permutation p.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from forgetting.errors import SpecError
from forgetting.stats import (
    correlation,
    holm,
    linear_model,
    partial_correlation,
    pearson,
    seeded_correlation,
    spearman,
)

# ---------------------------------------------------------------------------------------------------
# similarity against forgetting
# ---------------------------------------------------------------------------------------------------

#: The aggregate similarity measures a pair table can carry (similarity_matrix and sweep_alignment).
PAIR_SIMILARITIES = ("gradient_cosine", "gradient_cosine_attention", "gradient_cosine_mlp", "representation",
                     "representation_subspace", "token_overlap", "token_jaccard", "answer_overlap", "fisher",
                     "fisher_distance", "alignment_at_a", "update_alignment")
#: The forgetting measures of a sweep (:data:`forgetting.sweep.pairs.SWEEP_COLUMNS`).
FORGETTING_MEASURES = ("forgetting_loss", "forgetting_exact", "forgetting_answer")


def pair_table(sweep: pd.DataFrame, *similarities: pd.DataFrame) -> pd.DataFrame:
    """One row per ordered pair: the sweep's columns and one column per aggregate similarity measure.

    ``similarities`` are long tables (:data:`forgetting.mechanisms.similarity.SIMILARITY_COLUMNS`) of
    :func:`forgetting.mechanisms.similarity.similarity_matrix` and
    :func:`forgetting.sweep.pairs.sweep_alignment`; only their aggregate rows (``layer`` <NA>) are used, averaged over seeds
    if there are several. Pairs missing from a similarity table get NaN there. A sweep over several
    seeds (a ``seed`` column with more than one value) is first averaged per pair over the seeds (numeric
    columns; ``seed`` becomes the number of seeds, ``run`` is dropped), so that each pair is one observation.
    """
    missing = [c for c in ("task_a", "task_b") if c not in getattr(sweep, "columns", ())]
    if missing:
        raise SpecError("sweep", f"missing column(s) {', '.join(missing)}; pass the table of pairwise_sweep")
    table = sweep.copy()
    if "seed" in table.columns and table["seed"].nunique() > 1:
        numeric = [c for c in table.select_dtypes("number").columns if c != "seed"]
        grouped = table.groupby(["task_a", "task_b"], sort=False)
        table = grouped[numeric].mean().join(grouped["seed"].nunique()).reset_index()
    for sim in similarities:
        agg = sim[sim["layer"].isna()] if "layer" in sim.columns else sim
        wide = agg.pivot_table(index=["task_a", "task_b"], columns="measure", values="value", aggfunc="mean")
        wide = wide.drop(columns=[c for c in wide.columns if c in table.columns])
        table = table.merge(wide.reset_index(), on=["task_a", "task_b"], how="left")
    return table


def _groups(table: pd.DataFrame) -> np.ndarray | None:
    n_tasks = len(set(table["task_a"]) | set(table["task_b"]))
    return table[["task_a", "task_b"]].to_numpy() if n_tasks >= 3 else None


def similarity_correlations(
    table: pd.DataFrame,
    similarity: Sequence[str] | None = None,
    forgetting: Sequence[str] = FORGETTING_MEASURES,
    methods: Sequence[str] = ("pearson", "spearman"),
    *,
    cluster: bool = True,
    given: Sequence[str] | None = None,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Correlation of every similarity column with every forgetting column of a :func:`pair_table`.

    :func:`forgetting.stats.correlation` with ``groups = (task_a, task_b)`` (``cluster=True``: the cluster
    bootstrap over tasks and the Mantel label permutation; ``cluster=False``: pairs resampled as if
    independent, the too-narrow interval, for comparison). A constant column gives NaN. ``given``: column
    names to partial out (:func:`forgetting.stats.partial_correlation`), e.g. ``["answer_a_before"]``: how
    well A had been learned, which bounds how much of it can be forgotten.

    Returns:
        DataFrame with one row per similarity, forgetting measure and method, and the columns
        ``similarity, forgetting, method, given, n, n_tasks, r, ci_low, ci_high, p_value, resampling,
        n_boot_valid`` (``given``: the partialled-out columns, comma-separated, or empty).
    """
    import warnings

    similarity = [c for c in (similarity or PAIR_SIMILARITIES) if c in table.columns]
    given = list(given or [])
    unknown = [c for c in [*forgetting, *given] if c not in table.columns]
    if unknown:
        raise SpecError("forgetting", f"column(s) {', '.join(unknown)} not in the table; allowed: "
                                      f"{', '.join(c for c in FORGETTING_MEASURES if c in table.columns)}")
    groups = _groups(table) if cluster else None
    n_tasks = len(set(table["task_a"]) | set(table["task_b"]))
    rows = []
    for sim, forg, method in itertools.product(similarity, forgetting, methods):
        data = table[list(dict.fromkeys([sim, forg, *given, "task_a", "task_b"]))].dropna()
        base = {"similarity": sim, "forgetting": forg, "method": method, "given": ", ".join(given), "n": len(data),
                "n_tasks": n_tasks}
        kwargs = {"n_boot": n_boot, "n_perm": n_perm, "seed": seed, "ci": ci,
                  "groups": data[["task_a", "task_b"]].to_numpy() if groups is not None else None}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # few defined resamples: n_boot_valid says so
                res = (partial_correlation(data[sim], data[forg], data[given], method, **kwargs) if given
                       else correlation(data[sim], data[forg], method, **kwargs))
        except ValueError:  # a constant column or too few pairs: undefined
            rows.append({**base, "r": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
                         "resampling": "none", "n_boot_valid": 0})
            continue
        rows.append({**base, "r": res.r, "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value,
                     "resampling": res.resampling, "n_boot_valid": res.n_boot_valid})
    return pd.DataFrame(rows)


def quadratic_peak(table: pd.DataFrame, similarity: str, forgetting: str, *, n_boot: int = 2000, seed: int = 0,
                   ci: float = 0.95) -> dict[str, Any]:
    """Fit ``forgetting = b0 + b1 s + b2 s^2`` over the pairs (cluster bootstrap over tasks) and ask whether
    forgetting peaks at an intermediate similarity.

    Returns ``{"b1", "b2", "b2_ci_low", "b2_ci_high", "vertex", "s_min", "s_max", "r2_linear", "r2_quadratic",
    "peak_inside", "verdict", "n", "n_boot_valid"}``: ``vertex = -b1 / (2 b2)``; ``peak_inside`` is True when
    b2 < 0 and the vertex lies inside [s_min, s_max]; ``verdict`` is ``"intermediate peak"`` when in
    addition the whole interval of b2 is below 0, ``"peak not resolved"`` when only the point estimate
    has one, and ``"no intermediate peak"`` otherwise.
    """
    import warnings

    for column, field in ((similarity, "similarity"), (forgetting, "forgetting")):
        if column not in getattr(table, "columns", ()):
            raise SpecError(field, f"column {column!r} not in the table")
    data = table[[similarity, forgetting, "task_a", "task_b"]].dropna()
    frame = pd.DataFrame({"s": data[similarity].to_numpy(), "s2": data[similarity].to_numpy() ** 2,
                          "f": data[forgetting].to_numpy(), "task_a": data["task_a"].to_numpy(),
                          "task_b": data["task_b"].to_numpy()})
    groups = ["task_a", "task_b"] if _groups(frame) is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        quad = linear_model(frame, "f", ["s", "s2"], n_boot=n_boot, seed=seed, ci=ci, groups=groups)
        lin = linear_model(frame, "f", ["s"], n_boot=0)
    b1, b2 = quad.coef["s"], quad.coef["s2"]
    row = quad.table.set_index("term").loc["s2"]
    vertex = -b1 / (2 * b2) if b2 != 0 else float("nan")
    s_min, s_max = float(frame["s"].min()), float(frame["s"].max())
    inside = bool(b2 < 0 and s_min < vertex < s_max)
    verdict = ("intermediate peak" if inside and row["ci_high"] < 0 else
               "peak not resolved" if inside else "no intermediate peak")
    return {"similarity": similarity, "forgetting": forgetting, "b1": float(b1), "b2": float(b2),
            "b2_ci_low": float(row["ci_low"]), "b2_ci_high": float(row["ci_high"]), "vertex": float(vertex),
            "s_min": s_min, "s_max": s_max, "r2_linear": float(lin.r2), "r2_quadratic": float(quad.r2),
            "peak_inside": inside, "verdict": verdict, "n": quad.n, "n_boot_valid": quad.n_boot_valid}


def task_effects(table: pd.DataFrame, forgetting: Sequence[str] = FORGETTING_MEASURES) -> pd.DataFrame:
    """How much of the variance of each forgetting measure over the pairs the identity of A and of B explain.

    With f_AB the forgetting of pair (A, B) and fbar its mean over all pairs::

        by_a     = sum_AB (fbar_A. - fbar)^2 / sum_AB (f_AB - fbar)^2     (fbar_A.: mean over pairs with that A)
        by_b     = the same with the mean over pairs with that B
        additive = R^2 of the least-squares fit f_AB = m + alpha_A + beta_B

    ``by_a`` near 1 means forgetting is a property of the old task (how well it was learned, how fragile it
    is), whatever follows; a similarity measure can then correlate with forgetting only through A.
    Returns one row per forgetting measure: ``forgetting, by_a, by_b, additive, n``.
    """
    missing = [c for c in ("task_a", "task_b", *forgetting) if c not in getattr(table, "columns", ())]
    if missing:
        raise SpecError("table", f"missing column(s) {', '.join(missing)}; pass pair_table(...) or pairwise_sweep(...)")
    rows = []
    for f in forgetting:
        data = table[["task_a", "task_b", f]].dropna()
        y = data[f].to_numpy(dtype=np.float64)
        total = float(((y - y.mean()) ** 2).sum())
        def share(col, data=data, f=f, y=y, total=total):
            return float(((data.groupby(col)[f].transform("mean") - y.mean()) ** 2).sum()) / total
        X = np.column_stack([np.ones(len(y)), pd.get_dummies(data["task_a"], drop_first=True, dtype=float),
                             pd.get_dummies(data["task_b"], drop_first=True, dtype=float)])
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        additive = 1 - float(((y - X @ beta) ** 2).sum()) / total if total > 0 else float("nan")
        rows.append({"forgetting": f, "by_a": share("task_a") if total > 0 else float("nan"),
                     "by_b": share("task_b") if total > 0 else float("nan"), "additive": additive, "n": len(y)})
    return pd.DataFrame(rows)


def leave_one_task_out(table: pd.DataFrame, similarity: str, forgetting: str, method: str = "pearson") -> pd.DataFrame:
    """The correlation of ``similarity`` with ``forgetting`` with all pairs of one task left out, for each task.

    A jackknife over tasks: a correlation that rests on the pairs of a single task (for example the two
    orders of one very similar pair) changes a lot when that task is dropped. Returns one row per task:
    ``left_out, r, n`` (``n`` pairs remain; ``r`` is NaN with fewer than 3 pairs or a constant column),
    followed by a row ``left_out = "(none)"`` with all pairs.
    """
    if method not in ("pearson", "spearman"):
        raise SpecError("method", f"{method!r} not allowed; allowed: pearson, spearman")
    for column, field in ((similarity, "similarity"), (forgetting, "forgetting")):
        if column not in getattr(table, "columns", ()):
            raise SpecError(field, f"column {column!r} not in the table")
    fn = pearson if method == "pearson" else spearman
    data = table[["task_a", "task_b", similarity, forgetting]].dropna()
    tasks = list(dict.fromkeys([*data["task_a"], *data["task_b"]]))
    rows = []
    for task in [*tasks, None]:
        keep = data if task is None else data[(data["task_a"] != task) & (data["task_b"] != task)]
        x, y = keep[similarity].to_numpy(dtype=float), keep[forgetting].to_numpy(dtype=float)
        defined = len(keep) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        rows.append({"left_out": task or "(none)", "r": float(fn(x, y)) if defined else float("nan"), "n": len(keep)})
    return pd.DataFrame(rows)


#: The declared primary tests of claims 5 and 5b, each ``(claim, predictor, forgetting measure)``.
PRIMARY_TESTS = (("5", "fisher", "forgetting_loss"), ("5b", "gradient_conflict", "forgetting_loss"))
#: The forgetting measures of the secondary tests.
SECONDARY_FORGETTING = ("forgetting_loss", "forgetting_fraction", "forgetting_answer")
#: Columns of :func:`similarity_tests`.
TEST_COLUMNS = ("predictor", "forgetting", "primary", "claim", "method", "r", "ci_low", "ci_high", "p_value", "p_holm",
                "n_pairs", "n_tasks", "n_seeds", "n_boot_valid", "permutation")


def similarity_tests(pairs: pd.DataFrame, similarity_table: pd.DataFrame, *, method: str = "pearson",
                     n_boot: int = 2000, n_perm: int = 2000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """The claim-5 statistics (module docstring): one row per (predictor, forgetting measure).

    Args:
        pairs: the sweep (:func:`forgetting.sweep.pairs.sweep_table`): one row per ordered pair and seed, with
            ``task_a, task_b, seed`` and the forgetting columns.
        similarity_table: the long table of :func:`forgetting.mechanisms.similarity.similarity_matrix` at the
            base model (only its aggregate rows, ``layer`` NaN, are used); it needs ``fisher`` and
            ``gradient_cosine``.

    Returns:
        :data:`TEST_COLUMNS`: the two primaries first (``primary`` True, ``claim`` "5" / "5b", ``p_holm`` =
        ``p_value``), then the secondaries (``p_holm``: Holm over all of them together). A constant or
        missing column gives NaN.
    """
    missing = [c for c in ("task_a", "task_b", "seed", *SECONDARY_FORGETTING) if c not in getattr(pairs, "columns", ())]
    if missing:
        raise SpecError("pairs", f"missing column(s) {', '.join(missing)}; pass the table of sweep_table")
    agg = similarity_table[similarity_table["layer"].isna()] if "layer" in similarity_table.columns else similarity_table
    wide = agg.pivot_table(index=["task_a", "task_b"], columns="measure", values="value", aggfunc="mean")
    absent = [m for m in ("fisher", "gradient_cosine") if m not in wide.columns]
    if absent:
        raise SpecError("similarity_table", f"missing measure(s) {', '.join(absent)}; compute similarity_matrix "
                                            "with measures including fisher and gradient")
    wide["gradient_conflict"] = -wide["gradient_cosine"]
    predictors = ["fisher", "gradient_conflict", *[m for m in wide.columns
                                                    if m not in ("fisher", "gradient_conflict", "gradient_cosine")]]
    table = pairs.merge(wide.reset_index(), on=["task_a", "task_b"], how="left")
    tests = [(claim, p, f, True) for claim, p, f in PRIMARY_TESTS]
    tests += [("", p, f, False) for p in predictors for f in SECONDARY_FORGETTING
              if (p, f) not in {(p0, f0) for _, p0, f0 in PRIMARY_TESTS}]
    rows = []
    for claim, predictor, forgetting, primary in tests:
        data = table[["task_a", "task_b", "seed", predictor, forgetting]].dropna()
        base = {"predictor": predictor, "forgetting": forgetting, "primary": primary, "claim": claim, "method": method}
        try:
            res = seeded_correlation(data[predictor], data[forgetting], data[["task_a", "task_b"]], data["seed"], method,
                                     n_boot=n_boot, n_perm=n_perm, seed=seed, ci=ci)
            rows.append({**base, **{k: getattr(res, k) for k in ("r", "ci_low", "ci_high", "p_value", "n_pairs",
                                                                  "n_tasks", "n_seeds", "n_boot_valid", "permutation")}})
        except ValueError:  # a constant column or too few pairs or tasks: undefined
            rows.append({**base, "r": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan, "n_pairs": 0,
                         "n_tasks": 0, "n_seeds": 0, "n_boot_valid": 0, "permutation": "none"})
    out = pd.DataFrame(rows)
    out["p_holm"] = out["p_value"]
    secondary = ~out["primary"]
    out.loc[secondary, "p_holm"] = holm(out.loc[secondary, "p_value"].to_numpy())
    return out[list(TEST_COLUMNS)]
