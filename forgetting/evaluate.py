"""Evaluation: loss, token accuracy, exact match and answer match of a model on a task, and the
long-format evaluation table from which the performance matrix R and forgetting curves are read.

For one example with target positions t = 1..m (the target tokens and the closing eos) and logits z_t:

- ``loss`` = mean over all target tokens of all examples of -log softmax(z_t)[y_t]  (nats per token)
- ``token_accuracy`` = fraction of target tokens with argmax z_t = y_t
- ``exact_match`` = fraction of examples with argmax z_t = y_t for every t (teacher-forced; equal to
  greedy decoding reproducing the target, see :mod:`forgetting.tasks.encoding`)
- ``answer_match`` = fraction of examples whose answer tokens (target without eos) are all the argmax
  over the task's answer vocabulary only. It separates "the knowledge is gone" from "the model now
  prefers another output format" (exact match saturates at 0 after a conflicting task).

The evaluation table has one row per (evaluation point, task, metric); see ``EVAL_COLUMNS``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from forgetting.errors import SpecError
from forgetting.metrics import summarize
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples, answer_token_ids, concat_examples, encode_examples
from forgetting.tasks.families import Task

METRICS = ("loss", "token_accuracy", "exact_match", "answer_match")
HIGHER_IS_BETTER = {"loss": False, "token_accuracy": True, "exact_match": True, "answer_match": True}
HELDOUT_TASK = "heldout_corpus"

EVAL_COLUMNS = {
    "stage": "int: 0 = before fine-tuning, i = while/after training the i-th task (1-based)",
    "stage_task": "str: 'base' for stage 0, else the task trained in that stage",
    "step": "int: global optimizer step (0 before fine-tuning)",
    "end_of_stage": "bool: the evaluation at the end of the stage (these rows form R)",
    "task": "str: the evaluated task",
    "task_index": f"int: the task's position in the sequence (0-based; -1 for {HELDOUT_TASK!r})",
    "metric": f"str: one of {METRICS}",
    "value": "float",
}


@dataclass
class PreparedTask:
    """A task encoded for one tokenizer: train/eval tensors and the answer vocabulary's token ids."""

    task: Task
    train: EncodedExamples
    eval: EncodedExamples
    answer_ids: torch.Tensor

    @property
    def name(self) -> str:
        return self.task.name


def prepare_task(task: Task, tokenizer, max_length: int | None = None) -> PreparedTask:
    return PreparedTask(
        task=task,
        train=encode_examples(tokenizer, task.train, max_length),
        eval=encode_examples(tokenizer, task.eval, max_length),
        answer_ids=answer_token_ids(tokenizer, task.answer_vocab),
    )


def check_fits(model, tasks: Sequence[PreparedTask]) -> None:
    """Raise :class:`~forgetting.errors.SpecError` naming every task whose encoded examples (prompt,
    answer and eos) are longer than the model's positions (``max_position_embeddings`` of its text
    config; no check for a model without one), before anything is trained or written."""
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if not limit:
        return
    too_long = [f"{t.name} ({split}: {ex.input_ids.shape[1]} tokens)" for t in tasks
                for split, ex in (("train", t.train), ("eval", t.eval)) if ex.input_ids.shape[1] > limit]
    if too_long:
        raise SpecError("sequence", f"{', '.join(too_long)} longer than the model's {limit} positions; allowed: "
                                    f"tasks whose examples fit in {limit} tokens")


_SCORES = ("loss_sum", "n_tokens", "n_correct", "exact", "answer")


@torch.no_grad()
def _score_rows(model, examples: EncodedExamples, allowed: torch.Tensor | None, batch_size: int) -> torch.Tensor:
    """Per-example sums, shape (n, 5): target loss sum, target tokens, correct tokens, exact (0/1),
    answer match (0/1). ``allowed`` (n, V) bool marks each example's answer vocabulary (None: no
    answer match, the column is 0)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.zeros(len(examples), len(_SCORES), dtype=torch.float64)
    for start in range(0, len(examples), batch_size):
        rows = slice(start, start + batch_size)
        batch = examples.select(rows)
        logits = model(
            input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
        ).logits[:, :-1].float()
        labels = batch.labels[:, 1:].to(device)
        valid = labels != IGNORE_INDEX
        loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
        correct = (logits.argmax(dim=-1) == labels) & valid
        scores = [loss.sum(dim=1), valid.sum(dim=1), correct.sum(dim=1), (correct | ~valid).all(dim=1)]
        if allowed is not None:
            mask = allowed[rows].to(device)
            mask = torch.nn.functional.pad(mask, (0, logits.shape[-1] - mask.shape[-1]), value=False)
            restricted = logits.masked_fill(~mask[:, None, :], float("-inf"))
            answer_mask = batch.answer_mask[:, 1:].to(device)
            scores.append(((restricted.argmax(dim=-1) == labels) | ~answer_mask).all(dim=1))
        else:
            scores.append(torch.zeros_like(scores[0]))
        out[rows] = torch.stack([s.double().cpu() for s in scores], dim=1)
    model.train(was_training)
    return out


def _allowed_rows(answer_ids: torch.Tensor, n: int, vocab_size: int) -> torch.Tensor:
    """(n, vocab_size) bool: True at the answer ids (``vocab_size`` at least max id + 1; the scorer pads)."""
    allowed = torch.zeros(vocab_size, dtype=torch.bool)
    allowed[answer_ids] = True
    return allowed.expand(n, vocab_size)


def _metrics(sums: torch.Tensor, n: int, with_answer: bool) -> dict[str, float]:
    loss_sum, n_tokens, n_correct, exact, answer = sums.tolist()
    return {
        "loss": loss_sum / n_tokens,
        "token_accuracy": n_correct / n_tokens,
        "exact_match": exact / n,
        "answer_match": answer / n if with_answer else float("nan"),
    }


def evaluate_examples(
    model, examples: EncodedExamples, answer_ids: torch.Tensor | None = None, batch_size: int = 128
) -> dict[str, float]:
    """The four metrics of ``model`` on ``examples`` (see the module docstring)."""
    with_answer = answer_ids is not None and len(answer_ids) > 0
    allowed = _allowed_rows(answer_ids, len(examples), int(answer_ids.max()) + 1) if with_answer else None
    return _metrics(_score_rows(model, examples, allowed, batch_size).sum(dim=0), len(examples), with_answer)


def evaluate_tasks(model, tasks: list[PreparedTask], batch_size: int = 128) -> list[dict[str, float]]:
    """:func:`evaluate_examples` for every task, in one pass over all their eval examples.

    The tasks' eval sets are stacked into one padded set so that a forward pass serves several tasks
    (a tiny model's forward costs about the same for 60 rows as for 240); per-example sums are then
    added up per task, so the numbers equal those of separate passes.
    """
    vocab = max((int(t.answer_ids.max()) + 1 for t in tasks if len(t.answer_ids)), default=1)
    stacked = concat_examples([t.eval for t in tasks])
    allowed = torch.cat([_allowed_rows(t.answer_ids, len(t.eval), vocab) for t in tasks])
    sums = _score_rows(model, stacked, allowed, batch_size)
    out, start = [], 0
    for task in tasks:
        n = len(task.eval)
        out.append(_metrics(sums[start : start + n].sum(dim=0), n, len(task.answer_ids) > 0))
        start += n
    return out


def evaluation_rows(
    model,
    tasks: Iterable[PreparedTask],
    *,
    stage: int,
    stage_task: str,
    step: int,
    end_of_stage: bool,
    batch_size: int = 128,
    heldout_loss: float | None = None,
) -> list[dict]:
    """Evaluate ``model`` on every task's eval split; rows in the format of ``EVAL_COLUMNS``."""
    tasks = list(tasks)
    common = {"stage": stage, "stage_task": stage_task, "step": step, "end_of_stage": end_of_stage}
    rows = []
    for index, (task, scores) in enumerate(zip(tasks, evaluate_tasks(model, tasks, batch_size))):
        rows += [{**common, "task": task.name, "task_index": index, "metric": m, "value": v} for m, v in scores.items()]
    if heldout_loss is not None:
        rows.append({**common, "task": HELDOUT_TASK, "task_index": -1, "metric": "loss", "value": heldout_loss})
    return rows


def performance_matrix(evals: pd.DataFrame, metric: str = "exact_match") -> pd.DataFrame:
    """R as a (T+1) x T DataFrame: row 0 = before fine-tuning ('base'), row i = after task i.

    Index: the stage_task of each row ("base", then task names); columns: evaluated tasks in sequence
    order. With several runs (a ``seed`` column) each cell is the mean over runs. Values are the raw metric (for ``loss`` lower is better; negate before
    :func:`forgetting.metrics.summarize`).
    """
    if metric not in METRICS:
        raise ValueError(f"metric: {metric!r} is not one of {', '.join(METRICS)}")
    rows = evals[(evals["end_of_stage"]) & (evals["metric"] == metric) & (evals["task_index"] >= 0)]
    table = rows.pivot_table(index=["stage", "stage_task"], columns=["task_index", "task"], values="value")
    table = table.sort_index(axis=0).sort_index(axis=1)
    table.index = table.index.get_level_values("stage_task")
    table.columns = table.columns.get_level_values("task")
    return table


def summary_table(evals: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """ACC, BWT, FWT, forgetting (and intransigence with a joint reference) for every metric.

    Losses are negated so that, as for the other metrics, higher is better. One row per metric.
    """
    out = []
    for metric in METRICS:
        R = performance_matrix(evals, metric)
        if R.empty or R.isna().all().all():
            continue
        sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
        values = sign * R.to_numpy()
        ref = None
        if reference is not None:
            ref_rows = reference[reference["metric"] == metric].set_index("task")["value"]
            ref = sign * ref_rows.reindex(R.columns).to_numpy()
        result = summarize(values[1:], baseline=values[0], reference=ref)
        out.append({"metric": metric, **{k: result.get(k) for k in ("acc", "bwt", "fwt", "forgetting", "intransigence")}})
    return pd.DataFrame(out)


def summary_by_seed(evals: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """:func:`summary_table` for each seed of a multi-run table, long format.

    Columns: ``seed``, ``metric``, ``measure`` (acc, bwt, fwt, forgetting, intransigence), ``value``.
    ``evals`` (and ``reference``) carry a ``seed`` column; without one, everything is seed 0.
    """
    evals = evals if "seed" in evals else evals.assign(seed=0)
    out = []
    for seed, group in evals.groupby("seed"):
        ref = None
        if reference is not None:
            ref = reference[reference["seed"] == seed] if "seed" in reference else reference
        table = summary_table(group, ref).melt(id_vars="metric", var_name="measure", value_name="value")
        out.append(table.assign(seed=seed))
    return pd.concat(out, ignore_index=True).dropna(subset=["value"])
