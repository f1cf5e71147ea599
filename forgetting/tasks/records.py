"""A task as plain data: what a run folder stores of its tasks, and their content hashes.

A run folder keeps the definition of every task it trained and evaluated (``tasks.json``, see
:mod:`forgetting.runs.layout`), so a run made from a dataset that is gone, or from a task registered
by code that is not imported, can still be shown and analysed. One task's record::

    {"name": "mycopy", "family": "hf", "description": "...", "source": {...where it came from...},
     "sha256": "<examples_sha256 of the task>",
     "answer_vocab": ["a", "b"], "train": [["Q : copy a b A :", "a b"], ...], "eval": [...]}

:func:`examples_sha256` is the hash of what a run measures: the train and eval examples in order and
the answer vocabulary. :func:`rows_sha256` hashes raw (prompt, target) rows, for the data a task is
drawn from.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from forgetting.tasks.families import Example, Task

FORMAT = 1


def rows_sha256(rows: Iterable[tuple[str, str]]) -> str:
    """sha256 over ``(prompt, target)`` rows in order (each row as a JSON pair, one per line)."""
    digest = hashlib.sha256()
    for prompt, target in rows:
        digest.update(json.dumps([prompt, target], ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def examples_sha256(task: Task) -> str:
    """sha256 of a task's content: its train examples, a separator, its eval examples, its answer vocabulary."""
    digest = hashlib.sha256()
    for part in (task.train, task.eval):
        digest.update(rows_sha256((e.prompt, e.target) for e in part).encode())
    digest.update(json.dumps(list(task.answer_vocab), ensure_ascii=False).encode())
    return digest.hexdigest()


def task_record(task: Task, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The stored form of ``task`` (module docstring); ``source`` says where it came from."""
    return {
        "name": task.name, "family": task.family, "description": task.description,
        "source": source or {"kind": "registered"}, "sha256": examples_sha256(task),
        "answer_vocab": list(task.answer_vocab),
        "train": [[e.prompt, e.target] for e in task.train],
        "eval": [[e.prompt, e.target] for e in task.eval],
    }


def task_from_record(record: dict[str, Any]) -> Task:
    """The :class:`~forgetting.tasks.families.Task` of a stored record; raises ``ValueError`` if its content does not hash to its
    ``sha256`` (the record was altered)."""
    task = Task(
        name=record["name"], family=record["family"], description=record["description"],
        train=tuple(Example(p, t) for p, t in record["train"]),
        eval=tuple(Example(p, t) for p, t in record["eval"]),
        answer_vocab=tuple(record["answer_vocab"]),
    )
    if examples_sha256(task) != record["sha256"]:
        raise ValueError(f"task {task.name!r}: its examples do not hash to the recorded sha256")
    return task


def tasks_document(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole ``tasks.json`` document: ``{"format": 1, "tasks": [record, ...]}`` in sequence order."""
    return {"format": FORMAT, "tasks": records}
