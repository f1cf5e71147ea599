"""Attention-head disruption: how much each head changes between two snapshots, on the old task's data,
and which heads change *beyond noise*.

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

**Masking.** A key counts when it is a real token (attention mask 1) at or before the query; the
weights of each row are renormalised over those keys (a no-op up to rounding, because masked keys get
~0 weight). Padding therefore changes nothing (tested by padding an example further).

**Averaging** (``mean_rows``): a per-row value ``v_r`` is averaged first over the rows of each example,
then over examples (every example weighs the same whatever its length):
``mean_rows(v) = (1/n) sum_e (1/|R_e|) sum_{r in R_e} v_r``.

**Metrics** (:func:`head_disruption`, one row per layer, head, metric):

- ``js_divergence``: Jensen-Shannon divergence of the attention rows, in bits (0 = identical, 1 = disjoint
  supports): ``JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q)/2``,
  ``KL(p || m) = sum_k p_k log2(p_k / m_k)``; ``mean_rows`` over rows.
- ``entropy_change``: ``mean_rows(H(q)) - mean_rows(H(p))`` with ``H(p) = -sum_k p_k log2 p_k`` (bits;
  positive = the head attends more diffusely after). ``entropy_before``/``entropy_after`` are reported too.
- ``output_similarity``: ``mean_rows(cos(z_before_r, z_after_r))``, ``cos(a, b) = a.b / (|a| |b|)`` (1 when
  both are zero): the head writes the same vector for the same token. ``output_cka``: linear CKA
  (:mod:`forgetting.mechanisms.drift`, biased form) between the ``(N', d)`` output matrices over all kept
  rows (token-weighted; invariant to rotations of the head's output space, so it asks whether the same
  *information* is there rather than the same vector).
- ``weight_change``: ``sqrt(sum_P ||dW_P||_F^2 / sum_P ||W_P||_F^2)`` over the head's slices
  ``P in {q, k, v, o}`` (k, v through its key/value head), ``dW = W_after - W_before``; per projection
  ``weight_change_q = ||dW_q|| / ||W_q||`` etc.
- ``ablation_effect_change``: ``e_after - e_before`` with ``e = loss(head ablated) - loss(intact)``, the
  old task's loss (mean nats per target token) increase when the head is ablated in that snapshot.
  ``ablation_effect_before``/``_after`` are reported too.

**Ablation.** ``"mean"`` (default) replaces the head's output at every position by its mean over all
non-padding tokens of the old task's data in the same snapshot (keeps the next layer on distribution);
``"zero"`` sets it to zero, which equals zeroing the head's ``d`` columns of ``o_proj`` (tested).

**Severity, calibrated against a null** (:func:`severe_heads`). A fixed threshold can produce any fraction
of "severe" heads, so the cut is taken from a *null*: the same disruption measured between the "before"
snapshot and a snapshot that knows the old task just as well, made by :func:`null_snapshots`:

- ``continue``: the before snapshot trained further on the old task itself, for as many steps as the
  new task got (a small change: optimisation noise alone);
- ``reseed``: the old task re-trained from the same starting snapshot with another seed (batch order),
  for as many steps as the original (a large change, especially in upper layers).

Each metric ``m`` is turned into a disruption score (higher = more disrupted): ``js_divergence``,
``|entropy_change|``, ``1 - output_similarity``, ``1 - output_cka``, ``weight_change``,
``|ablation_effect_change|``; it is standardised by the null, ``z_m = (s_m - mean_null(s_m)) / sd_null(s_m)``
(per layer with ``by="layer"``, the default, over all heads with ``by="all"``), and the ``combined``
score is ``mean_m z_m`` over the functional metrics (JS, entropy, output similarity, ablation; the
weight change is a cause, not a change of what the head does, and is flagged on its own). A head is
**severely disrupted** on a score when that score exceeds the ``(1 - alpha)`` quantile of the same score
over all heads of *every* null kind given ("an effect counts only where it stands clear of both nulls").
If the real disruption were itself a draw from the null, about ``alpha`` of the heads would be flagged
(tested on synthetic data). The empirical quantile of ``N`` null values cannot resolve ``alpha`` below
``1/(N+1)``: with 32 heads and one null replicate, ``alpha = 0.05`` is at the limit; add null seeds.

**Fractions and forgetting.** :func:`severe_fractions` (overall and per layer), :func:`severe_fraction_ci`
(bootstrap over seeds), :func:`disruption_timeline` (disruption at every step snapshot of the new task,
with the old task's loss increase) and :func:`disruption_forgetting_correlation` (do heads, layers or the
whole model disrupt in step with the loss increase, especially early). Both quantities grow with the
step, so a positive correlation across steps alone is expected; ``control_step=True`` partials the step
out, and a correlation *across seeds or task pairs at a fixed early step* is the stronger test.

Works on any model :func:`forgetting.models.geometry.attention_geometry` knows (Llama, Llama 4 MoE
with and without RoPE layers, Qwen2, Mistral, Mixtral, GPT-2, GPT-NeoX) and on peft LoRA models.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from forgetting.errors import SpecError
from forgetting.models.geometry import KINDS, AttentionGeometry, attention_geometry, base_model
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples

__all__ = [
    "ABLATIONS",
    "COMBINED_METRICS",
    "DISRUPTION_METRICS",
    "NULL_KINDS",
    "POSITIONS",
    "HeadDisruptionResult",
    "HeadRecord",
    "ablate_heads",
    "ablation_losses",
    "analyze_head_disruption",
    "attention_entropy",
    "disruption_forgetting_correlation",
    "disruption_scores",
    "disruption_timeline",
    "head_activity",
    "head_disruption",
    "head_weights",
    "js_divergence",
    "null_snapshots",
    "severe_fraction_ci",
    "severe_fractions",
    "severe_heads",
    "weight_change",
]

POSITIONS = ("all", "target")
ABLATIONS = ("mean", "zero")
NULL_KINDS = ("continue", "reseed")
Positions = Literal["all", "target"]
Ablation = Literal["mean", "zero"]

#: metric -> how its value becomes a disruption score (higher = more disrupted)
DISRUPTION_METRICS: dict[str, str] = {
    "js_divergence": "value",
    "entropy_change": "abs",
    "output_similarity": "one_minus",
    "output_cka": "one_minus",
    "weight_change": "value",
    "ablation_effect_change": "abs",
}
COMBINED_METRICS: tuple[str, ...] = ("js_divergence", "entropy_change", "output_similarity", "ablation_effect_change")
_LOG2 = math.log(2.0)


# ---------------------------------------------------------------------------------------------------
# known-answer building blocks
# ---------------------------------------------------------------------------------------------------


def _masked_distribution(p: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the masked keys of ``p`` (..., T) and renormalise each row to sum 1 (float64)."""
    p = p.to(torch.float64)
    if mask is not None:
        p = p * mask.to(p.device, torch.float64)
    total = p.sum(-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def _xlog2x_over(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise ``a * log2(a / b)`` with ``0 log 0 = 0`` (b > 0 wherever a > 0)."""
    safe_a = torch.where(a > 0, a, torch.ones_like(a))
    safe_b = torch.where(a > 0, b, torch.ones_like(b))
    return torch.where(a > 0, a * (torch.log(safe_a) - torch.log(safe_b)) / _LOG2, torch.zeros_like(a))


def js_divergence(p: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Jensen-Shannon divergence in bits between distributions over the last axis.

    ``p``, ``q``: (..., T) nonnegative (attention rows); ``mask``: (..., T) or broadcastable, True/1 on
    the keys that count; rows are renormalised over them. Returns (...) float64 in [0, 1]:
    ``JS = 1/2 sum_k p_k log2(p_k/m_k) + 1/2 sum_k q_k log2(q_k/m_k)``, ``m = (p + q)/2``.
    """
    p, q = _masked_distribution(p, mask), _masked_distribution(q, mask)
    m = 0.5 * (p + q)
    js = 0.5 * _xlog2x_over(p, m).sum(-1) + 0.5 * _xlog2x_over(q, m).sum(-1)
    return js.clamp(0.0, 1.0)


def attention_entropy(p: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy in bits over the last axis: ``H(p) = -sum_k p_k log2 p_k`` (masked, renormalised).

    ``p``: (..., T); returns (...) float64; ``log2 n`` for a uniform row over ``n`` keys, 0 for one-hot.
    """
    p = _masked_distribution(p, mask)
    return -_xlog2x_over(p, torch.ones_like(p)).sum(-1)


def _cosine_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last axis, float64; 1 where both vectors are zero, 0 where one is."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    denom = na * nb
    cos = (a * b).sum(-1) / torch.where(denom > 0, denom, torch.ones_like(denom))
    both_zero = (na == 0) & (nb == 0)
    return torch.where(both_zero, torch.ones_like(cos), cos)


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
        from forgetting.models.lora import effective_update

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
    from tqdm.auto import tqdm

    from forgetting import paths

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


# ---------------------------------------------------------------------------------------------------
# disruption between two records
# ---------------------------------------------------------------------------------------------------


def _check_aligned(before: HeadRecord, after: HeadRecord) -> None:
    gb, ga = before.geometry, after.geometry
    if (gb.num_layers, gb.num_heads, gb.num_kv_heads, gb.head_dim) != (ga.num_layers, ga.num_heads, ga.num_kv_heads, ga.head_dim):
        raise ValueError("record_before, record_after: the models have different attention geometries")
    if before.input_ids.shape != after.input_ids.shape or not torch.equal(before.input_ids, after.input_ids):
        raise ValueError("record_before, record_after: recorded on different data; record both on the same examples")
    if before.positions != after.positions:
        raise ValueError(f"record_before, record_after: positions differ ({before.positions!r} vs {after.positions!r})")


def weight_change(weights_before: Mapping[str, torch.Tensor], weights_after: Mapping[str, torch.Tensor],
                  geometry: AttentionGeometry) -> dict[str, torch.Tensor]:
    """Relative Frobenius change per query head: ``{"weight_change": (L, H), "weight_change_q": (L, H), ...}``.

    ``weight_change = sqrt(sum_P ||dW_P||^2 / sum_P ||W_P||^2)`` over P in q, k, v, o slices of the head
    (k and v slices of its key/value head ``h // (H // K)``); ``weight_change_P = ||dW_P|| / ||W_P||``;
    ``dW = after - before``, norms of the before weights. Inputs as :func:`head_weights` returns them.
    """
    kv = torch.tensor([geometry.kv_head(h) for h in range(geometry.num_heads)])
    num, den, out = 0.0, 0.0, {}
    for kind in KINDS:
        wb, wa = weights_before[kind].to(torch.float64), weights_after[kind].to(torch.float64)
        d2 = (wa - wb).square().sum((-1, -2))  # (L, heads)
        w2 = wb.square().sum((-1, -2))
        if kind in ("k", "v"):
            d2, w2 = d2[:, kv], w2[:, kv]
        out[f"weight_change_{kind}"] = torch.sqrt(d2 / w2.clamp_min(1e-300))
        num, den = num + d2, den + w2
    out["weight_change"] = torch.sqrt(num / den.clamp_min(1e-300))
    return out


def _mean_rows(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(L, H, N) -> (L, H): ``sum_r w_r v_r`` (see ``mean_rows`` in the module docstring)."""
    return (values.to(torch.float64) * weights).sum(-1)


def _output_cka(zb: torch.Tensor, za: torch.Tensor) -> torch.Tensor:
    """Biased linear CKA per head between (L, H, N', d) outputs: (L, H) float64, NaN where constant."""
    from forgetting.mechanisms.drift import hsic_terms

    L, H, N, d = zb.shape
    X, Y = zb.reshape(L * H, N, d).to(torch.float64), za.reshape(L * H, N, d).to(torch.float64)
    hxy, hxx, hyy = hsic_terms(X, Y, debiased=False)
    denom = torch.sqrt(hxx * hyy)
    cka = torch.where(denom > 0, hxy / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.full_like(denom, math.nan))
    return cka.reshape(L, H)


def head_disruption(record_before: HeadRecord, record_after: HeadRecord) -> pd.DataFrame:
    """Per-head disruption between two snapshots recorded on the same examples (module docstring).

    Returns a long DataFrame with columns ``layer``, ``head``, ``kv_head``, ``metric``, ``value``; metrics:
    ``js_divergence``, ``entropy_before``, ``entropy_after``, ``entropy_change``, ``output_similarity``,
    ``output_cka``, ``weight_change``, ``weight_change_{q,k,v,o}`` and, when both records have ablation
    losses, ``ablation_effect_before``, ``ablation_effect_after``, ``ablation_effect_change``.
    A model compared with itself gives 0 for every change and 1 for both similarities.
    """
    _check_aligned(record_before, record_after)
    geometry = record_before.geometry
    w = record_before.row_weights()
    keep = record_before.keep
    mask = record_before.key_mask[None, None]  # (1, 1, N, T)
    p, q = record_before.attention, record_after.attention
    metrics: dict[str, torch.Tensor] = {}
    metrics["js_divergence"] = _mean_rows(js_divergence(p, q, mask), w)
    metrics["entropy_before"] = _mean_rows(attention_entropy(p, mask), w)
    metrics["entropy_after"] = _mean_rows(attention_entropy(q, mask), w)
    metrics["entropy_change"] = metrics["entropy_after"] - metrics["entropy_before"]
    metrics["output_similarity"] = _mean_rows(_cosine_rows(record_before.outputs, record_after.outputs), w)
    metrics["output_cka"] = _output_cka(record_before.outputs[:, :, keep], record_after.outputs[:, :, keep])
    metrics.update(weight_change(record_before.weights, record_after.weights, geometry))
    eb, ea = record_before.ablation_effect, record_after.ablation_effect
    if eb is not None and ea is not None:
        if record_before.ablation != record_after.ablation:
            raise ValueError(
                f"record_before, record_after: ablation modes differ ({record_before.ablation!r} vs {record_after.ablation!r})"
            )
        metrics["ablation_effect_before"] = eb
        metrics["ablation_effect_after"] = ea
        metrics["ablation_effect_change"] = ea - eb
    return _long_table(metrics, geometry)


def _long_table(metrics: Mapping[str, torch.Tensor], geometry: AttentionGeometry) -> pd.DataFrame:
    """``{metric: (L, H)}`` -> long DataFrame (layer, head, kv_head, metric, value), layer-major."""
    L, H = geometry.num_layers, geometry.num_heads
    layer = np.repeat(np.arange(L), H)
    head = np.tile(np.arange(H), L)
    kv = head // geometry.group_size
    frames = [
        pd.DataFrame({"layer": layer, "head": head, "kv_head": kv, "metric": name,
                      "value": values.detach().to(torch.float64).reshape(-1).numpy()})
        for name, values in metrics.items()
    ]
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# severity against a null
# ---------------------------------------------------------------------------------------------------


def disruption_scores(disruption: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Oriented disruption scores (higher = more disrupted), long format (``layer``, ``head``, ``metric``,
    ``score`` plus any grouping columns such as ``null``, ``replicate``, ``seed``, ``step``).

    ``js_divergence``, ``weight_change``: the value; ``entropy_change``, ``ablation_effect_change``: its
    absolute value (a head that spreads or sharpens, loses or gains importance, changed either way);
    ``output_similarity``, ``output_cka``: ``1 - value``.
    """
    metrics = list(DISRUPTION_METRICS) if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in DISRUPTION_METRICS]
    if unknown:
        raise SpecError("metrics", f"{', '.join(unknown)} not allowed; allowed: {', '.join(DISRUPTION_METRICS)}")
    df = disruption[disruption["metric"].isin(metrics)].copy()
    how = df["metric"].map(DISRUPTION_METRICS)
    v = df["value"].to_numpy(dtype=np.float64)
    df["score"] = np.where(how == "abs", np.abs(v), np.where(how == "one_minus", 1.0 - v, v))
    return df.drop(columns=["value"])


def _standardize(real: pd.DataFrame, null: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add ``z = (score - mean_null) / sd_null`` per group ``keys`` (sd over null values, ddof=1).

    Where the null does not vary (sd = 0) z is 0 at the null's value and +/-inf away from it.
    """
    stats = null.groupby(keys)["score"].agg(["mean", "std"]).reset_index()

    def z(df: pd.DataFrame) -> pd.DataFrame:
        df = df.merge(stats, on=keys, how="left")
        if df["mean"].isna().any():
            missing = df.loc[df["mean"].isna(), keys].drop_duplicates().head(3).to_dict("records")
            raise ValueError(f"null_disruption: no null values for {missing}")
        diff = df["score"] - df["mean"]
        sd = df["std"].fillna(0.0).to_numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            zz = np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), np.sign(diff) * np.where(diff != 0, np.inf, 0.0))
        return df.assign(z=np.where(diff.to_numpy() == 0, 0.0, zz)).drop(columns=["mean", "std"])

    return z(real), z(null)


def _combined(df: pd.DataFrame, combine: Sequence[str], id_cols: list[str]) -> pd.DataFrame:
    """Mean z over the ``combine`` metrics per head (metric ``"combined"``); NaN if a metric is missing."""
    sub = df[df["metric"].isin(combine)]
    agg = sub.groupby(id_cols, dropna=False).agg(z=("z", "mean"), n=("z", "size")).reset_index()
    agg.loc[agg["n"] < len(combine), "z"] = np.nan
    return agg.drop(columns="n").assign(metric="combined", score=agg["z"])


def severe_heads(
    disruption: pd.DataFrame,
    null_disruption: pd.DataFrame | Mapping[str, pd.DataFrame],
    alpha: float = 0.05,
    *,
    by: Literal["layer", "all"] = "layer",
    metrics: Sequence[str] | None = None,
    combine: Sequence[str] = COMBINED_METRICS,
) -> pd.DataFrame:
    """Flag severely disrupted heads: beyond the ``(1 - alpha)`` quantile of every null (module docstring).

    Args:
        disruption: :func:`head_disruption` of the pair of interest (may hold several, told apart by extra
            columns such as ``seed`` or ``step``: those are kept and each head row is judged on its own).
        null_disruption: the same measured between the before snapshot and null snapshots: one DataFrame
            (an optional ``null`` column names the null kind; other extra columns such as ``replicate``
            just add null values) or a mapping ``{null kind: DataFrame}``.
        alpha: the tolerated false-positive rate per head, in (0, 1).
        by: ``"layer"`` standardises each metric by the null heads of the same layer (layers differ in how
            much they move under noise), ``"all"`` by all null heads; quantiles are always over all heads.
        metrics: metrics to judge singly (default: those of :data:`DISRUPTION_METRICS` present in both).
        combine: metrics averaged (as z) into the ``combined`` score; ``()`` for none.

    Returns:
        long DataFrame, one row per head and judged metric (``combined`` included): ``layer``, ``head``,
        ``metric``, ``score``, ``z``, ``threshold`` (the largest null quantile of z over null kinds),
        ``p_value`` (the largest over null kinds of ``(1 + #{null z >= z}) / (1 + n_null)``), ``n_null``
        (smallest null count), ``severe`` (``z > threshold``), plus the extra columns of ``disruption``.
    """
    if not 0 < alpha < 1:
        raise SpecError("alpha", f"must be between 0 and 1, got {alpha}")
    _check_choice("by", by, ("layer", "all"))
    if isinstance(null_disruption, Mapping):
        null = pd.concat([df.assign(null=name) for name, df in null_disruption.items()], ignore_index=True)
    else:
        null = null_disruption if "null" in null_disruption else null_disruption.assign(null="null")
    if null.empty:
        raise ValueError("null_disruption: empty; make null snapshots with null_snapshots()")
    present = set(disruption["metric"]) & set(null["metric"])
    metrics = [m for m in DISRUPTION_METRICS if m in present] if metrics is None else list(metrics)
    missing = [m for m in list(metrics) + list(combine) if m not in present]
    if missing:
        raise SpecError("metrics", f"{', '.join(missing)} missing from disruption or null_disruption; present: {', '.join(sorted(present))}")
    used = list(dict.fromkeys([*metrics, *combine]))
    real_s, null_s = disruption_scores(disruption, used), disruption_scores(null, used)
    keys = ["metric", "layer"] if by == "layer" else ["metric"]
    real_z, null_z = _standardize(real_s, null_s, keys)
    real_extra = [c for c in disruption.columns if c not in ("layer", "head", "kv_head", "metric", "value")]
    null_extra = [c for c in null.columns if c not in ("layer", "head", "kv_head", "metric", "value")]
    if combine:
        real_z = pd.concat([real_z, _combined(real_z, combine, ["layer", "head", "kv_head", *real_extra])], ignore_index=True)
        null_z = pd.concat([null_z, _combined(null_z, combine, ["layer", "head", "kv_head", *null_extra])], ignore_index=True)
    judged = [*metrics, *(["combined"] if combine else [])]
    real_z = real_z[real_z["metric"].isin(judged)].copy()
    rows = []
    for metric, group in real_z.groupby("metric", sort=False):
        z = group["z"].to_numpy()
        thresholds, pvals, counts = [], [], []
        for _, nz in null_z[null_z["metric"] == metric].groupby("null"):
            values = nz["z"].to_numpy()
            values = values[~np.isnan(values)]
            thresholds.append(float(np.quantile(values, 1 - alpha, method="higher")))
            pvals.append((1 + (values[None, :] >= z[:, None]).sum(1)) / (1 + values.size))
            counts.append(values.size)
        threshold = max(thresholds)
        rows.append(group.assign(
            threshold=threshold, p_value=np.max(np.stack(pvals), axis=0), n_null=min(counts),
            severe=np.nan_to_num(z, nan=-np.inf) > threshold,
        ))
    out = pd.concat(rows, ignore_index=True)
    order = ["layer", "head", "kv_head", "metric", "score", "z", "threshold", "p_value", "n_null", "severe"]
    return out[order + [c for c in out.columns if c not in order]]


def severe_fractions(severe: pd.DataFrame, metric: str = "combined") -> pd.DataFrame:
    """Fraction of severely disrupted heads overall (``layer = "all"``) and per layer.

    ``severe``: :func:`severe_heads` output (extra columns such as ``seed`` or ``step`` are kept as groups).
    Returns columns (groups...), ``layer``, ``fraction``, ``n_severe``, ``n_heads``.
    """
    df = severe[severe["metric"] == metric]
    if df.empty:
        raise SpecError("metric", f"{metric!r} not in severe; present: {', '.join(sorted(set(severe['metric'])))}")
    groups = [c for c in df.columns if c not in ("layer", "head", "kv_head", "metric", "score", "z", "threshold",
                                                "p_value", "n_null", "severe")]
    parts = []
    for level, keys in (("all", groups), ("layer", [*groups, "layer"])):
        if keys:
            g = df.groupby(keys, dropna=False)["severe"].agg(n_severe="sum", n_heads="size").reset_index()
        else:
            g = pd.DataFrame({"n_severe": [int(df["severe"].sum())], "n_heads": [len(df)]})
        if level == "all":
            g["layer"] = "all"
        parts.append(g)
    out = pd.concat(parts, ignore_index=True)
    out["layer"] = out["layer"].astype(str)
    out["fraction"] = out["n_severe"] / out["n_heads"]
    return out[[*groups, "layer", "fraction", "n_severe", "n_heads"]]


def severe_fraction_ci(fractions: pd.DataFrame, *, by: str = "seed", ci: float = 0.95, seed: int = 0,
                       n_boot: int = 2000) -> pd.DataFrame:
    """Mean severe fraction over seeds with a percentile bootstrap interval, overall and per layer.

    ``fractions``: :func:`severe_fractions` of several runs, told apart by column ``by`` (one fraction per
    run and layer). Uses :func:`forgetting.stats.bootstrap_mean_ci` (resampling runs). Returns ``layer``,
    ``mean``, ``ci_low``, ``ci_high``, ``n_runs``. One run gives a zero-width interval: no spread to estimate.
    """
    from forgetting.stats import bootstrap_mean_ci

    if by not in fractions:
        raise SpecError("by", f"column {by!r} not in fractions; columns: {', '.join(fractions.columns)}")
    rows = []
    for layer, group in fractions.groupby("layer", sort=False):
        mean, low, high = bootstrap_mean_ci(group["fraction"].to_numpy(), n_boot=n_boot, ci=ci, seed=seed)
        rows.append({"layer": layer, "mean": mean, "ci_low": low, "ci_high": high, "n_runs": group[by].nunique()})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------
# null snapshots from a run
# ---------------------------------------------------------------------------------------------------


def _snapshot_meta(run_dir: Path, label: str) -> dict:
    from forgetting.train.snapshots import snapshot_meta

    folder = run_dir / "snapshots" / label
    if not (folder / "meta.json").is_file():
        have = sorted(p.name for p in (run_dir / "snapshots").iterdir()) if (run_dir / "snapshots").is_dir() else []
        raise SpecError("snapshot", f"{label!r} not in {run_dir}/snapshots; have: {', '.join(have) or 'none'}")
    return snapshot_meta(folder)


def _stage_start(run_dir: Path, stage: int) -> str:
    """The end-of-stage snapshot label of ``stage - 1`` (where stage ``stage`` started)."""
    for folder in sorted((run_dir / "snapshots").iterdir()):
        meta_path = folder / "meta.json"
        if meta_path.is_file():
            from forgetting.results import read_json

            meta = read_json(meta_path)
            if meta.get("stage") == stage - 1 and meta.get("end_of_stage"):
                return meta["label"]
    raise SpecError("before", f"no end-of-stage snapshot of stage {stage - 1} in {run_dir}")


def null_snapshots(
    run_dir: str | Path,
    *,
    before: str,
    after: str,
    kinds: Sequence[str] = NULL_KINDS,
    seeds: Sequence[int] | None = None,
    every: int = 0,
    progress: bool = True,
) -> dict[str, Path]:
    """Make (or reuse) null snapshots for the pair ``before`` -> ``after`` of a finished run.

    The old task is the task ``before`` finished training (its ``meta.json`` ``task``). For each null seed:

    - ``continue``: restore ``before``, train the old task for ``step(after) - step(before)`` steps (as many
      as the new task got) with a fresh optimizer and the spec's schedule;
    - ``reseed``: restore the snapshot where ``before``'s stage started, train the old task again for as many
      steps as that stage took, with batch order and RNG from the null seed (must differ from the run's).

    ``every > 0`` also saves ``continue`` snapshots every ``every`` steps (nulls matched to step snapshots
    of the new task, for :func:`disruption_timeline`). Snapshots go to ``run_dir/nulls/<label>`` (label
    ``"{kind}-seed{s}"`` and ``"{kind}-seed{s}-step{k:06d}"``) and are reused when present. Returns
    ``{label: folder}`` in creation order. ``seeds`` default: ``(run seed + 1,)``.
    """
    from forgetting.experiments import parse_spec
    from forgetting.profiles import load_run
    from forgetting.train.loop import OptimConfig, train_task
    from forgetting.train.sequence import load_for_spec, make_accelerator, prepare_tasks, stage_seed
    from forgetting.train.snapshots import restore_snapshot, save_snapshot

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    spec = parse_spec(run.manifest["spec"])
    for kind in kinds:
        _check_choice("kinds", kind, NULL_KINDS)
    seeds = tuple(seeds) if seeds is not None else (spec.seed + 1,)
    if "reseed" in kinds and spec.seed in seeds:
        raise SpecError("seeds", f"a reseed null needs seeds other than the run's seed {spec.seed}")
    mb, ma = _snapshot_meta(run_dir, before), _snapshot_meta(run_dir, after)
    old_task = mb["task"]
    if old_task == "base":
        raise SpecError("before", "the base snapshot trained no task; pick a snapshot that ended training a task")
    if ma["step"] <= mb["step"]:
        raise SpecError("after", f"{after!r} (step {ma['step']}) is not after {before!r} (step {mb['step']})")
    out: dict[str, Path] = {}
    todo = []
    for s in seeds:
        for kind in kinds:
            label = f"{kind}-seed{s}"
            folder = run_dir / "nulls" / f"{before}__{label}"
            if kind == "continue":
                start, steps = before, ma["step"] - mb["step"]
            else:
                start = _stage_start(run_dir, mb["stage"])
                steps = mb["step"] - _snapshot_meta(run_dir, start)["step"]
            extra = {k: run_dir / "nulls" / f"{before}__{label}-step{k:06d}" for k in range(every, steps, every)} if (
                every and kind == "continue") else {}  # step -> folder
            for k, f in extra.items():
                out[f"{label}-step{k:06d}"] = f
            out[label] = folder
            if not all((f / "meta.json").is_file() for f in [folder, *extra.values()]):
                todo.append((kind, s, label, folder, start, steps, extra))
    if not todo:
        return out
    model, tokenizer = load_for_spec(spec)
    task = next(t for t in prepare_tasks(spec, tokenizer) if t.name == old_task)
    accelerator = make_accelerator()
    model = model.to(accelerator.device)
    from tqdm.auto import tqdm

    from forgetting import paths

    for kind, s, label, folder, start, steps, extra in tqdm(todo, desc="null snapshots", disable=not progress or paths.quiet()):
        restore_snapshot(model, run_dir / "snapshots" / start)
        # reseed: the batch order a run with seed s would use for that stage; continue: a stream of its own
        seed = stage_seed(s, mb["stage"]) if kind == "reseed" else stage_seed(s, 100 + mb["stage"])
        torch.manual_seed(seed)
        meta = {"label": label, "kind": kind, "null_seed": s, "task": old_task, "start": start, "before": before,
                "after": after, "steps": steps}

        def on_step(step: int, loss: float, lr: float, _extra=extra, _meta=meta) -> None:
            if step in _extra:
                save_snapshot(model, _extra[step], {**_meta, "label": f"{_meta['label']}-step{step:06d}", "step": step})

        train_task(model, task.train, steps=steps, batch_size=spec.batch_size, grad_accum=spec.grad_accum,
                   optim=OptimConfig.from_spec(spec.optimizer), seed=seed, accelerator=accelerator,
                   on_step=on_step if extra else None, task_name=f"null {label}")
        save_snapshot(model, folder, {**meta, "step": steps})
    return out


# ---------------------------------------------------------------------------------------------------
# one call for a run: disruption, null, severity, fractions
# ---------------------------------------------------------------------------------------------------


@dataclass
class HeadDisruptionResult:
    """Everything :func:`analyze_head_disruption` measured for one pair of snapshots of one run."""

    disruption: pd.DataFrame  # head_disruption(before, after)
    null_disruption: pd.DataFrame  # the same against each null snapshot (columns null, replicate)
    severe: pd.DataFrame  # severe_heads(disruption, null_disruption)
    fractions: pd.DataFrame  # severe_fractions(severe)
    loss_before: float  # old task's loss at before
    loss_after: float  # old task's loss at after
    null_loss: dict[str, float]  # old task's loss at each null snapshot
    old_task: str


def _record_snapshot(model: Any, folder: Path, examples: EncodedExamples, **kwargs) -> HeadRecord:
    from forgetting.train.snapshots import restore_snapshot

    restore_snapshot(model, folder)
    return head_activity(model, examples, **kwargs)


def analyze_head_disruption(
    run_dir: str | Path,
    *,
    before: str,
    after: str,
    nulls: Sequence[str] = NULL_KINDS,
    null_seeds: Sequence[int] | None = None,
    alpha: float = 0.05,
    by: Literal["layer", "all"] = "layer",
    positions: Positions = "all",
    ablation: Ablation | None = "mean",
    batch_size: int = 64,
    progress: bool = True,
) -> HeadDisruptionResult:
    """Head disruption of ``before -> after`` in a run, on the old task's eval data, judged against nulls.

    Makes the null snapshots if needed (:func:`null_snapshots`), records every snapshot with
    :func:`head_activity`, and returns the disruption, the null disruption, :func:`severe_heads` and
    :func:`severe_fractions`. Snapshot labels as in ``run_dir/snapshots`` (e.g. ``"stage01-recall_city"``).
    """
    from forgetting.experiments import parse_spec
    from forgetting.profiles import load_run
    from forgetting.train.sequence import load_for_spec, prepare_tasks

    run_dir = Path(run_dir)
    spec = parse_spec(load_run(run_dir).manifest["spec"])
    old_task = _snapshot_meta(run_dir, before)["task"]
    null_folders = null_snapshots(run_dir, before=before, after=after, kinds=nulls, seeds=null_seeds, progress=progress)
    model, tokenizer = load_for_spec(spec)
    examples = next(t for t in prepare_tasks(spec, tokenizer) if t.name == old_task).eval
    kw = dict(batch_size=batch_size, positions=positions, ablation=ablation)
    rec_before = _record_snapshot(model, run_dir / "snapshots" / before, examples, **kw)
    rec_after = _record_snapshot(model, run_dir / "snapshots" / after, examples, **kw)
    disruption = head_disruption(rec_before, rec_after)
    null_tables, null_loss = [], {}
    for label, folder in null_folders.items():
        kind, seed_part = label.split("-seed")
        rec = _record_snapshot(model, folder, examples, **kw)
        null_loss[label] = rec.loss
        null_tables.append(head_disruption(rec_before, rec).assign(null=kind, replicate=int(seed_part)))
    null_disruption = pd.concat(null_tables, ignore_index=True)
    severe = severe_heads(disruption, null_disruption, alpha, by=by, combine=_available_combine(disruption))
    return HeadDisruptionResult(
        disruption=disruption, null_disruption=null_disruption, severe=severe, fractions=severe_fractions(severe),
        loss_before=rec_before.loss, loss_after=rec_after.loss, null_loss=null_loss, old_task=old_task,
    )


def _available_combine(disruption: pd.DataFrame) -> tuple[str, ...]:
    present = set(disruption["metric"])
    return tuple(m for m in COMBINED_METRICS if m in present)


# ---------------------------------------------------------------------------------------------------
# disruption along the new task's training, and its link to forgetting
# ---------------------------------------------------------------------------------------------------


def disruption_timeline(
    run_dir: str | Path,
    *,
    before: str,
    labels: Sequence[str] | None = None,
    positions: Positions = "all",
    ablation: Ablation | None = "mean",
    batch_size: int = 64,
) -> pd.DataFrame:
    """Disruption of every snapshot after ``before`` against ``before``, with the old task's loss increase.

    ``labels``: snapshots to compare (default: every snapshot of the stage after ``before``'s, step
    snapshots included; a spec with ``snapshots.every > 0`` makes them). Returns the long table of
    :func:`head_disruption` with columns ``snapshot``, ``step`` (steps since ``before``), ``loss_before``,
    ``loss``, ``loss_increase`` (= old task's loss at the snapshot - at ``before``, nats per target token).
    """
    from forgetting.experiments import parse_spec
    from forgetting.profiles import load_run
    from forgetting.results import read_json
    from forgetting.train.sequence import load_for_spec, prepare_tasks

    run_dir = Path(run_dir)
    spec = parse_spec(load_run(run_dir).manifest["spec"])
    mb = _snapshot_meta(run_dir, before)
    if labels is None:
        metas = [read_json(f / "meta.json") for f in sorted((run_dir / "snapshots").iterdir()) if (f / "meta.json").is_file()]
        labels = [m["label"] for m in sorted(metas, key=lambda m: m["step"]) if m["stage"] == mb["stage"] + 1]
    if not labels:
        raise SpecError("labels", f"no snapshots after {before!r} in {run_dir}")
    model, tokenizer = load_for_spec(spec)
    examples = next(t for t in prepare_tasks(spec, tokenizer) if t.name == mb["task"]).eval
    kw = dict(batch_size=batch_size, positions=positions, ablation=ablation)
    rec_before = _record_snapshot(model, run_dir / "snapshots" / before, examples, **kw)
    tables = []
    for label in labels:
        meta = _snapshot_meta(run_dir, label)
        rec = _record_snapshot(model, run_dir / "snapshots" / label, examples, **kw)
        tables.append(head_disruption(rec_before, rec).assign(
            snapshot=label, step=meta["step"] - mb["step"], loss_before=rec_before.loss, loss=rec.loss,
            loss_increase=rec.loss - rec_before.loss,
        ))
    return pd.concat(tables, ignore_index=True)


def disruption_forgetting_correlation(
    timeline: pd.DataFrame,
    *,
    metric: str = "js_divergence",
    level: Literal["model", "layer", "head"] = "layer",
    method: str = "spearman",
    max_step: int | None = None,
    control_step: bool = False,
    group: str | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    n_perm: int = 5000,
) -> pd.DataFrame:
    """Does disruption go with the old task's loss increase? Correlation across snapshots (steps x runs).

    Observations are the snapshots of ``timeline`` (:func:`disruption_timeline`, possibly several runs
    concatenated with a ``group`` column such as ``seed``); ``x`` = the mean disruption score
    (:func:`disruption_scores` orientation) of ``metric`` over the heads of the model, of each layer,
    or of each head (``level``); ``y`` = ``loss_increase``. ``max_step`` keeps snapshots with
    ``step <= max_step`` (early forgetting). ``control_step=True`` reports the partial correlation given
    the step (both grow with training, which alone makes them correlate). ``group`` switches to the
    cluster bootstrap over runs. Uses :func:`forgetting.stats.correlation` / ``partial_correlation``.

    Returns one row per model / layer / head: ``layer``, ``head`` (where applicable), ``r``, ``ci_low``,
    ``ci_high``, ``p_value``, ``n``, ``method``, ``partial_on``.
    """
    from forgetting.stats import correlation, partial_correlation

    _check_choice("level", level, ("model", "layer", "head"))
    df = timeline if max_step is None else timeline[timeline["step"] <= max_step]
    scores = disruption_scores(df, [metric])
    if scores.empty:
        raise SpecError("metric", f"{metric!r} not in timeline")
    run_keys = ["snapshot", "step", "loss_increase"] + ([group] if group else [])
    unit = {"model": [], "layer": ["layer"], "head": ["layer", "head"]}[level]
    per_obs = scores.groupby(unit + run_keys, dropna=False)["score"].mean().reset_index()
    rows = []
    for key, obs in (per_obs.groupby(unit) if unit else [((), per_obs)]):
        key = key if isinstance(key, tuple) else (key,)
        kw = dict(method=method, seed=seed, n_boot=n_boot, n_perm=n_perm, groups=obs[group].to_numpy() if group else None)
        try:
            if control_step:
                res = partial_correlation(obs["score"], obs["loss_increase"], obs["step"].to_numpy(float), **kw)
            else:
                res = correlation(obs["score"], obs["loss_increase"], **kw)
            rec = {k: getattr(res, k) for k in ("r", "ci_low", "ci_high", "p_value", "n", "method", "partial_on")}
        except ValueError as exc:  # constant x or y, too few snapshots: reported, not hidden
            rec = {"r": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n": len(obs),
                   "method": method, "partial_on": int(control_step), "note": str(exc)}
        rows.append({**dict(zip(unit, key)), **rec})
    return pd.DataFrame(rows)
