"""Restoring attention heads: which entries of which weights are head h, in plain and LoRA models.

Notation as in :mod:`forgetting.models.geometry`: ``H`` query heads, ``K`` key/value heads, ``d`` head dim,
``D`` hidden size; query head h reads key/value head ``g = h // (H // K)``.

*Restoring head h of layer l* restores the entries that belong to h alone:

- its q rows: ``q_proj.weight[h*d:(h+1)*d, :]`` ``(d, D)`` (and those rows of ``q_proj.bias`` where
  there is one): what h looks for;
- its o columns: ``o_proj.weight[:, h*d:(h+1)*d]`` ``(D, d)``: what h writes into the residual stream.

So a head is ``2 d D`` entries (Llama layout; fused GPT-2 / NeoX weights are sliced the same way by
:class:`~forgetting.models.geometry.ProjectionRef`). Under grouped-query attention (K < H) the k and v
rows of key/value head g are shared by the ``H / K`` query heads of g's group and are *not* restored by
default: restoring them would restore part of the group's other heads too, so a set of k heads would
restore more than k heads, by an amount that depends on how many of them share a group. With the
default, every set of k heads restores ``k * 2 d D`` entries, the same for the severe heads and for the
random sets they are compared with. ``kv=True`` adds the k/v rows of g (restored with its group: a head
and its group mates then share them).

LoRA. A LoRA projection's effective weight is ``W0 + delta W`` with ``delta W = s B A``: for q,
``A`` ``(r, D)`` is shared by every head and only ``B``'s rows are head h's; for o, ``B`` ``(D, r)`` is
shared and only ``A``'s columns are. Restoring h's slice of one factor would therefore not give back
h's slice of the before-model's effective weight (the shared factor moved too). A head of a LoRA model
is restored in weight space instead: the frozen base weight's head slice is set to
``W0[h] + delta W_before[h] - delta W_after[h]``, so that the effective weight on h's entries is
``W0[h] + delta W_before[h]``, the before-model's (exactly, up to the rounding of that sum); the factors
are left alone and the entry count is that of the effective weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from forgetting.causal.restore import (
    LossFn,
    Patch,
    check_same_parameters,
    patch_recovery,
)
from forgetting.models.geometry import (
    AttentionGeometry,
    ProjectionRef,
    attention_geometry,
)
from forgetting.models.lora import effective_update

__all__ = ["Head", "head_label", "head_patch", "head_recovery"]

#: ``(layer, query head)``, 0-based.
Head = tuple[int, int]


def head_label(heads: Iterable[Head]) -> str:
    """``"L1H3 L2H0"``: a set of heads as text (sorted), for tables."""
    return " ".join(f"L{layer}H{head}" for layer, head in sorted(heads))


def _projections(geometry: AttentionGeometry, layer: int, head: int, kv: bool) -> list[tuple[ProjectionRef, int]]:
    """(projection, index of the head along it) for query head ``head`` of ``layer``."""
    if not 0 <= head < geometry.num_heads:
        raise IndexError(f"head {head} out of range ({geometry.num_heads} query heads per layer)")
    refs = geometry.projections(layer)
    out = [(refs["q"], head), (refs["o"], head)]
    if kv:
        group = head // geometry.group_size
        out += [(refs["k"], group), (refs["v"], group)]
    return out


def head_patch(before: nn.Module, after: nn.Module, heads: Iterable[Head], *, kv: bool = False) -> Patch:
    """The patch restoring attention heads ``heads`` (``(layer, query head)`` pairs) of ``after`` to
    ``before`` (module docstring: q rows and o columns; with ``kv`` also the head's key/value rows).

    One boolean mask per weight (heads of one layer share ``q_proj.weight``); for a peft LoRA model the
    masks are on the base weights and the values put the before-model's effective weight there.
    """
    pairs = check_same_parameters(before, after)
    geometry = attention_geometry(after)
    name_of = {id(p): n for n, p in after.named_parameters()}
    updates_before, updates_after = effective_update(before), effective_update(after)
    targets: dict[str, torch.Tensor] = {}
    masks: dict[str, torch.Tensor] = {}

    def mark(param: nn.Parameter, index: Any, key: str | None) -> None:
        name = name_of[id(param)]
        if name not in targets:
            target = pairs[name][0].detach().to(param.device).clone()
            if key in updates_after:  # a LoRA base weight: move the effective weight, not the factors
                target += updates_before[key].to(target) - updates_after[key].to(target)
            targets[name], masks[name] = target, torch.zeros(param.shape, dtype=torch.bool, device=param.device)
        masks[name][index] = True

    for layer, head in heads:
        for ref, index in _projections(geometry, int(layer), int(head), kv):
            mark(ref.weight(after), ref.head_index(index), ref.param_name)
            bias = ref.bias(after)
            if ref.heads_on_output and bias is not None:
                mark(bias, ref.head_slice(index), None)
    return {name: (masks[name], targets[name][masks[name]]) for name in targets}


def head_recovery(before: nn.Module, after: nn.Module, loss_fn: LossFn, heads: Iterable[Head], *,
                  kv: bool = False) -> float:
    """:func:`~forgetting.causal.restore.recovery` of the attention heads ``heads`` (:func:`head_patch`)."""
    heads = list(heads)
    return patch_recovery(before, after, loss_fn, lambda: head_patch(before, after, heads, kv=kv))
