"""Shared fixtures. Tests never download anything: models are the embedded ones or tiny random
models built from configs; data is generated."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("FORGETTING_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The test models are tiny: one intra-op thread is as fast, and two threads on a shared 2-core
    machine spin against other processes (tens of times slower). Restored at the end."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_spec(**overrides) -> dict:
    """A spec that trains two tasks for a handful of steps on the embedded tiny model (seconds)."""
    spec = {
        "name": "test",
        "model": "tiny",
        "seed": 0,
        "sequence": ["recall_city", "update_city"],
        "data": {"n_train": 32, "n_eval": 16},
        "optimizer": {"lr": 3e-3, "warmup_steps": 2},
        "batch_size": 8,
        "steps_per_task": 6,
        "eval": {"every": 3, "batch_size": 64},
    }
    spec.update(overrides)
    return spec


@pytest.fixture
def spec_dict() -> dict:
    return small_spec()
