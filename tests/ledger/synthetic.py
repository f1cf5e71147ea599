"""Synthetic mechanism tables with chosen effects, for the ledger's rule tests.

Every table has the columns the real one has (the subset the ledger reads), for ``SEEDS`` seeds of a
run on ``SEQUENCE`` with its three adjacent pairs (stage 2..4, old task = the task before). A rate
``rho`` becomes ``round(rho * n)`` negative cosines / severe heads of ``n``, moved by one unit per seed
so that intervals over seeds have a width.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEEDS = (0, 1, 2, 3, 4)
SEQUENCE = ["t0", "t1", "t2", "t3"]
N_UNITS = 60


def pairs():
    for seed in SEEDS:
        for stage in (2, 3, 4):
            yield seed, stage, SEQUENCE[stage - 2]


def _jitter(seed: int) -> int:
    return (seed % 3) - 1  # -1, 0, 1, -1, 0: one unit up or down per seed


def _signs(rate: float, seed: int, n: int = N_UNITS) -> np.ndarray:
    k = int(np.clip(round(rate * n) + _jitter(seed), 0, n))
    return np.array([-0.5] * k + [0.5] * (n - k))


def gradients(head: float, attention: float, mlp: float, qk: float | None = None) -> pd.DataFrame:
    """Gradient rows with conflict rates ``head`` (head slices; ``qk`` for q/k slices, default
    ``head``), ``attention`` and ``mlp`` (matrices)."""
    rows = []
    for seed, stage, old in pairs():
        for unit, group, kind, rate in (("head", "attention", "q", head if qk is None else qk),
                                        ("head", "attention", "v", head),
                                        ("matrix", "attention", "q", attention), ("matrix", "mlp", "up", mlp)):
            for cosine in _signs(rate, seed):
                rows.append({"seed": seed, "stage": stage, "old_task": old, "unit": unit, "group": group,
                             "kind": kind, "cosine": cosine})
    return pd.DataFrame(rows)


def drift(interior: float, edge: float, null: float, reseed: float | None = None) -> pd.DataFrame:
    """Debiased CKA rows: drop ``interior`` in blocks 2..3, ``edge`` in blocks 1 and 4, ``null`` for
    the continue null everywhere (``reseed``, default ``null``, for the reseed null); per-seed jitter 0.01."""
    rows = []
    for seed, stage, old in pairs():
        for layer in range(5):
            for kind, drop in (("", interior if layer in (2, 3) else edge if layer in (1, 4) else 0.0),
                               ("continue", null), ("reseed", null if reseed is None else reseed)):
                for readout in ("last", "mean"):
                    cka = 1 - drop - 0.01 * _jitter(seed) * (kind == "")
                    rows.append({"seed": seed, "stage": stage, "old_task": old, "layer": layer, "null": kind,
                                 "readout": readout, "debiased": True, "cka": cka})
    return pd.DataFrame(rows)


def curvature(log_ratio: float) -> pd.DataFrame:
    """lambda_max (and lambda_min) after = before * exp(log_ratio + 0.05 * jitter)."""
    rows = []
    for seed, stage, old in pairs():
        factor = float(np.exp(log_ratio + 0.05 * _jitter(seed)))
        for snapshot, lam in (("before", 10.0), ("after", 10.0 * factor)):
            rows.append({"seed": seed, "stage": stage, "old_task": old, "snapshot": snapshot,
                         "lambda_max": lam, "lambda_min": -lam / 10})
    return pd.DataFrame(rows)


def head_severity(first: float, last: float, middle: float, chance: float) -> pd.DataFrame:
    """Combined-score rows of 4 blocks x 30 heads: severe rates ``first`` (block 0), ``last`` (block 3),
    ``middle`` (blocks 1, 2), and ``null_rate = chance``."""
    rows = []
    for seed, stage, old in pairs():
        for layer, rate in enumerate((first, middle, middle, last)):
            for head, sign in enumerate(_signs(rate, seed, 30)):
                rows.append({"seed": seed, "stage": stage, "old_task": old, "layer": layer, "head": head,
                             "metric": "combined", "severe": bool(sign < 0), "null_rate": chance})
    return pd.DataFrame(rows)


def onsets(forgetting_fraction: float, lead: float, spread: float = 0.01, stage_steps: int = 200) -> pd.DataFrame:
    """t50 per seed: forgetting at ``forgetting_fraction`` of the stage (+- ``spread`` per seed), each
    mechanism ``lead`` of the stage earlier (negative: later)."""
    rows = []
    for seed in SEEDS:
        t_forget = (forgetting_fraction + spread * _jitter(seed)) * stage_steps
        rows.append({"seed": seed, "measure": "forgetting", "t50": t_forget})
        for m in ("drift", "grad_cosine", "lambda_max", "head_js"):
            rows.append({"seed": seed, "measure": m, "t50": t_forget - lead * stage_steps})
    df = pd.DataFrame(rows)
    df.attrs["stage_steps"] = stage_steps
    return df


def matched_loss(value: float) -> pd.DataFrame:
    """One row per seed: ``value`` +- 0.05."""
    return pd.DataFrame({"seed": list(SEEDS), "value": [value + 0.05 * _jitter(s) for s in SEEDS]})


def causal(severe: float, random: float, interior: float, edge: float, interaction: float,
           spread: float = 0.02) -> pd.DataFrame:
    """Recovery rows (4 blocks; interior = blocks 1, 2), +- ``spread`` per seed."""
    rows = []
    for seed, stage, old in pairs():
        j = spread * _jitter(seed)
        rows.append({"study": "heads_severe", "part": "k=5", "recovery": severe + j})
        rows += [{"study": "heads_random", "part": "k=5", "recovery": random} for _ in range(3)]
        rows += [{"study": "layer", "part": f"layer {b}", "recovery": (interior if b in (1, 2) else edge) + j}
                 for b in range(4)]
        rows.append({"study": "interaction", "part": "attention+mlp", "recovery": interaction + j})
        for row in rows:
            row.setdefault("seed", seed), row.setdefault("stage", stage), row.setdefault("old_task", old)
    return pd.DataFrame(rows)


def front(gains: dict[str, float], learning: dict[str, float] | None = None) -> pd.DataFrame:
    """The mitigation front's table: for each targeted method in ``gains`` and its ``<method>_random``
    control, 4 strengths x ``SEEDS``; the control forgets 0.6 and learns 0.5, the targeted method forgets
    ``gains[method]`` less (one hundredth up or down per seed) and learns ``learning[method]`` more."""
    rows = []
    for method, gain in gains.items():
        for seed in SEEDS:
            for strength in (0.25, 0.5, 0.75, 1.0):
                jitter = 0.01 * _jitter(seed)
                rows.append({"method": f"{method}_random", "strength": strength, "seed": seed,
                             "forgetting": 0.6, "learning": 0.5})
                rows.append({"method": method, "strength": strength, "seed": seed, "forgetting": 0.6 - gain + jitter,
                             "learning": 0.5 + (learning or {}).get(method, 0.0) + jitter})
    return pd.DataFrame(rows)
