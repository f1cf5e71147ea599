"""Named task sequences (what ``sequence: <name>`` in a spec means)."""

from __future__ import annotations

SEQUENCES: dict[str, tuple[str, ...]] = {
    # Knowledge, a second relation of the same people, a new skill, then a conflicting update.
    "default": ("recall_city", "recall_job", "sort", "update_city"),
    # Same people and format, different relations: forgetting without direct conflict.
    "similar": ("recall_city", "recall_job", "recall_color", "recall_pet"),
    # The same questions with new answers: the maximal conflict.
    "conflict": ("recall_city", "update_city"),
    # Same format, different skills over letters and digits.
    "skills": ("copy", "reverse", "sort", "add"),
    # Eight tasks mixing all families.
    "long": ("recall_city", "copy", "recall_job", "sort", "recall_color", "update_city", "reverse", "add"),
}
