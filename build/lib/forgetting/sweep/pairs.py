"""The pairwise sweep: train A, then B, for every ordered pair of tasks, and measure how much of A is
forgotten.

**The pairwise sweep** (:func:`pairwise_sweep`). For every ordered pair (A, B) of distinct tasks: train A,
then B (the profile's spec with ``sequence: [A, B]``, the profile's sweep step count, evaluation at the
end of each stage only, no joint reference), through :func:`forgetting.profiles.run_cached`, so every pair
is cached on disk and a killed sweep resumes where it stopped. Per pair, from the end-of-stage evaluations
(stage 1 = after A, stage 2 = after B, on the tasks' eval splits)::

    forgetting_loss     = loss_A(stage 2) - loss_A(stage 1)                (nats/token; > 0: forgotten)
    forgetting_fraction = (loss_A(stage 2) - loss_A(stage 1)) / (loss_A(stage 0) - loss_A(stage 1))
                          (the share of A's stage-1 gain that B undid; stage 0 = the base model;
                          NaN when A's loss did not fall in stage 1)
    forgetting_exact  = exact_A(stage 1) - exact_A(stage 2)
    forgetting_answer = answer_A(stage 1) - answer_A(stage 2)
    gain_loss_b       = loss_B(stage 1) - loss_B(stage 2)                  (what training B taught B)
    gain_exact_b      = exact_B(stage 2) - exact_B(stage 1)

**The whole sweep** (:func:`sweep_table`): every ordered pair of the profile's sweep tasks, for every
sweep seed (``forgetting.profiles.sweep_settings``: tasks, seeds, steps, lr).

**The regime of the full sweep** (steps per task, learning rate; the same for A and B), fixed by a rule
written before any pilot. Candidates, cheapest first: (50, 2e-3), (50, 1e-3), (100, 1e-3), (200, 5e-4).
Pilot: 8 ordered pairs across the families (recall_city->recall_job, recall_job->update_city,
update_city->recall_city, sort->reverse, reverse->copy, copy->add, add->recall_pet, recall_food->sort),
seed 0. Criteria: (1) A is learned: median answer match of A after stage 1 >= 0.5, or median
loss_A(1) / loss_A(0) <= 0.5; (2) forgetting is graded: median ``forgetting_fraction`` in [0.2, 0.8] and
at most a quarter of the pairs above 0.95; (3) at most 6 s per pair at one thread. Choice: the first
candidate meeting all three. (50, 2e-3) met (1) (loss ratio 0.11) and (2) (median fraction 0.43, 1 of 8
above 0.95) but took 7.9 s per pair on the shared 2-core machine (load about 3), and no candidate met
(3) (training time grows with the steps; (50, 1e-3) had median fraction 0.34); so the cheapest candidate
meeting (1) and (2) was taken. At the spec's own 200 steps and lr 2e-3 every pair lost 3.4 to 10.2 nats
of A's loss (saturated).

Alignment along the sweep (:func:`sweep_alignment`): similarity at the base model says nothing about the
state B's training starts from. At theta_A (the snapshot after A) of each pair::

    alignment_at_a   = cos(g_A(theta_A), g_B(theta_A))           (old vs new task gradient, all parameters)
    update_alignment = cos(theta_A - theta_0, -g_B(theta_A))      (B's first descent direction vs what A changed)

A converged A has a small, noisy gradient (its loss is near a minimum), so the second, which does not need g_A, is the
steadier one: negative means B's first steps point back against A's change.

Bad input (unknown task, fewer than two tasks, repeated tasks, unknown profile) raises
:class:`forgetting.errors.SpecError` naming the field and the allowed values, before any work.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.files import atomic_write_table
from forgetting.mechanisms.gradients import task_gradients
from forgetting.mechanisms.similarity import _check_task_names, _frame, cosine
from forgetting.profiles import experiment_spec, run_cached, sweep_settings, with_snapshots
from forgetting.runs import Run, RunLayout, cache_twin, result_dir, tasks_for_spec
from forgetting.spec import ExperimentSpec, parse_spec
from forgetting.tasks.families import make_task

#: Columns of the table of :func:`pairwise_sweep`, one row per ordered pair (see the module docstring).
SWEEP_COLUMNS = (
    "task_a", "task_b", "seed", "steps", "loss_a_base", "loss_a_before", "loss_a_after", "exact_a_before",
    "exact_a_after", "answer_a_before", "answer_a_after", "forgetting_loss", "forgetting_fraction",
    "forgetting_exact", "forgetting_answer",
    "gain_loss_b", "gain_exact_b", "exact_b_after", "run",
)


# ---------------------------------------------------------------------------------------------------
# the pairwise sweep
# ---------------------------------------------------------------------------------------------------


def sweep_spec(task_a: str, task_b: str, *, profile: str = "quick", model: str | None = None, seed: int | None = None,
               steps: int | None = None, base: Any = None):
    """The spec of one sweep pair: ``base`` (a spec or spec dict; default the profile's spec) with
    ``sequence: [task_a, task_b]``, ``steps_per_task`` = ``steps`` (default: the profile's sweep steps),
    evaluation at the end of each stage only (``eval.every: 0``) and no joint reference. With ``base``
    given and ``steps=None``, the base's own ``steps_per_task`` is kept. Without ``base``, the profile's
    sweep ``lr`` (when not None) replaces the spec's ``optimizer.lr``."""
    base_given = base is not None
    if base is None:
        base = experiment_spec(profile, model=model, seed=seed)
    data = base.model_dump(mode="json") if isinstance(base, ExperimentSpec) else dict(base)
    if model is not None:
        data["model"] = model
    if seed is not None:
        data["seed"] = seed
    eval_spec = dict(data.get("eval") or {})
    eval_spec["every"] = 0
    if not base_given and sweep_settings(profile).get("lr") is not None:
        data["optimizer"] = {**data["optimizer"], "lr": sweep_settings(profile)["lr"]}
    data.update(
        name=f"{data.get('name', 'spec')}-sweep", sequence=[task_a, task_b], eval=eval_spec,
        reference={"enabled": False}, epochs_per_task=None,
        steps_per_task=steps or (data.get("steps_per_task") if base_given else None) or sweep_settings(profile)["steps"],
    )
    return parse_spec(data, source=f"sweep {task_a} -> {task_b}")


def _pair_row(folder, task_a: str, task_b: str) -> dict:
    run = Run.open(folder)
    ev = run.evals[run.evals["end_of_stage"]]
    value = ev.set_index(["stage", "task", "metric"])["value"]
    v = lambda stage, task, metric: float(value.get((stage, task, metric), np.nan))
    gain = v(0, task_a, "loss") - v(1, task_a, "loss")
    return {
        "task_a": task_a, "task_b": task_b, "seed": run.seed, "steps": int(run.manifest["spec"]["steps_per_task"]),
        "loss_a_base": v(0, task_a, "loss"), "loss_a_before": v(1, task_a, "loss"), "loss_a_after": v(2, task_a, "loss"),
        "exact_a_before": v(1, task_a, "exact_match"), "exact_a_after": v(2, task_a, "exact_match"),
        "answer_a_before": v(1, task_a, "answer_match"), "answer_a_after": v(2, task_a, "answer_match"),
        "forgetting_loss": v(2, task_a, "loss") - v(1, task_a, "loss"),
        "forgetting_fraction": (v(2, task_a, "loss") - v(1, task_a, "loss")) / gain if gain > 0 else np.nan,
        "forgetting_exact": v(1, task_a, "exact_match") - v(2, task_a, "exact_match"),
        "forgetting_answer": v(1, task_a, "answer_match") - v(2, task_a, "answer_match"),
        "gain_loss_b": v(1, task_b, "loss") - v(2, task_b, "loss"),
        "gain_exact_b": v(2, task_b, "exact_match") - v(1, task_b, "exact_match"),
        "exact_b_after": v(2, task_b, "exact_match"),
        "run": str(folder),
    }


def pairwise_sweep(
    task_names: Sequence[str] | None = None,
    *,
    profile: str = "quick",
    model: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    spec: Any = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train A then B for every ordered pair of distinct ``task_names`` and measure the forgetting of A.

    Args:
        task_names: at least 2 distinct task names (default: the profile's sweep tasks,
            ``forgetting.profiles.PROFILES[profile]["sweep"]["tasks"]``).
        profile, model, seed: the base spec (``experiment_spec(profile, model=model, seed=seed)``);
            ``spec`` (an ExperimentSpec or a spec dict) replaces it (tests use a tiny one).
        steps: optimizer steps per task (default: the profile's sweep steps).

    Returns:
        one row per ordered pair (K (K-1) rows, in ``itertools.permutations`` order) with
        :data:`SWEEP_COLUMNS` (module docstring): the forgetting of A by loss, exact match and answer
        match, and B's gain. Every pair is a cached run (:func:`forgetting.profiles.run_cached`): a second
        call reads the results back; an interrupted sweep resumes.
    """
    settings = sweep_settings(profile)
    names = list(settings["tasks"] if task_names is None else task_names)
    _check_task_names(names)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise SpecError("steps", f"must be an integer >= 1, got {steps!r}")
    pairs = list(itertools.permutations(names, 2))
    specs = [sweep_spec(a, b, profile=profile, model=model, seed=seed, steps=steps, base=spec) for a, b in pairs]
    rows = []
    for (a, b), pair_spec in tqdm(list(zip(pairs, specs)), desc="sweep pairs", disable=not progress or paths.quiet()):
        rows.append(_pair_row(run_cached(pair_spec, progress=False), a, b))
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def sweep_table(profile: str = "quick", *, model: str | None = None, progress: bool = True,
                stored_only: bool = False) -> pd.DataFrame:
    """The profile's whole sweep: every ordered pair of its sweep tasks for every sweep seed.

    ``sweep_settings(profile)`` gives the K tasks, the S seeds, the steps and the learning rate; each pair
    is :func:`sweep_spec` (``profile``, ``model``, seed) run or read through
    :func:`forgetting.profiles.run_cached` (published runs in ``data/results`` first, then the cache).

    Returns:
        S K (K - 1) rows with :data:`SWEEP_COLUMNS`, seed by seed, each seed's pairs in
        ``itertools.permutations`` order. ``stored_only=True`` trains nothing: it raises
        :class:`LookupError` naming the pairs (and how many) that are neither published nor complete in the
        cache.
    """
    settings = sweep_settings(profile)
    names = list(settings["tasks"])
    _check_task_names(names)
    jobs = [(a, b, seed, sweep_spec(a, b, profile=profile, model=model, seed=seed))
            for seed in settings["seeds"] for a, b in itertools.permutations(names, 2)]
    folders = [result_dir(spec) for *_, spec in jobs]  # once per pair: each name hashes the run code
    stored = [RunLayout(folder).state.is_file() for folder in folders]
    missing = [f"{a}->{b} (seed {s})" for (a, b, s, _), ok in zip(jobs, stored) if not ok]
    if stored_only and missing:
        raise LookupError(f"profile {profile!r}: {len(missing)} of {len(jobs)} sweep pairs are not stored "
                          f"(make results): {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    rows = [_pair_row(folder if ok else run_cached(spec, progress=False), a, b)
            for (a, b, _, spec), folder, ok in tqdm(list(zip(jobs, folders, stored)), desc="sweep pairs",
                                                     disable=not progress or paths.quiet())]
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


def sweep_alignment(sweep: pd.DataFrame, *, n_examples: int = 64, batch_size: int = 32,
                    progress: bool = True) -> pd.DataFrame:
    """``alignment_at_a`` and ``update_alignment`` (module docstring) for every pair of a sweep.

    Args:
        sweep: the table of :func:`pairwise_sweep` (its ``run`` column names each pair's run folder).
        n_examples: the first ``n_examples`` train examples of A and of B give their gradients.

    Returns:
        long DataFrame (:data:`forgetting.mechanisms.similarity.SIMILARITY_COLUMNS`) with the two measures per ordered pair. Each pair's
        rows are cached in its run folder (:meth:`forgetting.runs.layout.RunLayout.sweep_alignment`) and read back
        next time; a published pair (tables only, its rows published beside them) whose rows are missing is
        trained into its cache twin, where its rows are then cached.
    """
    missing = [c for c in ("task_a", "task_b", "run") if c not in getattr(sweep, "columns", ())]
    if missing:
        raise SpecError("sweep", f"missing column(s) {', '.join(missing)}; pass the table of pairwise_sweep")
    frames, loaded = [], None
    for a, b, folder in tqdm(list(zip(sweep.task_a, sweep.task_b, sweep.run)), desc="alignment",
                             disable=not progress or paths.quiet()):
        stored = [RunLayout(f).sweep_alignment(n_examples) for f in (Path(folder), cache_twin(folder))]
        if any(f.is_file() for f in stored):
            frames.append(pd.read_parquet(next(f for f in stored if f.is_file())))
            continue
        run = with_snapshots(Run.open(folder), progress=progress)  # a published pair is trained into its twin first
        base = (run.spec.model, run.spec.finetune.method)
        if loaded is None or loaded[0] != base:  # one model serves every pair run of the same base model
            loaded = (base, *run.load_model())
        _, model, tokenizer = loaded
        model = run.load_into(model, 1)
        task_a, task_b = tasks_for_spec(run.spec, tokenizer)
        g_a = task_gradients(model, task_a.train, batch_size=batch_size, max_examples=n_examples)
        g_b = task_gradients(model, task_b.train, batch_size=batch_size, max_examples=n_examples)
        theta_0, theta_a = run.snapshot(0), dict(model.named_parameters())
        delta = {n: theta_a[n].detach() - theta_0[n].to(theta_a[n].device) for n in g_b if n in theta_0}
        rows = [{"task_a": a, "task_b": b, "measure": "alignment_at_a", "layer": None, "value": cosine(g_a, g_b)},
                {"task_a": a, "task_b": b, "measure": "update_alignment", "layer": None,
                 "value": cosine(delta, {n: -g for n, g in g_b.items()})}]
        frame = _frame(rows)
        atomic_write_table(RunLayout(run.folder).sweep_alignment(n_examples), frame)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else _frame([])


def sweep_answers(sweep: pd.DataFrame, task_a: str, task_b: str, *, n_examples: int = 3,
                  max_new_tokens: int = 8) -> pd.DataFrame:
    """What forgetting looks like: greedy answers to A's first ``n_examples`` held-out prompts after A and after B.

    Reads the pair's run (a row of :func:`pairwise_sweep` with these tasks) and decodes greedily from the
    snapshots after stage 1 (A) and stage 2 (B) (a published pair is trained first:
    :func:`forgetting.profiles.with_snapshots`). Returns ``prompt, target, after_a, after_b`` per example.
    """
    rows = sweep[(sweep["task_a"] == task_a) & (sweep["task_b"] == task_b)] if "run" in sweep.columns else sweep.iloc[:0]
    if rows.empty:
        pairs = ", ".join(f"{a}->{b}" for a, b in zip(sweep.get("task_a", []), sweep.get("task_b", [])))
        raise SpecError("task_a, task_b", f"no run for {task_a}->{task_b} in the sweep; allowed: {pairs}")
    run = with_snapshots(Run.open(rows["run"].iloc[0]), progress=False)  # a published pair: trained here first
    spec = run.spec
    model, tokenizer = run.load_model()
    examples = make_task(task_a, n_eval=spec.data.n_eval, seed=spec.data.task_seed).eval[:n_examples]
    answers: dict[str, list[str]] = {}
    model.eval()
    for stage, key in ((1, "after_a"), (2, "after_b")):
        run.load_into(model, stage)
        answers[key] = []
        for ex in examples:
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []  # as in training
            ids = torch.tensor([bos + list(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])],
                               device=next(model.parameters()).device)
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            answers[key].append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return pd.DataFrame({"prompt": [e.prompt for e in examples], "target": [e.target for e in examples], **answers})
