"""How reproducible is a run? The same spec trained at one and at two torch threads on this machine, and
a published run (tables made on another machine) against the same spec re-trained here.

Writes a JSON record (default ``benchmarks/results/reproducibility.json``) that chapter 08 reads:

- ``threads``: per stage-end snapshot, whether the weight files are identical and the largest absolute
  weight difference; per (stage, old task), the stage-end old-task eval loss at 1 and at 2 threads;
- ``machines``: per published main run given (``--published``, folders holding the other machine's
  ``evals.parquet``), the largest absolute difference of its stage-end old-task eval losses from the same
  spec's run here (``--here``), per stage.

Usage (runs are trained with ``forgetting run`` first; reuse them with the folder arguments)::

    FORGETTING_THREADS=1 forgetting run data/specs/quick.yaml --out /tmp/repro/quick-t1
    FORGETTING_THREADS=2 forgetting run data/specs/quick.yaml --out /tmp/repro/quick-t2
    python benchmarks/bench_reproducibility.py --one /tmp/repro/quick-t1 --two /tmp/repro/quick-t2 \\
        --published OLD_RESULTS/full-<hash>-<code> ... --here ~/.cache/forgetting/runs/full-<hash>-<code> ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from forgetting.files import provenance
from forgetting.runs import RunLayout
from forgetting.runs.integrity import compare_snapshots, machine
from forgetting.threads import configure_threads


def old_task_losses(folder: Path) -> pd.Series:
    """Stage-end eval loss of every task trained in an earlier stage, indexed by (stage, task)."""
    e = pd.read_parquet(RunLayout(folder).evals)
    e = e[e["end_of_stage"] & (e["metric"] == "loss") & (e["task_index"] >= 0) & (e["task_index"] < e["stage"] - 1)]
    return e.set_index(["stage", "task"])["value"]


def threads_record(one: Path, two: Path) -> dict:
    """Weights and old-task losses of the same spec trained at one (``one``) and two (``two``) threads."""
    diff = compare_snapshots(one, two)
    snapshots = [{"snapshot": label, "identical": bool(g["same_file"].all()),
                  "max_abs_diff": float(g["max_abs_diff"].max()), "max_abs_weight": float(g["max_abs"].max())}
                 for label, g in diff.groupby("label", sort=True)]
    a, b = old_task_losses(one), old_task_losses(two)
    losses = [{"stage": int(s), "task": t, "one_thread": float(a[(s, t)]), "two_threads": float(b[(s, t)])}
              for s, t in a.index if (s, t) in b.index]
    return {"snapshots": snapshots, "old_task_losses": losses}


def machines_record(published: list[Path], here: list[Path]) -> list[dict]:
    """Per run: the largest |difference| of stage-end old-task losses, other machine vs here, per stage."""
    rows = []
    for other, mine in zip(published, here):
        gap = (old_task_losses(other) - old_task_losses(mine)).abs().groupby(level="stage").max()
        rows.append({"run": other.name, "max_abs_loss_diff_by_stage": {int(s): float(v) for s, v in gap.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", type=Path, required=True, help="the run at one torch thread")
    parser.add_argument("--two", type=Path, required=True, help="the same spec's run at two torch threads")
    parser.add_argument("--published", type=Path, nargs="*", default=[], help="published folders (other machine)")
    parser.add_argument("--here", type=Path, nargs="*", default=[], help="the same specs' runs on this machine")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reproducibility.json"))
    args = parser.parse_args()
    configure_threads()  # the record's machine() then reports the threads this process measured with
    if len(args.published) != len(args.here):
        parser.error(f"--published and --here need as many folders each ({len(args.published)} vs {len(args.here)})")
    record = {"threads": threads_record(args.one, args.two), "machines": machines_record(args.published, args.here),
              "machine": machine(), **provenance()}
    args.out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
