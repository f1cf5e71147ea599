"""Adapter: a Hugging Face ``datasets.Dataset`` with prompt/target columns becomes a :class:`~forgetting.tasks.families.Task`.

Colab users run real tasks this way::

    from datasets import load_dataset
    ds = load_dataset("some/qa-dataset", split="train")
    task = task_from_dataset(ds, "qa", prompt_column="question", target_column="answer")
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from forgetting.tasks.families import Example, Task


def task_from_dataset(
    dataset,
    name: str,
    *,
    prompt_column: str = "prompt",
    target_column: str = "target",
    eval_fraction: float = 0.2,
    eval_dataset=None,
    n_train: int | None = None,
    n_eval: int | None = None,
    answer_vocab: Sequence[str] | None = None,
    seed: int = 0,
) -> Task:
    """Build a task from ``dataset`` (any object with ``column_names`` and row iteration).

    Without ``eval_dataset`` a seeded ``eval_fraction`` of the rows is held out. ``answer_vocab``
    defaults to the words of all targets (the "answer match" metric then restricts the argmax to them).
    Raises ``ValueError`` naming the missing column and the columns that exist.
    """
    for column in (prompt_column, target_column):
        if column not in dataset.column_names:
            raise ValueError(
                f"{'prompt_column' if column == prompt_column else 'target_column'}: no column {column!r}; "
                f"the dataset has {', '.join(dataset.column_names)}"
            )
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction: must be between 0 and 1, got {eval_fraction}")

    def rows(ds) -> list[Example]:
        return [Example(str(r[prompt_column]).strip(), str(r[target_column]).strip()) for r in ds]

    rng = random.Random(seed)
    train = rows(dataset)
    if eval_dataset is None:
        rng.shuffle(train)
        n_heldout = max(1, round(eval_fraction * len(train)))
        evals, train = train[:n_heldout], train[n_heldout:]
    else:
        evals = rows(eval_dataset)
    if n_train is not None and n_train < len(train):
        train = rng.sample(train, n_train)
    if n_eval is not None and n_eval < len(evals):
        evals = rng.sample(evals, n_eval)
    vocab = answer_vocab or sorted({w for ex in train + evals for w in ex.target.split()})
    return Task(
        name=name,
        family="hf",
        description=f"Hugging Face dataset ({prompt_column} -> {target_column})",
        train=tuple(train),
        eval=tuple(evals),
        answer_vocab=tuple(vocab),
    )
