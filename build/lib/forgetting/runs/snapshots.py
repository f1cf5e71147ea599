"""Snapshots: the trainable weights of a model at a point of the sequence, on disk as safetensors.

On disk rather than in memory: a run can be resumed after a kill from its last snapshot, and
``forgetting analyze DIR`` reads the same snapshots later in another process. Only *trainable*
tensors are saved (all weights for full fine-tuning; the adapter for LoRA), so a LoRA snapshot of a
large model stays small; the frozen rest comes back from the spec's model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from forgetting.files import atomic_dir, atomic_write_json, read_json

WEIGHTS = "weights.safetensors"
META = "meta.json"


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the parameters that require grad, by name."""
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_snapshot(model: torch.nn.Module, folder: Path, meta: dict) -> Path:
    """Write ``folder/weights.safetensors`` and ``folder/meta.json`` atomically."""
    with atomic_dir(folder) as tmp:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        atomic_write_json(tmp / META, meta)
    return folder


def load_snapshot_state(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a snapshot folder, by parameter name (CPU)."""
    return load_file(str(Path(folder) / WEIGHTS))


def is_snapshot(folder: Path) -> bool:
    """Whether ``folder`` holds a complete snapshot (its meta.json is written last)."""
    return (Path(folder) / META).is_file()


def snapshot_meta(folder: Path) -> dict:
    """``label``, ``stage``, ``task``, ``step``, ``end_of_stage`` (run snapshots) or the null's fields."""
    return read_json(Path(folder) / META)


@torch.no_grad()
def restore_snapshot(model: torch.nn.Module, folder: Path) -> None:
    """Copy a snapshot's tensors into ``model``; every saved tensor must match a parameter."""
    state = load_snapshot_state(folder)
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"snapshot {folder}: {len(missing)} tensors do not belong to this model, e.g. {missing[0]}")
    for name, tensor in state.items():
        params[name].copy_(tensor.to(params[name].device, params[name].dtype))
