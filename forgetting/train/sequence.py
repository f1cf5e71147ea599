"""Run an experiment spec: fine-tune on a sequence of tasks, evaluating every task along the way.

Stages: stage 0 evaluates the untouched model (the row "before" of R) and snapshots it; stage i trains
task i for ``steps_per_task`` steps with a fresh optimizer, evaluates every task each ``eval.every``
steps (forgetting curves) and at the end (row i of R), and snapshots the weights.

Resume: a stage is *complete* when its snapshot, its table rows and ``state.json`` are on disk (written
in that order, each atomically). Re-running the same command after a kill drops rows of incomplete
stages, restores the last complete snapshot and goes on. Every stage draws its batch order and RNG
from ``(seed, stage)``, and the optimizer is fresh per stage, so a resumed run gives the same numbers
as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.evaluate import PreparedTask, evaluation_rows, prepare_task
from forgetting.experiments import ExperimentSpec
from forgetting.results import atomic_write_json, atomic_write_table, provenance, read_json
from forgetting.tasks.families import make_task
from forgetting.train.loop import OptimConfig, train_task
from forgetting.train.snapshots import restore_snapshot, save_snapshot

MANIFEST, STATE, EVALS, TRAIN_LOG, REFERENCE = "manifest.json", "state.json", "evals.parquet", "train_log.parquet", "reference.parquet"


@dataclass
class RunContext:
    """What a run needs in memory: the spec, model, tokenizer, prepared tasks, accelerator."""

    spec: ExperimentSpec
    out: Path
    model: torch.nn.Module
    tokenizer: object
    tasks: list[PreparedTask]
    accelerator: object
    heldout: list[dict] | None  # pre-encoded batches of the held-out corpus sample
    evals: list[dict] = field(default_factory=list)
    train_log: list[dict] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def steps_per_task(spec: ExperimentSpec, n_train: int) -> int:
    if spec.steps_per_task is not None:
        return spec.steps_per_task
    return max(1, math.ceil(spec.epochs_per_task * n_train / spec.batch_size))


def stage_seed(seed: int, stage: int) -> int:
    return seed * 1_000_003 + stage


def load_for_spec(spec: ExperimentSpec):
    """The spec's model (LoRA applied when asked) and tokenizer; deterministic LoRA init."""
    from forgetting.models import load_model

    model, tokenizer = load_model(spec.model, trust_remote_code=spec.trust_remote_code)
    if spec.finetune.method == "lora":
        from forgetting.models.lora import apply_lora

        torch.manual_seed(stage_seed(spec.seed, 0))
        lora = spec.finetune.lora
        model = apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)
    return model, tokenizer


def prepare_tasks(spec: ExperimentSpec, tokenizer) -> list[PreparedTask]:
    d = spec.data
    return [
        prepare_task(make_task(name, n_train=d.n_train, n_eval=d.n_eval, seed=d.task_seed), tokenizer)
        for name in spec.task_list()
    ]


def _heldout_batches(spec: ExperimentSpec, tokenizer) -> list[dict] | None:
    """The held-out pretraining sample of an embedded model, encoded once for the whole run."""
    from forgetting.models import EMBEDDED_MODELS

    if not spec.eval.heldout_corpus or spec.model not in EMBEDDED_MODELS:
        return None
    from forgetting.models.embedded import RECIPES, encode_corpus, heldout_documents

    documents = heldout_documents(RECIPES[spec.model])[: spec.eval.heldout_documents]
    return encode_corpus(tokenizer, documents, batch_size=spec.eval.batch_size)


def _evaluate(ctx: RunContext, stage: int, stage_task: str, step: int, end: bool) -> None:
    if not ctx.main:
        return
    from forgetting.models.embedded import encoded_corpus_loss

    model = ctx.accelerator.unwrap_model(ctx.model)
    heldout = encoded_corpus_loss(model, ctx.heldout) if ctx.heldout else None
    ctx.evals += evaluation_rows(
        model, ctx.tasks, stage=stage, stage_task=stage_task, step=step, end_of_stage=end,
        batch_size=ctx.spec.eval.batch_size, heldout_loss=heldout,
    )


def snapshot_label(stage: int, task: str, step: int | None = None) -> str:
    return f"stage{stage:02d}-{task}" + (f"-step{step:06d}" if step is not None else "")


def _snapshot(ctx: RunContext, stage: int, task: str, step: int, end: bool) -> str:
    label = snapshot_label(stage, task, None if end else step)
    if ctx.main:
        meta = {"label": label, "stage": stage, "task": task, "step": step, "end_of_stage": end}
        save_snapshot(ctx.accelerator.unwrap_model(ctx.model), ctx.out / "snapshots" / label, meta)
    return label


def _commit_stage(ctx: RunContext, state: dict, stage: int, labels: list[str]) -> None:
    """Make a stage durable: tables first, then ``state.json`` (the resume point)."""
    ctx.accelerator.wait_for_everyone()
    if ctx.main:
        atomic_write_table(ctx.out / EVALS, pd.DataFrame(ctx.evals))
        if ctx.train_log:
            atomic_write_table(ctx.out / TRAIN_LOG, pd.DataFrame(ctx.train_log))
        state["completed_stages"] = stage
        state["snapshots"] = state.get("snapshots", []) + labels
        atomic_write_json(ctx.out / STATE, state)
    ctx.accelerator.wait_for_everyone()


def _run_stage(ctx: RunContext, state: dict, stage: int, global_step: int, bar) -> int:
    spec, task = ctx.spec, ctx.tasks[stage - 1]
    steps = steps_per_task(spec, len(task.train))
    torch.manual_seed(stage_seed(spec.seed, stage))
    labels: list[str] = []

    def on_step(step: int, loss: float, lr: float) -> None:
        g = global_step + step
        ctx.train_log.append({"stage": stage, "task": task.name, "step": g, "loss": loss, "lr": lr})
        bar.update(1)
        bar.set_postfix(task=task.name, loss=f"{loss:.3f}", refresh=False)
        if step < steps and spec.eval.every and step % spec.eval.every == 0:
            _evaluate(ctx, stage, task.name, g, end=False)
        if step < steps and spec.snapshots.every and step % spec.snapshots.every == 0:
            labels.append(_snapshot(ctx, stage, task.name, g, end=False))

    train_task(
        ctx.model, task.train, steps=steps, batch_size=spec.batch_size, grad_accum=spec.grad_accum,
        optim=OptimConfig.from_spec(spec.optimizer), seed=stage_seed(spec.seed, stage), accelerator=ctx.accelerator, on_step=on_step, task_name=task.name,
    )
    global_step += steps
    _evaluate(ctx, stage, task.name, global_step, end=True)
    labels.append(_snapshot(ctx, stage, task.name, global_step, end=True))
    _commit_stage(ctx, state, stage, labels)
    return global_step


def _check_out_dir(spec: ExperimentSpec, out: Path) -> dict:
    """The resume state of ``out`` (empty for a new run); refuses a folder holding another spec."""
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        manifest = read_json(manifest_path)
        if manifest.get("spec_hash") != spec.hash():
            raise SpecError(
                "--out", f"{out} holds a run of another spec (hash {manifest.get('spec_hash')}, this one "
                f"{spec.hash()}); choose another folder"
            )
        return read_json(out / STATE) if (out / STATE).is_file() else {}
    if out.exists() and any(out.iterdir()):
        raise SpecError("--out", f"{out} exists, is not empty and is not a run folder; choose another folder")
    return {}


def _load_tables(ctx: RunContext, completed: int) -> None:
    """Reload rows of completed stages (rows of a stage cut short by a kill are dropped)."""
    for name, target in ((EVALS, ctx.evals), (TRAIN_LOG, ctx.train_log)):
        if (ctx.out / name).is_file():
            df = pd.read_parquet(ctx.out / name)
            target += df[df["stage"] <= completed].to_dict("records")


def run_reference(ctx: RunContext, state: dict) -> None:
    """Joint multi-task training from the base snapshot: the reference a*_k for intransigence."""
    from forgetting.tasks.encoding import concat_examples

    spec = ctx.spec
    restore_snapshot(ctx.accelerator.unwrap_model(ctx.model), ctx.out / "snapshots" / snapshot_label(0, "base"))
    joint = concat_examples([t.train for t in ctx.tasks])
    steps = spec.reference.steps or sum(steps_per_task(spec, len(t.train)) for t in ctx.tasks)
    torch.manual_seed(stage_seed(spec.seed, 10_000))
    train_task(
        ctx.model, joint, steps=steps, batch_size=spec.batch_size, grad_accum=spec.grad_accum,
        optim=OptimConfig.from_spec(spec.optimizer), seed=stage_seed(spec.seed, 10_000), accelerator=ctx.accelerator, task_name="joint",
    )
    if ctx.main:
        rows = evaluation_rows(ctx.accelerator.unwrap_model(ctx.model), ctx.tasks, stage=-1, stage_task="joint",
                               step=steps, end_of_stage=True, batch_size=spec.eval.batch_size)
        atomic_write_table(ctx.out / REFERENCE, pd.DataFrame(rows))
        state["reference_done"] = True
        atomic_write_json(ctx.out / STATE, state)
    ctx.accelerator.wait_for_everyone()


def make_accelerator():
    """An ``Accelerator`` that falls back to CPU (DDP over gloo) when no GPU is present.

    accelerate only forms a multi-process CPU group when asked for CPU explicitly, so launched with
    ``accelerate launch --multi_gpu --num_processes 2`` (or ``torchrun --nproc_per_node 2``) on a
    machine without GPUs this gives 2 CPU processes. ``accelerate launch --cpu --num_processes 2``
    starts ONE process in accelerate 1.x unless an MPI hostfile is given (``--mpirun_hostfile``).
    """
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def run_experiment(spec: ExperimentSpec, out: str | Path, *, progress: bool = True) -> Path:
    """Run (or resume) ``spec`` into folder ``out``; returns ``out``. See the module docstring."""
    from tqdm.auto import tqdm

    out = Path(out)
    state = _check_out_dir(spec, out)
    if state.get("completed_stages") == len(spec.task_list()) and (
        state.get("reference_done") or not spec.reference.enabled
    ):
        return out  # complete: nothing to load or run
    accelerator = make_accelerator()
    if spec.batch_size % (spec.grad_accum * accelerator.num_processes):
        raise SpecError("batch_size", f"{spec.batch_size} must split into grad_accum x {accelerator.num_processes} processes")
    model, tokenizer = load_for_spec(spec)
    tasks = prepare_tasks(spec, tokenizer)
    model = accelerator.prepare_model(model)
    ctx = RunContext(spec, out, model, tokenizer, tasks, accelerator, _heldout_batches(spec, tokenizer))
    if ctx.main and not (out / MANIFEST).is_file():
        out.mkdir(parents=True, exist_ok=True)
        manifest = {
            "spec": spec.model_dump(mode="json"), "spec_hash": spec.hash(), "seed": spec.seed,
            "tasks": [t.name for t in tasks], "num_processes": accelerator.num_processes, **provenance(),
        }
        atomic_write_json(out / MANIFEST, manifest)
    completed = state.get("completed_stages", -1)
    _load_tables(ctx, completed)
    if completed >= 0:
        last = state["snapshots"][-1]
        restore_snapshot(accelerator.unwrap_model(model), out / "snapshots" / last)
    total = sum(steps_per_task(spec, len(t.train)) for t in tasks)
    done_steps = sum(steps_per_task(spec, len(t.train)) for t in tasks[: max(completed, 0)])
    bar = tqdm(total=total, initial=done_steps, desc=spec.name, disable=not progress or paths.quiet() or not ctx.main)
    if completed < 0:
        _evaluate(ctx, 0, "base", 0, end=True)
        _commit_stage(ctx, state, 0, [_snapshot(ctx, 0, "base", 0, end=True)])
        completed = 0
    global_step = done_steps
    for stage in range(completed + 1, len(tasks) + 1):
        global_step = _run_stage(ctx, state, stage, global_step, bar)
    bar.close()
    if spec.reference.enabled and not state.get("reference_done"):
        run_reference(ctx, state)
    return out
