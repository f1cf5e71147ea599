"""The claims ledger: each claim of the paper, what we measured, and a verdict reached by a stated rule.

Every row is computed from the mechanism tables (:mod:`forgetting.analysis`), the dynamics
(:mod:`forgetting.dynamics`) and, for the similarity claim, a table of task pairs with a similarity and a
forgetting value. Intervals are 95 % percentile bootstraps over the *units* named in each row (old/new
task pairs of every seed, or pairs of a sweep clustered by task); with one seed they show the spread
over pairs only, and the text says so.

Verdicts (one rule per claim, applied to the numbers, never typed by hand):

1. *Gradient interference in attention*: the fraction of attention heads whose old-vs-new gradient
   cosine is negative (conflict rate). **holds** if its interval lies above 0.5 *and* above the conflict
   rate of the MLP matrices; **holds partly** if one of the two; **does not hold** otherwise.
2. *Drift in intermediate layers*: ``1 - CKA`` (before vs after) averaged over the intermediate layers.
   **holds** if the drop clears the reseed null's drop (the larger null) and its interval overlaps the
   paper's 0.32-0.47; **holds partly** if it clears only the continue null, or clears both outside the
   paper's range; **does not hold** if it does not clear the continue null.
3. *Flattening*: ``log(lambda_after / lambda_before)`` of the old task's top Hessian eigenvalue.
   **holds** if the interval of the raw log-ratio is below 0; **holds partly** if only the loss-normalised
   ratio (``lambda_max / loss``) falls; **does not hold** if neither does.
4. *Head disruption*: the fraction of heads beyond both nulls (``severe``, combined score). **holds** if
   its interval overlaps 15-23 % and the first layer's fraction exceeds the last layer's; **holds partly**
   if one of the two; **does not hold** otherwise.
5. *Similarity predicts forgetting*: Pearson r (cluster bootstrap over tasks) between a similarity measure
   and forgetting over ordered task pairs. **holds** if the interval contains 0.87 and excludes 0;
   **holds partly** if it excludes 0 but not 0.87; **does not hold** otherwise (an interval that reaches
   both 0 and 0.87 is no evidence for the claim at our scale). The same rule with gradient *conflict*
   (minus the cosine at the base model) as the predictor tests "forgetting tracks gradient alignment";
   the paper gives no r for it, so there the interval need only lie above 0.
6. *Non-linear interacting dynamics*: ``t50`` of the old task's forgetting as a fraction of the stage
   (:func:`forgetting.dynamics.onset_steps`) and the mechanisms that reach half of their change no later.
   **holds** if forgetting is front-loaded (``t50 <= 0.2`` of the stage) and at least two mechanisms move
   no later than forgetting; **holds partly** if one of the two; **does not hold** otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from forgetting.analysis import analysis_for
from forgetting.dynamics import dynamics_for, dynamics_spec, onset_steps
from forgetting.measures import Measure, measures
from forgetting.mechanisms.drift import intermediate_layers
from forgetting.profiles import experiment_spec, run_cached, seeds, sweep_settings
from forgetting.runs.cache import is_published
from forgetting.mechanisms.similarity import similarity_matrix
from forgetting.sweep import pairwise_sweep, sweep_spec
from forgetting.stats import bootstrap_mean_ci, correlation

PAPER_DRIFT = (0.32, 0.47)
PAPER_SEVERE = (0.15, 0.23)
PAPER_R = 0.87
VERDICTS = ("holds", "holds partly", "does not hold")


@dataclass(frozen=True)
class LedgerRow:
    """One claim: what the paper says, what we measured (mean and interval), and the verdict."""

    claim: str
    paper: str
    measured: str
    value: float
    ci_low: float
    ci_high: float
    units: str
    verdict: str


def _verdict(both: bool, one: bool) -> str:
    return VERDICTS[0] if both else VERDICTS[1] if one else VERDICTS[2]


def _ci(values) -> tuple[float, float, float]:
    return bootstrap_mean_ci(np.asarray(values, dtype=float))


def _pair_keys(df: pd.DataFrame) -> list[str]:
    return [c for c in ("seed", "stage", "old_task") if c in df.columns]


def adjacent_pairs(df: pd.DataFrame, sequence: list[str] | None) -> pd.DataFrame:
    """The rows whose old task is the one trained just before the stage (``sequence[stage - 2]``): the
    only pairs whose nulls (continue / re-train *that* task) are matched controls. ``None``: all rows."""
    if sequence is None:
        return df
    return df[[old == sequence[stage - 2] for stage, old in zip(df["stage"], df["old_task"])]]


def _overlaps(low: float, high: float, claimed: tuple[float, float]) -> bool:
    """Whether the interval [low, high] overlaps the paper's range ``claimed``."""
    return low <= claimed[1] and high >= claimed[0]


def _fmt(mean: float, low: float, high: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def interference_row(gradients: pd.DataFrame, sequence: list[str] | None = None) -> LedgerRow:
    """Claim 1 from the ``gradients`` table (rows of several seeds told apart by a ``seed`` column)."""
    keys = _pair_keys(gradients)
    heads = gradients[gradients["unit"] == "head"]
    mlp = gradients[(gradients["unit"] == "matrix") & (gradients["group"] == "mlp")]
    head_rate = heads.groupby(keys)["cosine"].apply(lambda c: float((c < 0).mean()))
    mlp_rate = mlp.groupby(keys)["cosine"].apply(lambda c: float((c < 0).mean())).reindex(head_rate.index)
    mean, low, high = _ci(head_rate)
    _, diff_low, _ = _ci(head_rate - mlp_rate)
    mlp_mean = float(mlp_rate.mean())
    return LedgerRow(
        claim="1. Old and new gradients conflict, most in attention",
        paper="negative cosine, concentrated in attention projections; alignment predicts forgetting",
        measured=f"attention heads in conflict: {_fmt(mean, low, high)} (MLP matrices {mlp_mean:.2f})",
        value=mean, ci_low=low, ci_high=high, units=f"{len(head_rate)} old/new pairs",
        verdict=_verdict(low > 0.5 and diff_low > 0, low > 0.5 or diff_low > 0),
    )


def drift_row(drift: pd.DataFrame, sequence: list[str] | None = None) -> LedgerRow:
    """Claim 2 from the ``drift`` table (with ``continue`` and ``reseed`` null rows); with the run's task
    ``sequence``, on the pairs whose nulls are matched (:func:`adjacent_pairs`)."""
    drift = adjacent_pairs(drift, sequence)
    keys = _pair_keys(drift)
    mid = drift[drift["layer"].isin(intermediate_layers(drift["layer"]))]
    drop = (1 - mid.groupby(keys + ["null"])["cka"].mean()).unstack("null")
    mean, low, high = _ci(drop[""])
    nulls = {k: float(drop[k].mean()) for k in ("continue", "reseed") if k in drop}
    if len(nulls) < 2:
        raise ValueError("drift: needs the continue and reseed null rows (analysis_for(..., nulls=True))")
    _, beyond_reseed, _ = _ci(drop[""] - drop["reseed"])
    _, beyond_continue, _ = _ci(drop[""] - drop["continue"])
    in_range = _overlaps(low, high, PAPER_DRIFT)
    return LedgerRow(
        claim="2. Representations drift in intermediate layers",
        paper=f"layer CKA drops by {PAPER_DRIFT[0]}-{PAPER_DRIFT[1]}",
        measured=(f"1 - CKA, intermediate layers: {_fmt(mean, low, high)}; nulls: continue "
                  f"{nulls['continue']:.2f}, reseed {nulls['reseed']:.2f}"),
        value=mean, ci_low=low, ci_high=high, units=f"{len(drop)} old/new pairs",
        verdict=_verdict(beyond_reseed > 0 and in_range, beyond_continue > 0),
    )


def flattening_row(curvature: pd.DataFrame, sequence: list[str] | None = None) -> LedgerRow:
    """Claim 3 from the ``curvature`` table (``snapshot`` before/after per pair)."""
    keys = _pair_keys(curvature)
    wide = curvature.pivot_table(index=keys, columns="snapshot", values=["lambda_max", "lambda_max_per_loss"])
    raw = np.log(wide[("lambda_max", "after")] / wide[("lambda_max", "before")])
    normalised = np.log(wide[("lambda_max_per_loss", "after")] / wide[("lambda_max_per_loss", "before")])
    mean, low, high = _ci(raw)
    _, _, norm_high = _ci(normalised)
    return LedgerRow(
        claim="3. The old task's minimum flattens",
        paper="curvature around prior-task minima drops after sequential updates",
        measured=(f"log(lambda_max after / before): {_fmt(mean, low, high)}; per unit loss: "
                  f"{float(normalised.mean()):.2f}"),
        value=mean, ci_low=low, ci_high=high, units=f"{len(raw)} old/new pairs",
        verdict=_verdict(high < 0, norm_high < 0),
    )


def heads_row(head_severity: pd.DataFrame, sequence: list[str] | None = None) -> LedgerRow:
    """Claim 4 from the ``head_severity`` table (judged against the nulls); with the run's task
    ``sequence``, on the pairs whose nulls are matched (:func:`adjacent_pairs`)."""
    combined = adjacent_pairs(head_severity[head_severity["metric"] == "combined"], sequence)
    keys = _pair_keys(combined)
    per_pair = combined.groupby(keys)["severe"].mean()
    mean, low, high = _ci(per_pair)
    by_layer = combined.groupby("layer")["severe"].mean()
    first, last = float(by_layer.iloc[0]), float(by_layer.iloc[-1])
    in_range = _overlaps(low, high, PAPER_SEVERE)
    return LedgerRow(
        claim="4. A minority of heads is severely disrupted, lower layers most",
        paper=f"{100 * PAPER_SEVERE[0]:.0f}-{100 * PAPER_SEVERE[1]:.0f} % of heads; lower layers more susceptible",
        measured=(f"heads beyond both nulls: {_fmt(100 * mean, 100 * low, 100 * high, 0)} %; first layer "
                  f"{100 * first:.0f} %, last layer {100 * last:.0f} %"),
        value=mean, ci_low=low, ci_high=high, units=f"{len(per_pair)} old/new pairs",
        verdict=_verdict(in_range and first > last, in_range or first > last),
    )


def similarity_row(pairs: pd.DataFrame, *, similarity: str, forgetting: str, seed: int = 0,
                   paper_r: float | None = PAPER_R, claim: str = "5. Similar tasks interfere more",
                   paper: str = f"forgetting correlates with task similarity, Pearson r = {PAPER_R}") -> LedgerRow:
    """Claim 5 from a sweep table with columns ``task_a``, ``task_b`` and the two named value columns.

    ``claim`` and ``paper`` relabel the row (e.g. gradient *conflict* as the predictor); with
    ``paper_r=None`` (the paper gives no value) the row **holds** when the interval lies above 0.
    """
    res = correlation(pairs[similarity], pairs[forgetting], groups=pairs[["task_a", "task_b"]].to_numpy(), seed=seed)
    excludes_zero = res.ci_low > 0
    contains_paper = paper_r is None or res.ci_low <= paper_r <= res.ci_high
    return LedgerRow(
        claim=claim, paper=paper,
        measured=f"Pearson r({similarity}, {forgetting}): {_fmt(res.r, res.ci_low, res.ci_high)}",
        value=res.r, ci_low=res.ci_low, ci_high=res.ci_high,
        units=f"{res.n} ordered task pairs, bootstrap clustered by task",
        verdict=_verdict(contains_paper and excludes_zero, excludes_zero),
    )


def dynamics_row(onsets: pd.DataFrame, stage_steps: int) -> LedgerRow:
    """Claim 6 from :func:`forgetting.dynamics.onset_steps` (per ``measure``, maybe per ``seed``)."""
    t50 = onsets.groupby("measure")["t50"].mean()
    frac = onsets[onsets["measure"] == "forgetting"]["t50"].to_numpy() / stage_steps
    mean, low, high = _ci(frac)
    mechanisms = [m for m in ("drift", "grad_cosine", "lambda_max", "head_js") if m in t50]
    early = [m for m in mechanisms if t50[m] <= t50["forgetting"]]
    return LedgerRow(
        claim="6. The mechanisms interact in non-linear dynamics",
        paper="interacting mechanisms produce non-linear forgetting dynamics",
        measured=(f"half of the forgetting within {_fmt(mean, low, high)} of the stage; no later than it: "
                  f"{', '.join(early) or 'none'} (of {', '.join(mechanisms)})"),
        value=mean, ci_low=low, ci_high=high, units=f"{len(frac)} run(s)",
        verdict=_verdict(high <= 0.2 and len(early) >= 2, high <= 0.2 or len(early) >= 2),
    )


def ledger_table(rows: list[LedgerRow]) -> pd.DataFrame:
    """The rows as a DataFrame (one row per claim)."""
    return pd.DataFrame([asdict(r) for r in rows])


def _claim_row(measure: Measure):
    """The row function that judges ``measure``'s claim: a function of this module named by the measure,
    or the callable it registered; called as ``row(table, sequence)``."""
    return measure.claim if callable(measure.claim) else globals()[measure.claim]


def claims_for(profile: str = "quick", *, model: str | None = None, seed: int = 0, stored_only: bool = False,
               progress: bool = True) -> pd.DataFrame:
    """The whole ledger for a profile: the main runs' mechanism reports (every seed of the profile;
    ``quick``: ``seed``), the similarity sweep of the first seed and the dynamics of every seed.

    Choices fixed before looking at any result: "task similarity" is the Fisher task embedding at the
    base model, "forgetting" of a sweep pair is A's loss increase (graded, unlike exact match), and
    "gradient conflict" is minus the base-model gradient cosine. ``stored_only=True`` reads published
    or cached tables only (:mod:`forgetting.publish`) and raises :class:`LookupError` when any is
    missing or stale, instead of training.
    """
    run_seeds = (seed,) if profile == "quick" else seeds(profile)
    mains = [experiment_spec(profile, model=model, seed=s) for s in run_seeds]
    dyns = [dynamics_spec(profile, model=model, seed=s) for s in run_seeds]
    sweep_tasks = sweep_settings(profile)["tasks"]
    pair_specs = [sweep_spec(a, b, profile=profile, model=model, seed=run_seeds[0])
                  for a in sweep_tasks for b in sweep_tasks if a != b]
    if stored_only and not all(is_published(s) for s in [*mains, *dyns, *pair_specs]):
        raise LookupError(f"profile {profile!r}: not every run is published in data/results (make results)")
    judged = [m for m in measures() if m.claim]
    tables: dict[str, list[pd.DataFrame]] = {m.claim_table: [] for m in judged}
    for spec in mains:
        report = analysis_for(run_cached(spec, progress=progress), progress=progress, stored_only=stored_only)
        for name in tables:
            tables[name].append(report[name].assign(seed=spec.seed))
    joined = {name: pd.concat(parts, ignore_index=True) for name, parts in tables.items()}
    sequence = mains[0].task_list()
    rows = [_claim_row(m)(joined[m.claim_table], sequence) for m in judged]
    sweep = pairwise_sweep(profile=profile, model=model, seed=run_seeds[0], progress=progress)
    similarity = similarity_matrix(mains[0].model, sorted(set(sweep["task_a"])), measures=("fisher", "gradient"))
    similarity = similarity[similarity["layer"].isna()].pivot_table(
        index=["task_a", "task_b"], columns="measure", values="value").reset_index()
    pairs = sweep.merge(similarity, on=["task_a", "task_b"]).assign(gradient_conflict=lambda d: -d["gradient_cosine"])
    rows.append(similarity_row(pairs, similarity="fisher", forgetting="forgetting_loss"))
    rows.append(similarity_row(pairs, similarity="gradient_conflict", forgetting="forgetting_loss", paper_r=None,
                               claim="5b. Gradient conflict predicts forgetting",
                               paper="forgetting tracks (mis)alignment of the tasks' gradients; no r given"))
    dynamics = pd.concat([dynamics_for(run_cached(spec, progress=progress), progress=progress,
                                       stored_only=stored_only).assign(seed=spec.seed) for spec in dyns],
                         ignore_index=True)
    rows.append(dynamics_row(onset_steps(dynamics), dyns[0].steps_per_task))
    return ledger_table(rows).assign(profile=profile, model=mains[0].model, seeds=", ".join(map(str, run_seeds)))
