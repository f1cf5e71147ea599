"""Thread settings: one torch thread unless the environment asks for more, in commands and in kernels."""

from __future__ import annotations

import torch

from forgetting import threads


def test_one_thread_unless_asked(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("FORGETTING_THREADS", raising=False)
    assert threads.wanted_threads() == 1 and threads.kernel_threads_env() == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert threads.wanted_threads() is None and threads.kernel_threads_env() == {}
    monkeypatch.setenv("FORGETTING_THREADS", "3")
    assert threads.wanted_threads() == 3 and threads.kernel_threads_env() == {"OMP_NUM_THREADS": "3"}


def test_configure_threads_sets_torch(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setenv("FORGETTING_THREADS", "2")
    try:
        threads.configure_threads()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
