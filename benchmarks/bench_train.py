"""Our training loop against the Hugging Face ``Trainer``, side by side in one process.

1. Throughput, snapshots and evaluation off: the same model (embedded ``tiny``), the same encoded
   examples of ``recall_city``, the same batch size, learning rate, schedule and number of steps.
   Reported as target-and-prompt tokens (non-padding) per second; ratio = ours / Trainer.
2. Overhead of evaluation and snapshots at the spec's default cadence: ``run_experiment`` on the
   default sequence with the default ``eval``/``snapshots`` settings, against the bare loop that only
   trains the same tasks (same model loading and task preparation), both timed end to end.

    .venv/bin/python benchmarks/bench_train.py [--steps 300] [--repeats 3]

Each measurement is repeated and the median is reported; the order of the two contenders alternates
so that neither always runs on a warmer machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("FORGETTING_QUIET", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from forgetting.evaluate import prepare_task  # noqa: E402
from forgetting.spec import parse_spec  # noqa: E402
from forgetting.models import load_model  # noqa: E402
from forgetting.tasks import make_task  # noqa: E402
from forgetting.train.loop import OptimConfig, train_task  # noqa: E402
from forgetting.runs import model_for_spec, tasks_for_spec  # noqa: E402
from forgetting.train.sequence import run_experiment, steps_per_task  # noqa: E402

BATCH, LR, WARMUP = 16, 1e-3, 10


def _data():
    model, tok = load_model("tiny")
    return model, prepare_task(make_task("recall_city"), tok).train


def _tokens(data, steps: int, seed: int) -> int:
    from forgetting.train.batches import batch_indices

    order = batch_indices(len(data), BATCH, steps, seed)
    return int(data.attention_mask[order.flatten()].sum())


def time_ours(steps: int) -> float:
    model, data = _data()
    start = time.perf_counter()
    train_task(model, data, steps=steps, batch_size=BATCH, optim=OptimConfig(lr=LR, warmup_steps=WARMUP),
               seed=0, accelerator=Accelerator(cpu=True))
    return time.perf_counter() - start


class _Rows(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        n = int(self.data.attention_mask[i].sum())
        return {"input_ids": self.data.input_ids[i, :n], "labels": self.data.labels[i, :n]}


def _collate(pad_id: int):
    def collate(rows):
        width = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), width), pad_id)
        labels = torch.full((len(rows), width), -100)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = r["input_ids"], r["labels"], 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def time_trainer(steps: int) -> float:
    from transformers import Trainer, TrainingArguments

    model, data = _data()
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
            warmup_steps=WARMUP, lr_scheduler_type="linear", weight_decay=0.0, max_grad_norm=1.0,
            save_strategy="no", eval_strategy="no", logging_strategy="no", report_to=[],
            disable_tqdm=True, dataloader_num_workers=0, use_cpu=True, seed=0,
        )
        trainer = Trainer(model=model, args=args, train_dataset=_Rows(data), data_collator=_collate(0))
        start = time.perf_counter()
        trainer.train()
        return time.perf_counter() - start


def time_run(spec) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run_experiment(spec, Path(out) / "run", progress=False)
        return time.perf_counter() - start


def time_bare(spec) -> float:
    start = time.perf_counter()
    model, tok = model_for_spec(spec)
    accelerator = Accelerator(cpu=True)
    for stage, task in enumerate(tasks_for_spec(spec, tok), start=1):
        train_task(model, task.train, steps=steps_per_task(spec, len(task.train)), batch_size=spec.batch_size,
                   optim=OptimConfig.from_spec(spec.optimizer), seed=stage, accelerator=accelerator)
    return time.perf_counter() - start


def median_pair(first, second, repeats: int) -> tuple[float, float]:
    a, b = [], []
    for r in range(repeats):
        if r % 2:
            b.append(second()), a.append(first())
        else:
            a.append(first()), b.append(second())
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    _, data = _data()
    tokens = _tokens(data, args.steps, 0)
    ours, trainer = median_pair(lambda: time_ours(args.steps), lambda: time_trainer(args.steps), args.repeats)
    print(f"throughput ({args.steps} steps, batch {BATCH}, {tokens} tokens): ours {tokens / ours:,.0f} tok/s, "
          f"Trainer {tokens / trainer:,.0f} tok/s, ratio ours/Trainer = {trainer / ours:.2f}x")

    spec = parse_spec({"name": "bench", "model": "tiny", "sequence": "default", "steps_per_task": 200,
                       "batch_size": BATCH, "optimizer": {"lr": LR, "warmup_steps": WARMUP}})
    run, bare = median_pair(lambda: time_run(spec), lambda: time_bare(spec), args.repeats)
    print(f"default cadence (eval every {spec.eval.every} steps + end of task, {spec.eval.heldout_documents} "
          f"held-out documents, snapshot at the end of each task): run {run:.1f} s, bare training {bare:.1f} s, "
          f"overhead {100 * (run / bare - 1):.1f} %")


if __name__ == "__main__":
    main()
