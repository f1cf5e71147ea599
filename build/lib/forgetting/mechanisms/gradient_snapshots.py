"""Gradients and weight changes read from snapshots: alignment along training of a new task and the
first-order forgetting estimate.

First-order forgetting estimate. For a step theta -> theta + delta,
``L_old(theta + delta) - L_old(theta) = g_old . delta + O(||delta||^2)`` (:func:`first_order_change`);
:func:`observed_vs_predicted` sets ``g_old(theta_a) . (theta_b - theta_a)`` against the observed loss
change ``L_old(theta_b) - L_old(theta_a)`` between two snapshots a and b (for a LoRA model also in weight
space, ``sum_W G_W . (delta W_b - delta W_a)``). :func:`snapshot_delta` is ``theta_b - theta_a``.

Along training. :func:`snapshot_alignment` computes ``g_old(theta_s)`` and ``g_new(theta_s)`` at each
snapshot s of the new task's training and their per-unit alignment
(:func:`~forgetting.mechanisms.gradients.gradient_alignment`); for a finished run the snapshots of a stage
are :meth:`forgetting.runs.run.Run.stage_snapshots`, and :func:`forgetting.analysis.gradients.stage_alignment`
does it for a run.

Snapshots are folders in the format of :mod:`forgetting.runs.snapshots`. Every function puts the model's
weights back afterwards. Everything here is also importable from :mod:`forgetting.mechanisms.gradients`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from forgetting import paths
from forgetting.mechanisms.gradient_units import _common_names, gradient_alignment
from forgetting.mechanisms.loss_gradients import (
    Gradients,
    _gradients_and_loss,
    _head,
    _lora_gradients_and_loss,
    _resolve_params,
    task_loss,
)
from forgetting.models.geometry import attention_geometry
from forgetting.models.lora import effective_update, lora_layers
from forgetting.runs.snapshots import WEIGHTS, load_snapshot_state, snapshot_meta
from forgetting.tasks.encoding import EncodedExamples

__all__ = ["first_order_change", "observed_vs_predicted", "snapshot_alignment", "snapshot_delta"]


def first_order_change(grad_old: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]) -> float:
    """First-order prediction of the old task's loss change along ``delta``: ``g_old . delta`` (float64).

    ``L_old(theta + delta) - L_old(theta) = g_old . delta + O(||delta||^2)``, summed over the names both
    dicts share (shapes must agree). Per-unit contributions are the ``dot`` column of
    ``gradient_alignment(grad_old, delta)``.
    """
    names = _common_names(grad_old, delta)
    total = 0.0
    for n in names:
        g = grad_old[n].detach().to(torch.float64)
        total += float((g * delta[n].detach().to(g.device, torch.float64)).sum())
    return total


# ---------------------------------------------------------------------------------------------------
# snapshots
# ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _preserving(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Restore the named parameters (and the train/eval mode) on exit, also on exception."""
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in names if n in params}
    was_training = model.training
    try:
        yield
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].copy_(t)
        model.train(was_training)


def _load_state(folder: str | Path) -> dict[str, torch.Tensor]:
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise FileNotFoundError(f"snapshot: {folder} has no {WEIGHTS}")
    return load_snapshot_state(folder)


def _snapshot_step(folder: str | Path) -> int | None:
    try:
        return int(snapshot_meta(Path(folder))["step"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return None


def snapshot_delta(snapshot_a: str | Path, snapshot_b: str | Path) -> dict[str, torch.Tensor]:
    """``theta_b - theta_a`` for the tensors both snapshots hold (float32 CPU), e.g. theta_A - theta_0."""
    a, b = _load_state(snapshot_a), _load_state(snapshot_b)
    names = _common_names(a, b)
    return {n: b[n].float() - a[n].float() for n in names}


def _restore(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ValueError(f"snapshot: {len(missing)} tensors do not belong to this model, e.g. {missing[0]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t.to(params[n].device, params[n].dtype))


def _is_lora(model: nn.Module) -> bool:
    return bool(lora_layers(model))


def _effective_delta(model: nn.Module, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]) -> Gradients:
    """``delta W_b - delta W_a`` of every LoRA layer (restores ``state_a``, then ``state_b``)."""
    _restore(model, state_a)
    before = {n: t.float() for n, t in effective_update(model).items()}
    _restore(model, state_b)
    return {n: t.float() - before[n] for n, t in effective_update(model).items()}


def observed_vs_predicted(
    model: nn.Module,
    snapshot_a: str | Path,
    snapshot_b: str | Path | Sequence[str | Path],
    old_task_examples: EncodedExamples,
    *,
    batch_size: int = 64,
    max_examples: int | None = None,
) -> pd.DataFrame:
    """First-order forgetting estimate ``g_old(theta_a) . (theta_b - theta_a)`` against the observed change
    ``L_old(theta_b) - L_old(theta_a)``, for one or several later snapshots b.

    Loads the snapshots into ``model`` (their tensors: all weights, or the adapter under LoRA) and puts
    the model's weights back afterwards. For a LoRA model ``predicted_effective`` is also given, the same
    estimate in weight space: ``sum_W G_W . (delta W_b - delta W_a)`` (the update the adapters amount to is
    linear in W, so it misses only the curvature of L, not the bilinearity of B A).

    Returns:
        pandas.DataFrame: one row per b, ``snapshot_a, snapshot_b, step_b`` (from the snapshot's meta.json), ``loss_a,
        loss_b, observed`` (loss_b - loss_a), ``predicted`` (g.delta), ``predicted_effective`` (LoRA, else
        NaN), ``relative_error`` = ``(predicted - observed) / |observed|``, ``grad_norm``, ``delta_norm`` and
        ``cosine`` = cos(g_old, delta). Cost: one backward pass per batch at a, one forward pass per batch
        at each b.
    """
    folders = [snapshot_b] if isinstance(snapshot_b, (str, Path)) else list(snapshot_b)
    if not folders:
        raise ValueError("snapshot_b: no snapshot given")
    examples = _head(old_task_examples, max_examples)
    state_a = _load_state(snapshot_a)
    lora = _is_lora(model)
    rows = []
    with _preserving(model, state_a):
        _restore(model, state_a)
        if lora:
            grads, g_eff, loss_a = _lora_gradients_and_loss(model, examples, batch_size=batch_size)
        else:
            grads, loss_a = _gradients_and_loss(model, examples, batch_size=batch_size, params=_resolve_params(model, list(state_a)))
        for folder in folders:
            state_b = _load_state(folder)
            delta = {n: state_b[n].float() - state_a[n].float() for n in _common_names(state_a, state_b)}
            predicted = first_order_change(grads, delta)
            effective = first_order_change(g_eff, _effective_delta(model, state_a, state_b)) if lora else math.nan
            _restore(model, state_b)
            loss_b = task_loss(model, examples, batch_size=batch_size)
            rows.append(_prediction_row(snapshot_a, folder, loss_a, loss_b, predicted, effective, grads, delta))
    return pd.DataFrame(rows)


def _prediction_row(snapshot_a, folder, loss_a: float, loss_b: float, predicted: float, effective: float,
                    grads: Gradients, delta: Gradients) -> dict:
    names = _common_names(grads, delta)
    g_sq = sum(float(grads[n].double().pow(2).sum()) for n in names)
    d_sq = sum(float(delta[n].double().pow(2).sum()) for n in names)
    observed = loss_b - loss_a
    denom = math.sqrt(g_sq * d_sq)
    return {
        "snapshot_a": Path(snapshot_a).name, "snapshot_b": Path(folder).name, "step_b": _snapshot_step(folder),
        "loss_a": loss_a, "loss_b": loss_b, "observed": observed, "predicted": predicted,
        "predicted_effective": effective,
        "relative_error": (predicted - observed) / abs(observed) if observed != 0 else math.nan,
        "grad_norm": math.sqrt(g_sq), "delta_norm": math.sqrt(d_sq),
        "cosine": predicted / denom if denom > 0 else math.nan,
    }


def snapshot_alignment(
    model: nn.Module,
    snapshots: Sequence[str | Path],
    examples_old: EncodedExamples,
    examples_new: EncodedExamples,
    *,
    batch_size: int = 64,
    max_examples: int | None = None,
    params: Any = None,
    heads: bool = True,
    fixed_old: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Alignment of the old and new task's gradients at each snapshot along training of the new task.

    At each snapshot s (e.g. every k steps, :meth:`forgetting.runs.run.Run.stage_snapshots`):
    ``g_old(theta_s)`` and ``g_new(theta_s)`` and :func:`~forgetting.mechanisms.gradient_units.gradient_alignment` (a = old, b = new). With
    ``fixed_old`` the old task's gradient is taken once, at the first snapshot (half the backward passes).
    The model's weights are put back afterwards. Feed the result to :func:`~forgetting.mechanisms.gradients.step_conflict_rate` for the fraction of steps in conflict.

    Returns:
        alignment rows with ``snapshot`` (folder name) and ``step`` (from meta.json, else the position).
    """
    if not snapshots:
        raise ValueError("snapshots: empty")
    states = [_load_state(s) for s in snapshots]
    geometry = attention_geometry(model)
    selected = _resolve_params(model, params)
    ex_old, ex_new = _head(examples_old, max_examples), _head(examples_new, max_examples)
    frames = []
    g_old: Gradients | None = None
    with _preserving(model, {n for s in states for n in s}):
        for i, (folder, state) in enumerate(tqdm(list(zip(snapshots, states)), desc="gradient alignment",
                                                disable=not progress or paths.quiet())):
            _restore(model, state)
            if g_old is None or not fixed_old:
                g_old = _gradients_and_loss(model, ex_old, batch_size=batch_size, params=selected)[0]
            g_new = _gradients_and_loss(model, ex_new, batch_size=batch_size, params=selected)[0]
            step = _snapshot_step(folder)
            frames.append(gradient_alignment(g_old, g_new, geometry, heads=heads).assign(
                snapshot=Path(folder).name, step=i if step is None else step))
    return pd.concat(frames, ignore_index=True)
