"""Deterministic batch order, shared by every process of a distributed run."""

from __future__ import annotations

import torch


def batch_indices(n_examples: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """Example indices for ``steps`` optimizer steps, shape (steps, batch_size).

    Epoch-wise shuffling: a fresh permutation of ``range(n_examples)`` each time the previous one is used
    up, so every example is seen once per epoch. The same ``seed`` gives the same order on every process.
    """
    if n_examples < 1:
        raise ValueError("n_examples: the task has no training examples")
    generator = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    chunks, have = [], 0
    while have < needed:
        chunks.append(torch.randperm(n_examples, generator=generator))
        have += n_examples
    return torch.cat(chunks)[:needed].view(steps, batch_size)


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's share of a global batch: every ``world_size``-th index starting at ``rank``."""
    return indices[rank::world_size]
