"""Benchmark: per-head gradient alignment for all heads against the backward passes it needs alone.

What is timed, on the embedded model (``--model tiny``: Llama-style, 4 layers x 8 query heads, 4 key/value
heads; or ``tiny-moe``) with two tasks' training examples (``--task-a``, ``--task-b``, ``--n`` each):

- **baseline** ("the backward passes alone"): for each task and each batch of ``--batch-size`` examples, one
  forward pass and ``loss.backward()`` of the batch's target-token loss sum / |T| into ``.grad`` (the
  minimal way to get both tasks' gradients; ``.grad`` zeroed once per task). Nothing else.
- **ours**: :func:`forgetting.mechanisms.gradients.task_alignment`: the same passes through
  :func:`~forgetting.mechanisms.gradients.task_gradients` (``torch.autograd.grad``, accumulation), then
  :func:`~forgetting.mechanisms.gradients.gradient_alignment` with every matrix, every head (q/k/v/o
  slices via ``ProjectionRef.per_head``), layer and model aggregates, as a pandas DataFrame.
- parts: ``gradients`` (the two ``task_gradients`` calls) and ``alignment`` (``gradient_alignment`` on
  precomputed gradients).

Rounds alternate baseline and ours (order flipped every round) after one warm-up round; each number is
the median over ``--repeats`` rounds; the ratio is median(ours) / median(baseline). Target (issue 3):
at most 1.15.

Run: ``.venv/bin/python benchmarks/bench_gradients.py`` (options: ``--model tiny-moe``, ``--repeats``,
``--threads``, ``--out FILE.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

os.environ.setdefault("FORGETTING_QUIET", "1")


def baseline(model, examples: list, batch_size: int) -> None:
    """One forward + ``loss.backward()`` per batch of each task (gradients accumulate in ``.grad``)."""
    from forgetting.train.loop import target_loss_sum

    device = next(model.parameters()).device
    for ex in examples:
        model.zero_grad(set_to_none=True)
        n_tokens = int((ex.labels[:, 1:] != -100).sum())
        for start in range(0, len(ex), batch_size):
            loss = target_loss_sum(model, ex.select(slice(start, start + batch_size)), device) / n_tokens
            loss.backward()
    model.zero_grad(set_to_none=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", choices=["tiny", "tiny-moe"])
    parser.add_argument("--task-a", default="recall_city")
    parser.add_argument("--task-b", default="update_city")
    parser.add_argument("--n", type=int, default=128, help="examples per task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    import forgetting
    from forgetting.evaluate import prepare_task
    from forgetting.mechanisms import gradients as gr
    from forgetting.models.geometry import attention_geometry
    from forgetting.tasks.families import make_task

    torch.set_num_threads(args.threads)
    model, tokenizer = forgetting.load_model(args.model)
    model.eval()
    examples = [prepare_task(make_task(t, n_train=args.n, n_eval=8), tokenizer).train for t in (args.task_a, args.task_b)]
    geometry = attention_geometry(model)
    kwargs = {"batch_size": args.batch_size}

    def ours():
        return gr.task_alignment(model, examples[0], examples[1], **kwargs)

    def grads_only():
        return [gr.task_gradients(model, ex, **kwargs) for ex in examples]

    g_a, g_b = grads_only()
    table = ours()
    n_heads = int((table.unit == "head").sum())

    times: dict[str, list[float]] = {"baseline": [], "ours": [], "gradients": [], "alignment": []}
    parts = {
        "baseline": lambda: baseline(model, examples, args.batch_size),
        "ours": ours,
        "gradients": grads_only,
        "alignment": lambda: gr.gradient_alignment(g_a, g_b, geometry),
    }
    for name, fn in parts.items():  # warm-up
        fn()
    for r in range(args.repeats):
        order = list(parts) if r % 2 == 0 else list(reversed(parts))
        for name in order:
            times[name].append(timed(parts[name]))

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["ours"] / med["baseline"]
    result = {
        "model": args.model, "n_per_task": args.n, "batch_size": args.batch_size,
        "passes": 2 * -(-args.n // args.batch_size), "head_rows": n_heads, "rows": len(table),
        "repeats": args.repeats, "threads": args.threads,
        "median_s": med, "ratio_ours_over_baseline": ratio,
        "ratio_gradients_over_baseline": med["gradients"] / med["baseline"],
        "alignment_share_of_baseline": med["alignment"] / med["baseline"],
        "target_ratio": 1.15, "met": ratio <= 1.15,
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"model {args.model}: 2 tasks x {args.n} examples, batch {args.batch_size} "
          f"({result['passes']} forward+backward passes), {n_heads} head rows, {len(table)} rows in all")
    for k in ("baseline", "ours", "gradients", "alignment"):
        print(f"  {k:<10} median {med[k] * 1e3:8.1f} ms   (min {min(times[k]) * 1e3:.1f}, max {max(times[k]) * 1e3:.1f})")
    print(f"  ratio ours / baseline = {ratio:.3f}  (target <= 1.15: {'met' if result['met'] else 'NOT met'})")
    print(f"  gradients / baseline = {result['ratio_gradients_over_baseline']:.3f};  "
          f"alignment alone = {result['alignment_share_of_baseline']:.3f} x baseline")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
