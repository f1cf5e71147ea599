"""Tasks: a generated world, task families with a similarity structure, named sequences, and an
adapter for Hugging Face ``datasets``."""

from forgetting.tasks.families import Example, Task, make_task, task_names
from forgetting.tasks.sequences import SEQUENCES
from forgetting.tasks.world import World, make_world

__all__ = ["Example", "SEQUENCES", "Task", "World", "make_task", "make_world", "task_names"]
