"""Adapter: a Hugging Face ``datasets.Dataset`` with prompt/target columns becomes a :class:`~forgetting.tasks.families.Task`.

Colab users run real tasks this way::

    from datasets import load_dataset
    ds = load_dataset("some/qa-dataset", split="train")
    task = task_from_dataset(ds, "qa", prompt_column="question", target_column="answer")

A spec names such a task with a ``dataset:`` entry (:class:`forgetting.spec.DatasetTaskSpec`), which
:func:`task_from_entry` builds: the entry's ``dataset`` is a folder written by ``save_to_disk`` (read
with ``datasets.load_from_disk``; a saved ``DatasetDict`` needs ``split``, a saved ``Dataset`` is the
split itself) or a hub id (``datasets.load_dataset(id, split=...)``, which reads the local cache and
downloads only what is not there). The task records where it came from and the sha256 of the rows it
was drawn from (:func:`forgetting.tasks.records.rows_sha256`), so a changed dataset under the same
name is a different task.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from forgetting.errors import SpecError
from forgetting.tasks.families import Example, Task
from forgetting.tasks.records import rows_sha256


class DatasetEntry(Protocol):
    """What :func:`task_from_entry` reads of a spec's ``dataset:`` task entry."""

    dataset: str
    split: str | None
    eval_split: str | None
    prompt_column: str
    target_column: str
    eval_fraction: float
    answer_vocab: list[str] | None


def _rows(ds, prompt_column: str, target_column: str) -> list[Example]:
    return [Example(str(r[prompt_column]).strip(), str(r[target_column]).strip()) for r in ds]


def _check_columns(dataset, prompt_column: str, target_column: str, where: str = "") -> None:
    for option, column in (("prompt_column", prompt_column), ("target_column", target_column)):
        if column not in dataset.column_names:
            raise SpecError(f"{where}{option}", f"no column {column!r}; the dataset has {', '.join(dataset.column_names)}")


def task_from_rows(
    name: str,
    train: list[Example],
    evals: list[Example] | None,
    *,
    eval_fraction: float = 0.2,
    n_train: int | None = None,
    n_eval: int | None = None,
    answer_vocab: Sequence[str] | None = None,
    seed: int = 0,
    description: str = "",
) -> Task:
    """A task from example rows: without ``evals`` a seeded ``eval_fraction`` of ``train`` is held out;
    ``n_train`` / ``n_eval`` cap the examples (a seeded sample); ``answer_vocab`` defaults to the words
    of all targets (the "answer match" metric then restricts the argmax to them)."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction: must be between 0 and 1, got {eval_fraction}")
    rng = random.Random(seed)
    train = list(train)
    if evals is None:
        rng.shuffle(train)
        n_heldout = max(1, round(eval_fraction * len(train)))
        evals, train = train[:n_heldout], train[n_heldout:]
    if n_train is not None and n_train < len(train):
        train = rng.sample(train, n_train)
    if n_eval is not None and n_eval < len(evals):
        evals = rng.sample(evals, n_eval)
    vocab = answer_vocab or sorted({w for ex in train + evals for w in ex.target.split()})
    return Task(name=name, family="hf", description=description, train=tuple(train), eval=tuple(evals),
                answer_vocab=tuple(vocab))


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

    Without ``eval_dataset`` a seeded ``eval_fraction`` of the rows is held out (:func:`task_from_rows`).
    Raises ``ValueError`` naming the missing column and the columns that exist.
    """
    _check_columns(dataset, prompt_column, target_column)
    evals = None if eval_dataset is None else _rows(eval_dataset, prompt_column, target_column)
    return task_from_rows(
        name, _rows(dataset, prompt_column, target_column), evals, eval_fraction=eval_fraction,
        n_train=n_train, n_eval=n_eval, answer_vocab=answer_vocab, seed=seed,
        description=f"Hugging Face dataset ({prompt_column} -> {target_column})",
    )


def open_split(source: str, split: str | None, where: str = "dataset"):
    """The ``datasets.Dataset`` of ``split`` of ``source`` (module docstring); raises
    :class:`~forgetting.errors.SpecError` (field ``where``) saying what is there instead."""
    try:
        import datasets  # deferred: datasets is slow to import and only dataset-made tasks need it
    except ImportError:
        raise SpecError(where, "a task from a dataset needs the datasets package; allowed after "
                               "`pip install 'forgetting[datasets]'` (or pip install datasets)") from None

    if Path(source).expanduser().is_dir():
        try:
            loaded = datasets.load_from_disk(str(Path(source).expanduser()))
        except (FileNotFoundError, ValueError) as exc:
            raise SpecError(where, f"{source} is a folder but not one written by save_to_disk ({exc})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split is None or split not in loaded:
                raise SpecError(where.replace("dataset", "split"),
                                f"{split!r} is not a split of {source}; allowed: {', '.join(loaded)}")
            return loaded[split]
        if split is not None:
            raise SpecError(where.replace("dataset", "split"),
                            f"{source} holds one saved Dataset, not splits; allowed: leave split out")
        return loaded
    if source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise SpecError(where, f"{source!r} is neither a folder written by save_to_disk nor a hub id 'org/name'")
    try:
        return datasets.load_dataset(source, split=split or "train")
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, unknown split: all are the user's to fix
        raise SpecError(where, f"could not load hub dataset {source!r} (split {split or 'train'!r}): {exc}. "
                               "Download it first and name the folder it is saved in (save_to_disk)") from None


def entry_source(name: str, entry: DatasetEntry) -> tuple[list[Example], list[Example] | None, dict[str, Any]]:
    """The train rows, eval rows (``None`` without ``eval_split``) and source record of task ``name``'s
    ``entry``: ``{"kind": "dataset", "dataset", "split", "eval_split", "prompt_column", "target_column",
    "rows_sha256", "eval_rows_sha256"}`` (``dataset`` absolute for a folder; the hashes are
    :func:`~forgetting.tasks.records.rows_sha256` of the rows read, ``None`` for no eval split)."""
    where = f"tasks.{name}."
    splits = [open_split(entry.dataset, entry.split, where + "dataset")]
    if entry.eval_split is not None:
        splits.append(open_split(entry.dataset, entry.eval_split, where + "eval_split"))
    for ds in splits:
        _check_columns(ds, entry.prompt_column, entry.target_column, where)
    rows = [_rows(ds, entry.prompt_column, entry.target_column) for ds in splits]
    folder = Path(entry.dataset).expanduser()
    source = {
        "kind": "dataset", "dataset": str(folder.resolve()) if folder.is_dir() else entry.dataset,
        "split": entry.split, "eval_split": entry.eval_split, "prompt_column": entry.prompt_column,
        "target_column": entry.target_column,
        "rows_sha256": rows_sha256((e.prompt, e.target) for e in rows[0]),
        "eval_rows_sha256": rows_sha256((e.prompt, e.target) for e in rows[1]) if len(rows) > 1 else None,
    }
    return rows[0], (rows[1] if len(rows) > 1 else None), source


def task_from_entry(
    name: str,
    entry: DatasetEntry,
    *,
    n_train: int | None,
    n_eval: int | None,
    seed: int,
    fits: Callable[[Example], bool] | None = None,
) -> tuple[Task, dict[str, Any]]:
    """``(task, source record)`` of a spec's dataset entry: rows that ``fits`` rejects (too many tokens)
    are dropped before the eval split and the ``n_train`` / ``n_eval`` samples are drawn."""
    train, evals, source = entry_source(name, entry)
    if fits is not None:
        kept = [ex for ex in train if fits(ex)], None if evals is None else [ex for ex in evals if fits(ex)]
        source["dropped_too_long"] = len(train) - len(kept[0]) + (0 if evals is None else len(evals) - len(kept[1]))
        train, evals = kept
    if len(train) < (1 if evals is not None else 2) or evals == []:
        raise SpecError(f"tasks.{name}.dataset", f"{entry.dataset} leaves {len(train)} train and "
                        f"{'no' if evals is None else len(evals)} eval rows; allowed: at least one of each")
    task = task_from_rows(
        name, train, evals, eval_fraction=entry.eval_fraction, n_train=n_train, n_eval=n_eval,
        answer_vocab=entry.answer_vocab, seed=seed,
        description=f"{entry.dataset} ({entry.prompt_column} -> {entry.target_column})",
    )
    return task, source
