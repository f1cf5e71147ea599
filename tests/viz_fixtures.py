"""A synthetic but realistic evaluation table, in the format of ``forgetting.evaluate.EVAL_COLUMNS``,
for chart tests (the book plots real runs, never this)."""

from __future__ import annotations

import numpy as np
import pandas as pd

SEQUENCE = ("recall_city", "recall_job", "reverse", "update_city")
# how much training task k (row) pulls task j (column) away: update_city overwrites recall_city's answers
INTERFERENCE = {("update_city", "recall_city"): 0.9, ("recall_job", "recall_city"): 0.15,
                ("reverse", "recall_city"): 0.1, ("reverse", "recall_job"): 0.2, ("update_city", "recall_job"): 0.3,
                ("update_city", "reverse"): 0.25}


def synthetic_evals(steps_per_task: int = 120, every: int = 20, seeds: tuple[int, ...] = (0,)) -> pd.DataFrame:
    """Exact match rises while a task trains and decays while later tasks train, more for similar
    (conflicting) tasks; token accuracy and loss follow; the held-out corpus loss creeps up."""
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        em = {t: 0.02 for t in SEQUENCE}
        heldout = 1.32

        def record(stage: int, stage_task: str, step: int, end: bool) -> None:
            common = {"stage": stage, "stage_task": stage_task, "step": step, "end_of_stage": end}
            if len(seeds) > 1:
                common["seed"] = seed
            for j, task in enumerate(SEQUENCE):
                e = float(np.clip(em[task] + rng.normal(0, 0.015), 0, 1))
                tok = float(np.clip(0.45 + 0.53 * e + rng.normal(0, 0.01), 0, 1))
                ans = float(np.clip(max(e, 0.6 * e + 0.35 * (task == "recall_city" and stage == 4)), 0, 1))
                for metric, value in (("loss", 0.08 + 2.6 * (1 - tok) ** 1.3), ("token_accuracy", tok),
                                      ("exact_match", e), ("answer_match", ans)):
                    rows.append({**common, "task": task, "task_index": j, "metric": metric, "value": value})
            rows.append({**common, "task": "heldout_corpus", "task_index": -1, "metric": "loss", "value": heldout})

        record(0, "base", 0, True)
        for stage, trained in enumerate(SEQUENCE, start=1):
            for k in range(1, steps_per_task // every + 1):
                step = (stage - 1) * steps_per_task + k * every
                em[trained] += (0.96 - em[trained]) * 0.45
                for other in SEQUENCE:
                    pull = INTERFERENCE.get((trained, other), 0.03)
                    if other != trained:
                        em[other] -= em[other] * pull * 0.35
                heldout += 0.012
                record(stage, trained, step, k * every == steps_per_task)
    return pd.DataFrame(rows)
