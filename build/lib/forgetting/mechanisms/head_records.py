"""The record of what every attention head does on one data set in one snapshot, and head ablation.

Notation: ``L`` layers, ``H`` query heads per layer, ``K`` key/value heads (query head ``h`` reads kv head
``h // (H // K)``), ``d`` head dim, ``D`` hidden size; ``n`` examples padded to ``T`` positions; a
*row* is one (example, query position) pair that is read; ``N`` rows in all.

**What is recorded** (:func:`head_activity`, one forward pass per batch, plus ablation passes):

- the attention pattern ``A[l, h, r, :]`` (``T`` key weights) of every head at every read row, from
  ``output_attentions=True`` (eager attention);
- the head's output ``z[l, h, r, :]`` (``d`` values): the slice ``h*d:(h+1)*d`` of the input of the output
  projection (``o_proj``; a forward pre-hook sees the concatenated per-head outputs before mixing);
- the old task's loss with each head ablated (see *ablation* below);
- the head's weight slices (q rows of head ``h``, k/v rows of its kv head, o columns of head ``h``; with
  LoRA the effective weight ``W + (alpha/r) B A``).

**Where it is read** (``positions``). ``"all"`` (default): every non-padding position of the prompt, the
target and the closing eos ("prompt+target positions"); ``"target"``: only the positions whose next-token
prediction is scored (position ``t`` with ``labels[t+1] != -100``): where the answer is produced.
Rows whose query sees a single key (position 0, the bos token) are dropped from every metric: their
pattern is fixed to one-hot by the causal mask and their output depends on the first token only, so
they would only dilute averages toward "no change".

**Masking.** A key counts when it is a real token (attention mask 1) at or before the query
(:attr:`HeadRecord.key_mask`); the metrics renormalise each row over those keys.

**Averaging** (:meth:`HeadRecord.row_weights`): a per-row value ``v_r`` is averaged first over the rows of
each example, then over examples (every example weighs the same whatever its length):
``mean_rows(v) = (1/n) sum_e (1/|R_e|) sum_{r in R_e} v_r``.

**Ablation.** ``"mean"`` (default) replaces the head's output at every position by its mean over all
non-padding tokens of the old task's data in the same snapshot (keeps the next layer on distribution);
``"zero"`` sets it to zero, which equals zeroing the head's ``d`` columns of ``o_proj`` (tested). The
ablation effect of a head is ``e = loss(head ablated) - loss(intact)``, the old task's loss in mean nats
per target token (:attr:`HeadRecord.ablation_effect`).

The metrics between two records are in ``forgetting.mechanisms.head_metrics``; everything is also
importable from :mod:`forgetting.mechanisms.heads`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.models.geometry import KINDS, AttentionGeometry, attention_geometry, base_model
from forgetting.models.lora import effective_update
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples

__all__ = [
    "ABLATIONS",
    "POSITIONS",
    "HeadRecord",
    "ablate_heads",
    "ablation_losses",
    "head_activity",
    "head_weights",
]

POSITIONS = ("all", "target")
ABLATIONS = ("mean", "zero")
Positions = Literal["all", "target"]
Ablation = Literal["mean", "zero"]


# ---------------------------------------------------------------------------------------------------
# the record of one snapshot
# ---------------------------------------------------------------------------------------------------


@dataclass
class HeadRecord:
    """What every head does on one data set in one snapshot (see the module docstring).

    Memory: ``attention`` holds ``L * H * N * T`` float32 values (N about n * T): fine for the embedded
    models; for a hub model use fewer examples or ``positions="target"``.
    """

    attention: torch.Tensor  # (L, H, N, T) float32 attention weights of each read row over key positions
    outputs: torch.Tensor  # (L, H, N, d) float32 per-head outputs (o_proj input slice) at each read row
    example: torch.Tensor  # (N,) long: the example of each row
    position: torch.Tensor  # (N,) long: the query position of each row
    key_mask: torch.Tensor  # (N, T) bool: keys that are real tokens at or before the query
    keep: torch.Tensor  # (N,) bool: rows used by the metrics (more than one visible key)
    weights: dict[str, torch.Tensor]  # kind -> (L, heads, d, D) float32 per-head weight slices (k/v: kv heads)
    loss: float  # old task's loss (mean nats per target token) of the intact model
    ablation_loss: torch.Tensor | None  # (L, H) float64: the loss with each head ablated, or None
    head_means: torch.Tensor  # (L, H, d) float64 mean head output over all non-padding tokens
    geometry: AttentionGeometry
    positions: str
    ablation: str | None
    n_examples: int
    input_ids: torch.Tensor = field(repr=False)  # (n, T) the data it was recorded on (alignment checks)

    @property
    def ablation_effect(self) -> torch.Tensor | None:
        """``loss(head ablated) - loss(intact)`` per head, an (L, H) float64 tensor, or None without ablation."""
        return None if self.ablation_loss is None else self.ablation_loss - self.loss

    def row_weights(self) -> torch.Tensor:
        """(N,) float64 weights of ``mean_rows``: ``1 / (n_e |R_e|)`` on kept rows of example e, 0 elsewhere,
        where ``n_e`` is the number of examples with at least one kept row."""
        keep = self.keep.to(torch.float64)
        per_example = torch.zeros(self.n_examples, dtype=torch.float64).index_add_(0, self.example, keep)
        n_used = int((per_example > 0).sum())
        if n_used == 0:
            raise ValueError("positions: no row sees more than one key; nothing to measure")
        return keep / (per_example[self.example].clamp_min(1.0) * n_used)


def _read_rows(examples: EncodedExamples, positions: str) -> torch.Tensor:
    """(n, T) bool: the query positions read (see ``positions`` in the module docstring)."""
    valid = examples.attention_mask.bool()
    if positions == "all":
        return valid
    scored = torch.zeros_like(valid)
    scored[:, :-1] = examples.labels[:, 1:] != IGNORE_INDEX
    return scored & valid


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise SpecError(name, f"{value!r} not allowed; allowed: {', '.join(map(str, allowed))}")


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _o_module(model: Any, geometry: AttentionGeometry, layer: int) -> torch.nn.Module:
    """The output projection of ``layer`` as called in the forward (the peft wrapper when LoRA-adapted),
    so that a pre-hook changes what both the base weight and the adapter read."""
    return base_model(model).get_submodule(geometry.projection(layer, "o").module_name)


@torch.no_grad()
def head_weights(model: Any, geometry: AttentionGeometry | None = None) -> dict[str, torch.Tensor]:
    """Per-head slices of the (effective) attention weights: ``{kind: (L, heads, d, D)}`` float32 on CPU.

    ``heads`` is ``H`` for q and o, ``K`` for k and v. With LoRA the slice is taken from
    ``W + delta W`` (:func:`forgetting.models.lora.effective_update`), so a LoRA run's weight change is the
    change of the weight the model actually uses.
    """
    geometry = geometry or attention_geometry(model)
    updates: dict[str, torch.Tensor] = {}
    if callable(getattr(model, "get_base_model", None)):
        updates = effective_update(model)
    out: dict[str, list[torch.Tensor]] = {kind: [] for kind in KINDS}
    for layer in range(geometry.num_layers):
        for kind in KINDS:
            ref = geometry.projection(layer, kind)
            w = ref.weight(model).detach().float()
            if ref.param_name in updates:
                w = w + updates[ref.param_name].float()
            out[kind].append(ref.per_head(w).cpu())
    return {kind: torch.stack(slices) for kind, slices in out.items()}


@contextlib.contextmanager
def _capture_head_outputs(model: Any, geometry: AttentionGeometry) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, ``captured[layer]`` is the last (B, T, H, d) per-head output of each layer."""
    captured: dict[int, torch.Tensor] = {}
    H, d = geometry.num_heads, geometry.head_dim

    def make(layer: int):
        def hook(module, args):
            x = args[0]
            captured[layer] = x.detach().reshape(*x.shape[:-1], H, d)
        return hook

    handles = [_o_module(model, geometry, l).register_forward_pre_hook(make(l)) for l in range(geometry.num_layers)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _ablation_hook(keep: torch.Tensor, replacement: torch.Tensor, H: int, d: int):
    """A pre-hook that replaces ablated heads: input (G*B, T, H*d) viewed as (G, B, T, H, d);
    ``keep`` (G, H) float (1 keep, 0 ablate), ``replacement`` (H, d) (zeros or head means)."""

    def hook(module, args):
        x = args[0]
        G = keep.shape[0]
        shaped = x.reshape(G, -1, x.shape[-2], H, d)
        k = keep.to(x.device, x.dtype)[:, None, None, :, None]
        new = shaped * k + (1 - k) * replacement.to(x.device, x.dtype)
        return (new.reshape(x.shape), *args[1:])

    return hook


@contextlib.contextmanager
def ablate_heads(
    model: Any,
    heads: Iterable[tuple[int, int]],
    *,
    mode: Ablation = "zero",
    means: torch.Tensor | None = None,
    geometry: AttentionGeometry | None = None,
) -> Iterator[None]:
    """Ablate the given ``(layer, head)`` pairs inside the block by a pre-hook on each layer's ``o_proj``.

    ``mode="zero"``: the head's output slice ``z[..., h*d:(h+1)*d]`` becomes 0 (the same as zeroing
    ``o_proj.weight[:, h*d:(h+1)*d]``); ``mode="mean"``: it becomes ``means[layer, h]`` ((L, H, d), e.g.
    :attr:`HeadRecord.head_means`) at every position.
    """
    _check_choice("mode", mode, ABLATIONS)
    geometry = geometry or attention_geometry(model)
    H, d = geometry.num_heads, geometry.head_dim
    if mode == "mean" and means is None:
        raise ValueError("means: mode='mean' needs the (L, H, d) mean head outputs (HeadRecord.head_means)")
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        geometry.global_head(layer, head)  # range check
        by_layer.setdefault(layer, []).append(head)
    handles = []
    try:
        for layer, hs in by_layer.items():
            keep = torch.ones(1, H)
            keep[0, hs] = 0.0
            repl = torch.zeros(H, d) if mode == "zero" else means[layer].float()
            handles.append(_o_module(model, geometry, layer).register_forward_pre_hook(_ablation_hook(keep, repl, H, d)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _target_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence sum of next-token cross-entropy over target tokens: (B, T, V), (B, T) -> (B,) float64."""
    ce = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), labels[:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    )
    return ce.sum(-1).to(torch.float64)


@torch.no_grad()
def ablation_losses(
    model: Any,
    examples: EncodedExamples,
    *,
    mode: Ablation = "mean",
    means: torch.Tensor | None = None,
    batch_size: int = 64,
    geometry: AttentionGeometry | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """The old task's loss (mean nats per target token) with each head ablated alone: (L, H) float64.

    One forward pass runs ``G`` heads x ``b`` examples (``G * b <= batch_size``): the batch is repeated
    ``G`` times and copy ``g`` ablates head ``g`` through the ``o_proj`` pre-hook
    (per-token routing of MoE layers keeps the copies independent).
    """
    _check_choice("mode", mode, ABLATIONS)
    geometry = geometry or attention_geometry(model)
    L, H, d = geometry.num_layers, geometry.num_heads, geometry.head_dim
    if mode == "mean" and means is None:
        raise ValueError("means: mode='mean' needs the (L, H, d) mean head outputs")
    device = _device(model)
    n = len(examples)
    b = min(n, batch_size)
    G = max(1, min(H, batch_size // b))
    n_tokens = int((examples.labels[:, 1:] != IGNORE_INDEX).sum())
    sums = torch.zeros(L, H, dtype=torch.float64)
    bar = tqdm(total=L * math.ceil(H / G) * math.ceil(n / b), desc="head ablation", disable=not progress or paths.quiet())
    was_training = model.training
    model.eval()
    try:
        for layer in range(L):
            module = _o_module(model, geometry, layer)
            repl = torch.zeros(H, d) if mode == "zero" else means[layer].float()
            for first in range(0, H, G):
                group = list(range(first, min(H, first + G)))
                keep = torch.ones(len(group), H)
                keep[torch.arange(len(group)), group] = 0.0
                handle = module.register_forward_pre_hook(_ablation_hook(keep, repl, H, d))
                try:
                    for start in range(0, n, b):
                        batch = examples.select(slice(start, start + b))
                        reps = len(group)
                        ids = batch.input_ids.repeat(reps, 1).to(device)
                        mask = batch.attention_mask.repeat(reps, 1).to(device)
                        logits = model(input_ids=ids, attention_mask=mask).logits
                        per_seq = _target_loss_sums(logits, batch.labels.repeat(reps, 1).to(device)).cpu()
                        sums[layer, group] += per_seq.view(reps, -1).sum(-1)
                        bar.update(1)
                finally:
                    handle.remove()
    finally:
        model.train(was_training)
        bar.close()
    return sums / n_tokens


@torch.no_grad()
def head_activity(
    model: Any,
    examples: EncodedExamples,
    *,
    batch_size: int = 64,
    positions: Positions = "all",
    ablation: Ablation | None = "mean",
    progress: bool = False,
) -> HeadRecord:
    """Record every head of ``model`` on ``examples`` (the old task's data): see the module docstring.

    Args:
        model: a transformers causal LM with eager attention (``forgetting.load_model`` loads so), plain
            or peft-wrapped.
        examples: (n, T) encoded examples (``prepare_task(task, tok).eval``), right- or left-padded.
        batch_size: sequences per forward pass (also bounds the ablation passes).
        positions: ``"all"`` non-padding positions (prompt + target + eos) or ``"target"`` (positions that
            predict a target token).
        ablation: ``"mean"``, ``"zero"``, or ``None`` to skip the ``L * H`` ablation passes.

    Returns:
        a :class:`HeadRecord` with attention (L, H, N, T), outputs (L, H, N, d), weights, losses.
    """
    _check_choice("positions", positions, POSITIONS)
    if ablation is not None:
        _check_choice("ablation", ablation, ABLATIONS)
    if batch_size < 1:
        raise SpecError("batch_size", f"must be >= 1, got {batch_size}")
    if len(examples) == 0:
        raise ValueError("examples: need at least one example")
    geometry = attention_geometry(model)
    L, H, d = geometry.num_layers, geometry.num_heads, geometry.head_dim
    device = _device(model)
    n, T = examples.input_ids.shape
    read = _read_rows(examples, positions)  # (n, T)
    valid = examples.attention_mask.bool()
    example_idx, position_idx = read.nonzero(as_tuple=True)
    N = int(example_idx.numel())
    causal = torch.arange(T)[None, :] <= position_idx[:, None]
    key_mask = valid[example_idx] & causal  # (N, T)
    attention = torch.zeros(L, H, N, T, dtype=torch.float32)
    outputs = torch.zeros(L, H, N, d, dtype=torch.float32)
    out_sums = torch.zeros(L, H, d, dtype=torch.float64)
    loss_sum, n_tokens, row = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with _capture_head_outputs(model, geometry) as captured:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                ids, mask = examples.input_ids[start:stop], examples.attention_mask[start:stop]
                labels = examples.labels[start:stop]
                result = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_attentions=True)
                attn = result.attentions
                if not attn or attn[0] is None:
                    raise RuntimeError(
                        "the model returned no attention weights; load it with attn_implementation='eager' "
                        "(forgetting.load_model does)"
                    )
                loss_sum += float(_target_loss_sums(result.logits, labels.to(device)).sum())
                n_tokens += int((labels[:, 1:] != IGNORE_INDEX).sum())
                b_ex, b_pos = read[start:stop].nonzero(as_tuple=True)
                rows = slice(row, row + b_ex.numel())
                real = mask.bool()
                for layer in range(L):
                    a = attn[layer].detach().float().cpu()  # (B, H, T, T)
                    attention[layer, :, rows] = a[b_ex, :, b_pos].permute(1, 0, 2)
                    z = captured[layer].float().cpu()  # (B, T, H, d)
                    outputs[layer, :, rows] = z[b_ex, b_pos].permute(1, 0, 2)
                    out_sums[layer] += z[real].to(torch.float64).sum(0)  # padding rows never enter (even NaN)
                row = rows.stop
    finally:
        model.train(was_training)
    means = out_sums / float(valid.sum())
    ablation_loss = None
    if ablation is not None:
        ablation_loss = ablation_losses(
            model, examples, mode=ablation, means=means, batch_size=batch_size, geometry=geometry, progress=progress
        )
    return HeadRecord(
        attention=attention, outputs=outputs, example=example_idx, position=position_idx, key_mask=key_mask,
        keep=key_mask.sum(-1) > 1, weights=head_weights(model, geometry), loss=loss_sum / max(n_tokens, 1),
        ablation_loss=ablation_loss, head_means=means, geometry=geometry, positions=positions,
        ablation=ablation, n_examples=n, input_ids=examples.input_ids.clone(),
    )

