"""Restoration: put part of a model back to its value before a training stage and see how much of the
old task's lost loss comes back.

Notation: ``before`` = theta_b (the model at the end of stage s-1), ``after`` = theta_a (end of stage s),
L the old task's loss, S a set of parameter entries, theta_a[S <- theta_b] the after-model with the
entries in S set to their before-values. The *recovery* of S is

    R(S) = (L(theta_a) - L(theta_a[S <- theta_b])) / (L(theta_a) - L(theta_b))

R = 1: restoring S alone undoes the whole loss increase; R = 0: it changes nothing; R < 0: it makes the
old task worse still; R > 1: it overshoots the loss before. R is undefined (``ValueError``) when the stage
did not change the old task's loss (L(theta_a) = L(theta_b)).

A restoration is a :data:`Patch`, ``{parameter name: (index, value)}``: ``after``'s parameter ``name`` gets
``value`` at ``index`` (``...`` for the whole tensor, a tuple of slices, a boolean mask or a LongTensor;
anything ``tensor[index] = value`` takes). :func:`patched` applies a patch for the length of a ``with``
block and always puts the after-values back (``try/finally``), bit for bit: the models are unchanged
after every function here, also when the loss function raises.

Parameter names are those of ``after.named_parameters()``: for a peft model
``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`` and so on. Restoring a LoRA
model's attention restores its ``lora_A``/``lora_B`` factors, i.e. the effective update
``delta W = s B A`` of every adapted module; its frozen base weights are equal in both models and
restoring them changes nothing (a patch leaves out every tensor equal in both models).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "Patch", "check_same_parameters", "loss_value", "parameter_patch", "patch_recovery", "patch_size", "patched",
    "recovery", "recovery_ratio", "restored_loss", "slice_patch", "slice_recovery",
]

#: ``{parameter name in after.named_parameters(): (index, value)}`` (see the module docstring).
Patch = dict[str, tuple[Any, torch.Tensor]]
LossFn = Callable[[nn.Module], "float | torch.Tensor"]
Select = Callable[[str], bool]


def check_same_parameters(before: nn.Module, after: nn.Module) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
    """``{name: (before's parameter, after's parameter)}`` in after's order; ``ValueError`` naming every
    parameter only one model has and every shape that differs (the models are not of one architecture)."""
    b, a = dict(before.named_parameters()), dict(after.named_parameters())
    problems = [f"{n!r} only in before" for n in b if n not in a] + [f"{n!r} only in after" for n in a if n not in b]
    problems += [f"{n!r} is {tuple(b[n].shape)} in before but {tuple(p.shape)} in after"
                 for n, p in a.items() if n in b and b[n].shape != p.shape]
    if problems:
        raise ValueError(f"before, after: not models of one architecture ({len(problems)} mismatches): "
                         + "; ".join(problems))
    return {n: (b[n], p) for n, p in a.items()}


def _differs(pair: tuple[nn.Parameter, nn.Parameter]) -> bool:
    b, a = pair
    return not torch.equal(b.detach().to(a.device), a.detach())


def parameter_patch(before: nn.Module, after: nn.Module, select: Select) -> Patch:
    """The patch restoring every parameter ``select(name)`` picks (whole tensors; tensors equal in both
    models are left out, restoring them would change nothing)."""
    pairs = check_same_parameters(before, after)
    return {n: (..., pair[0].detach()) for n, pair in pairs.items() if select(n) and _differs(pair)}


def slice_patch(before: nn.Module, after: nn.Module, slices: Mapping[str, Any]) -> Patch:
    """The patch restoring ``after``'s parameter ``name`` at ``slices[name]`` (an index: a tuple of
    slices, a boolean mask shaped like the parameter, a LongTensor, ``...``) to ``before``'s values there.

    Example: head 3 of a Llama layer (head dim d) is the q rows ``(slice(3*d, 4*d), slice(None))`` of
    ``q_proj.weight`` and the o columns ``(slice(None), slice(3*d, 4*d))`` of ``o_proj.weight``
    (:func:`forgetting.causal.heads.head_patch` builds these from the model's geometry).
    """
    pairs = check_same_parameters(before, after)
    unknown = [n for n in slices if n not in pairs]
    if unknown:
        raise ValueError(f"slices: {unknown} are not parameters of the models")
    return {n: (index, pairs[n][0].detach()[index]) for n, index in slices.items()}


def patch_size(patch: Patch) -> int:
    """The number of parameter entries a patch writes (``sum numel(value)``)."""
    return int(sum(value.numel() for _, value in patch.values()))


@contextlib.contextmanager
def patched(model: nn.Module, patch: Patch) -> Iterator[nn.Module]:
    """``model`` with ``patch`` written into its parameters inside the block; the old values are put back
    on leaving it, whatever happens inside (``try/finally``), bit for bit."""
    params = dict(model.named_parameters())
    unknown = [n for n in patch if n not in params]
    if unknown:
        raise ValueError(f"patch: {unknown} are not parameters of the model")
    saved: list[tuple[nn.Parameter, Any, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for name, (index, value) in patch.items():
                p = params[name]
                saved.append((p, index, p[index].clone()))
                p[index] = value.to(device=p.device, dtype=p.dtype)
        yield model
    finally:
        with torch.no_grad():
            for p, index, old in reversed(saved):
                p[index] = old


def loss_value(loss_fn: LossFn, model: nn.Module) -> float:
    """``loss_fn(model)`` as a float, under ``torch.no_grad``."""
    with torch.no_grad():
        value = loss_fn(model)
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def restored_loss(after: nn.Module, patch: Patch, loss_fn: LossFn) -> float:
    """``L(theta_a[S <- theta_b])``: ``loss_fn(after)`` with ``patch`` applied, under ``torch.no_grad``
    (``after`` is unchanged after)."""
    with torch.no_grad(), patched(after, patch):
        return loss_value(loss_fn, after)


def recovery_ratio(loss_before: float, loss_after: float, loss_restored: float) -> float:
    """``(loss_after - loss_restored) / (loss_after - loss_before)``; ``ValueError`` when the denominator is
    0 (the stage did not change the old task's loss: recovery is undefined) or not finite."""
    denominator = loss_after - loss_before
    if denominator == 0 or not math.isfinite(denominator):
        raise ValueError(
            f"recovery is undefined when the stage did not change the old task's loss: L(after) = {loss_after!r}, "
            f"L(before) = {loss_before!r}"
        )
    return (loss_after - loss_restored) / denominator


def patch_recovery(before: nn.Module, after: nn.Module, loss_fn: LossFn, patch: Callable[[], Patch]) -> float:
    """R(S) for the patch ``patch()`` builds (called after the recovery is known to be defined): the one
    computation behind :func:`recovery`, :func:`slice_recovery` and
    :func:`forgetting.causal.heads.head_recovery`; an empty patch gives 0."""
    with torch.no_grad():
        loss_before, loss_after = loss_value(loss_fn, before), loss_value(loss_fn, after)
        recovery_ratio(loss_before, loss_after, loss_after)  # undefined recovery fails before any patching
        written = patch()
        if not written:
            return 0.0
        return recovery_ratio(loss_before, loss_after, restored_loss(after, written, loss_fn))


def recovery(before: nn.Module, after: nn.Module, loss_fn: LossFn, select: Select) -> float:
    """The recovery R(S) (module docstring) of the parameters ``select(name)`` picks.

    Args:
        before, after: models of one architecture (the same parameter names and shapes, else ``ValueError``
            naming every mismatch), plain or peft.
        loss_fn: ``loss_fn(model)`` -> the old task's loss (a float or a 0-d tensor), called under
            ``torch.no_grad``: on ``before``, on ``after``, and on ``after`` with the selection restored.
        select: ``select(parameter name) -> bool``, names of ``after.named_parameters()``; selecting
            nothing (or only tensors equal in both models) gives 0.

    Both models are unchanged after the call, also when ``loss_fn`` raises.
    """
    return patch_recovery(before, after, loss_fn, lambda: parameter_patch(before, after, select))


def slice_recovery(before: nn.Module, after: nn.Module, loss_fn: LossFn, slices: Mapping[str, Any]) -> float:
    """:func:`recovery` of the parameter slices ``{name: index}`` (see :func:`slice_patch`): a finer
    restoration than whole tensors, e.g. an attention head's rows and columns."""
    return patch_recovery(before, after, loss_fn, lambda: slice_patch(before, after, slices))
