"""Gradient interference: per-task gradients, their cosine alignment per matrix, per attention head, per
layer and for the whole model, conflict rates, noise floors, and the first-order forgetting estimate.

Notation. theta are the (selected) parameters, T_X the target tokens of task X's examples (the target and
the closing eos, see :mod:`forgetting.tasks.encoding`), and the task loss is the mean over target tokens::

    L_X(theta) = (1 / |T_X|) * sum_{t in T_X} -log p_theta(y_t | y_<t)
    g_X        = dL_X / dtheta                                    (:func:`task_gradients`)

computed with ONE backward pass per batch of examples (the batch's target-token loss sum divided by ``|T_X|`` is
back-propagated and the batch gradients are added), in eval mode (no dropout).

Units. A gradient is a dict ``{parameter name: tensor}``. :func:`gradient_alignment` compares two such
dicts ``a`` and ``b`` unit by unit, where a unit u is a set of coordinates (a slice of the tensors)::

    dot_u = <a_u, b_u>,  norm_a = ||a_u||_2,  norm_b = ||b_u||_2,  cosine_u = dot_u / (norm_a * norm_b)

(cosine is NaN where a norm is 0). The units, in the ``unit`` column:

- ``"matrix"``: one parameter tensor (a weight, a bias, a norm gain, a LoRA factor, a fused expert tensor).
- ``"head"``: one attention head's slice of a q/k/v/o weight, taken with
  :meth:`~forgetting.models.geometry.ProjectionRef.per_head` from the SAME gradient tensors (no extra
  backward pass): q rows of query head h, k/v rows of key/value head g (``head_type`` ``"kv"``; with
  grouped-query attention query head h reads kv head ``h // (H // K)``), o columns of query head h
  (``head_type`` ``"query"``). The head slices of a matrix partition it, so
  ``sum_h norm_a(h)^2 = norm_a(matrix)^2`` and ``sum_h dot(h) = dot(matrix)``. For a LoRA factor the
  head-specific factor is sliced (``lora_B`` rows for q/k/v, ``lora_A`` columns for o); the other factor
  is shared by all heads and has matrix rows only.
- ``"expert"``: one expert of a fused mixture-of-experts tensor (``(E, ., .)``, sliced along dim 0;
  ``head`` holds the expert index, ``head_type`` is ``"expert"``). The fused tensor's matrix row has kind
  ``"experts"``.
- ``"layer"``: all tensors of one decoder layer in one ``group`` (``"attention"``, ``"mlp"``, ``"norm"``)
  and over all of them (group ``"all"``): dot and squared norms summed over the member matrices.
- ``"model"``: the same over the whole model, per group (adding ``"embedding"``, ``"other"``) and ``"all"``.

Columns (:data:`ALIGNMENT_COLUMNS`): ``unit, name, layer, group, kind, part, head, head_type, numel, dot,
norm_a, norm_b, cosine``. ``layer`` and ``head`` are nullable integers (``<NA>`` where they do not apply).
``kind`` is one of q, k, v, o, qkv (a fused q/k/v weight), gate, up, down, router, experts, embed,
pos_embed, lm_head, norm, other, or ``"all"`` on aggregate rows; ``part`` is weight, bias, lora_A,
lora_B or the name of a fused expert tensor.

Conflict. :func:`conflict_rate` is the fraction of units with ``cosine < 0`` (among units with a defined
cosine); over a sequence of points along training of a new task (:func:`snapshot_alignment`),
:func:`step_conflict_rate` gives per unit the fraction of steps with negative alignment.

Noise floor (SCIENCE.md: a converged task has a tiny, noisy gradient). :func:`split_half_null` computes
the cosine between the gradients of two disjoint random halves of the OLD task's own data, per unit.
Writing a half's gradient as g + e with independent noise e, that cosine estimates the reliability of a
half-sample gradient, ``c = ||g||^2 / (||g||^2 + 2 s^2 / n)``; the Spearman-Brown formula gives the
reliability of the full-sample gradient, ``R = 2c / (1 + c)``, and an old-vs-new cosine is attenuated
towards 0 by ``sqrt(R_old * R_new)``. :func:`compare_with_null` puts both side by side.
:func:`update_alignment` compares the old task's weight change delta_A = theta_A - theta_0 with the new
task's descent direction -g_B: a negative cosine means B's first step undoes part of what A learned.

First-order forgetting estimate. For a step theta -> theta + delta, ``L_old(theta + delta) - L_old(theta)
~ g_old . delta`` (:func:`first_order_change`); :func:`observed_vs_predicted` sets it against the observed
loss change between two snapshots.

LoRA. A LoRA layer computes ``W x + s B A x`` with ``delta W = s B A``; since ``W_eff = W + delta W``,
the gradient with respect to the effective update delta W is the base weight's gradient ``G = dL/dW``,
and by the chain rule ``dL/dB = s G A^T``, ``dL/dA = s B^T G``. :func:`lora_task_gradients` returns both the
adapter gradients and G (keyed by base weight name, like :func:`forgetting.models.lora.effective_update`)
from one backward pass per batch, so alignment can be read in adapter space and in weight space (e.g. the
effective update of task A against -G of task B, per head, with :func:`update_alignment`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from forgetting.models.geometry import AttentionGeometry, ProjectionRef, attention_geometry, base_model
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples

__all__ = [
    "ALIGNMENT_COLUMNS",
    "UNITS",
    "compare_with_null",
    "conflict_rate",
    "first_order_change",
    "gradient_alignment",
    "lora_task_gradients",
    "observed_vs_predicted",
    "snapshot_alignment",
    "snapshot_delta",
    "split_half_null",
    "stage_alignment",
    "stage_snapshots",
    "step_conflict_rate",
    "task_alignment",
    "task_gradients",
    "task_loss",
    "update_alignment",
]

Gradients = dict[str, torch.Tensor]
UNITS = ("matrix", "head", "expert", "layer", "model")
#: The columns of an alignment table (:func:`gradient_alignment`), in order.
ALIGNMENT_COLUMNS = (
    "unit", "name", "layer", "group", "kind", "part", "head", "head_type", "numel", "dot", "norm_a", "norm_b", "cosine",
)
#: The columns that identify a unit (a matrix, head, expert, layer or the model) across steps.
UNIT_KEYS = ("unit", "name", "layer", "group", "kind", "part", "head", "head_type")
GROUPS = ("attention", "mlp", "norm", "embedding", "other")

_PEFT_PREFIX = "base_model.model."
_LORA_RE = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.[^.]+\.weight$")
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks)\.(\d+)\.")
_MLP_KINDS = {
    "gate_proj": "gate", "up_proj": "up", "down_proj": "down", "w1": "gate", "w3": "up", "w2": "down",
    "c_fc": "up", "c_proj": "down", "dense_h_to_4h": "up", "dense_4h_to_h": "down", "fc1": "up", "fc2": "down",
    "router": "router", "gate": "router", "experts": "experts",
}
_EMBED_KINDS = {"embed_tokens": "embed", "wte": "embed", "embed_in": "embed", "wpe": "pos_embed",
                "lm_head": "lm_head", "embed_out": "lm_head"}
_ATTN_KINDS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o"}


# ---------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------


def _resolve_params(model: nn.Module, params: Any) -> dict[str, nn.Parameter]:
    """``params`` -> ordered ``{name in model.named_parameters(): parameter}``.

    ``None``: every parameter with ``requires_grad``. A string or a list of strings: names of parameters,
    or regexes / presets of :func:`forgetting.mechanisms.landscape.select_parameters` (frozen ones
    included). A mapping name -> parameter is taken as is (its names must be the model's).
    """
    named = dict(model.named_parameters())
    if params is None:
        out = {n: p for n, p in named.items() if p.requires_grad}
    elif isinstance(params, Mapping):
        unknown = [n for n in params if n not in named]
        if unknown:
            raise ValueError(f"params: {unknown[:3]} are not parameters of the model")
        out = {n: named[n] for n in params}
    else:
        wanted = [params] if isinstance(params, str) else list(params)
        exact = [n for n in wanted if n in named]
        patterns = [n for n in wanted if n not in named]
        out = {n: named[n] for n in exact}
        if patterns:
            from forgetting.mechanisms.landscape import select_parameters

            out.update(select_parameters(model, patterns, trainable_only=False))
        out = {n: named[n] for n in named if n in out}  # model order
    if not out:
        raise ValueError("params: no parameter selected (the model has no trainable parameters?)")
    return out


def _n_target_tokens(examples: EncodedExamples) -> int:
    return int((examples.labels[:, 1:] != IGNORE_INDEX).sum())


def _head(examples: EncodedExamples, max_examples: int | None) -> EncodedExamples:
    """The first ``max_examples`` examples (all when ``None``)."""
    if max_examples is None:
        return examples
    if max_examples < 1:
        raise ValueError(f"max_examples: must be >= 1, got {max_examples}")
    return examples.select(slice(0, max_examples))


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: must be an integer >= 1, got {batch_size!r}")


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _grad_enabled_on(model: nn.Module, params: Iterable[nn.Parameter]) -> Iterator[None]:
    """Eval mode and ``requires_grad=True`` on ``params`` (frozen ones included) for the duration."""
    params = list(params)
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)


def _accumulation_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


def _gradients_and_loss(
    model: nn.Module, examples: EncodedExamples, *, batch_size: int, params: Mapping[str, nn.Parameter]
) -> tuple[Gradients, float]:
    """g = d/dtheta [(1/|T|) sum_t CE_t] and the loss itself; one forward and one backward per batch."""
    from forgetting.train.loop import target_loss_sum

    _check_batch_size(batch_size)
    n_tokens = _n_target_tokens(examples)
    if n_tokens == 0:
        raise ValueError("examples: no target tokens (every label is IGNORE_INDEX)")
    names, tensors = list(params), list(params.values())
    device = _device_of(model)
    grads: list[torch.Tensor | None] = [None] * len(tensors)
    loss_sum = 0.0
    with _grad_enabled_on(model, tensors):
        for start in range(0, len(examples), batch_size):
            batch = examples.select(slice(start, start + batch_size))
            batch_sum = target_loss_sum(model, batch, device)
            parts = torch.autograd.grad(batch_sum / n_tokens, tensors, allow_unused=True)
            loss_sum += float(batch_sum.detach())
            for i, (p, g) in enumerate(zip(tensors, parts)):
                if g is None:
                    continue
                g = g.detach().to(_accumulation_dtype(p))
                grads[i] = g if grads[i] is None else grads[i].add_(g)
    out = {
        n: (g if g is not None else torch.zeros(p.shape, dtype=_accumulation_dtype(p), device=p.device))
        for n, p, g in zip(names, tensors, grads)
    }
    return out, loss_sum / n_tokens


def task_gradients(
    model: nn.Module,
    examples: EncodedExamples,
    *,
    batch_size: int,
    max_examples: int | None = None,
    params: Any = None,
) -> Gradients:
    """The gradient of a task's mean target-token loss, ``g = dL/dtheta`` (see the module docstring).

    Args:
        model: a causal LM (plain or peft); it is put in eval mode during the call and restored after.
        examples: encoded examples (``PreparedTask.train`` / ``.eval``); ``labels`` mark the target tokens.
        batch_size: examples per forward/backward pass; the result does not depend on it (up to float
            summation order): each batch back-propagates ``sum_batch CE / |T|`` with ``|T|`` the target
            tokens of ALL examples, and the batch gradients are added. One backward pass per batch.
        max_examples: use only the first ``max_examples`` examples.
        params: which parameters: ``None`` = those with ``requires_grad``; names, regexes or presets
            (``"attention"``, ``"mlp"``, ``"lora"``, ...; see
            :func:`forgetting.mechanisms.landscape.select_parameters`), frozen ones included (e.g. the
            base weights under LoRA: they are unfrozen for the call only); or a dict name -> parameter.

    Returns:
        ``{name: gradient}`` in model order, names as in ``model.named_parameters()`` (the names
        snapshots use), each shaped like its parameter, detached, float32 (float64 for float64
        parameters), on the parameter's device. A parameter the loss does not reach gets zeros.
    """
    examples = _head(examples, max_examples)
    grads, _ = _gradients_and_loss(model, examples, batch_size=batch_size, params=_resolve_params(model, params))
    return grads


@torch.no_grad()
def task_loss(model: nn.Module, examples: EncodedExamples, *, batch_size: int, max_examples: int | None = None) -> float:
    """``L = (1/|T|) sum_{t in T} -log p(y_t | y_<t)`` over the target tokens (eval mode, no gradient)."""
    from forgetting.train.loop import target_loss_sum

    _check_batch_size(batch_size)
    examples = _head(examples, max_examples)
    n_tokens = _n_target_tokens(examples)
    if n_tokens == 0:
        raise ValueError("examples: no target tokens (every label is IGNORE_INDEX)")
    was_training = model.training
    model.eval()
    try:
        device = _device_of(model)
        total = sum(
            float(target_loss_sum(model, examples.select(slice(s, s + batch_size)), device))
            for s in range(0, len(examples), batch_size)
        )
    finally:
        model.train(was_training)
    return total / n_tokens


def _lora_base_weights(model: nn.Module) -> dict[str, str]:
    """``{name of a LoRA-adapted base weight in model.named_parameters(): base weight name}``.

    The base weight name is the one :func:`forgetting.models.lora.effective_update` uses
    (``"model.layers.0.self_attn.q_proj.weight"``).
    """
    from forgetting.models.lora import lora_layers

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model: has no LoRA layers (apply_lora first, or use task_gradients)")
    return {
        full_name: _strip_peft(full_name) for full_name, _ in model.named_parameters()
        if ".base_layer." in full_name and _strip_peft(full_name) in layers
    }


def lora_task_gradients(
    model: nn.Module,
    examples: EncodedExamples,
    *,
    batch_size: int,
    max_examples: int | None = None,
) -> tuple[Gradients, Gradients]:
    """Adapter gradients and effective-update gradients of a LoRA model, from one backward pass per batch.

    Returns:
        ``(adapter, effective)``: ``adapter`` = ``{lora parameter name: dL/dA or dL/dB}`` (names as in
        ``model.named_parameters()``, the trainable tensors a snapshot holds); ``effective`` =
        ``{base weight name: G}`` with ``G = dL/dW = dL/d(delta W)``, shaped like the base weight and
        keyed like :func:`forgetting.models.lora.effective_update`. Chain rule (module docstring):
        ``dL/dB = s G A^T`` and ``dL/dA = s B^T G`` (checked in the tests).
    """
    adapter, effective, _ = _lora_gradients_and_loss(model, _head(examples, max_examples), batch_size=batch_size)
    return adapter, effective


def _lora_gradients_and_loss(model: nn.Module, examples: EncodedExamples, *, batch_size: int) -> tuple[Gradients, Gradients, float]:
    from forgetting.models.lora import lora_parameters

    adapter_names = list(lora_parameters(model))
    base = _lora_base_weights(model)
    grads, loss = _gradients_and_loss(
        model, examples, batch_size=batch_size, params=_resolve_params(model, adapter_names + list(base))
    )
    return {n: grads[n] for n in adapter_names}, {base[n]: grads[n] for n in base}, loss


# ---------------------------------------------------------------------------------------------------
# units: what each tensor is
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """Where one named tensor sits in the model (see the module docstring for the values)."""

    layer: int | None
    group: str
    kind: str
    part: str
    refs: tuple[ProjectionRef, ...] = ()  # how to slice it by head (empty: no head rows)
    experts: bool = False  # dim 0 indexes experts


def _strip_peft(name: str) -> str:
    """``base_model.model.X.base_layer.weight`` -> ``X.weight`` (names relative to the base model)."""
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX):]
    return name.replace(".base_layer.", ".")


def _split_name(name: str) -> tuple[str, str]:
    """(module, part): ``part`` is weight/bias/lora_A/lora_B or a fused tensor's own name."""
    name = _strip_peft(name)
    m = _LORA_RE.match(name)
    if m:
        return m["module"], m["part"]
    module, _, leaf = name.rpartition(".")
    return module, leaf


class _Classifier:
    """Maps tensor names to :class:`_Unit` using an :class:`AttentionGeometry` (or name rules without one)."""

    def __init__(self, geometry: AttentionGeometry | None):
        self.geometry = geometry
        self.projections: dict[str, list[ProjectionRef]] = {}
        if geometry is not None:
            for layer in range(geometry.num_layers):
                for ref in geometry.projections(layer).values():
                    self.projections.setdefault(ref.module_name, []).append(ref)
            self.layer_re = re.compile(rf"^{re.escape(geometry.layer_prefix)}\.(\d+)\.")
        else:
            self.layer_re = _LAYER_RE

    def __call__(self, name: str, tensor: torch.Tensor) -> _Unit:
        module, part = _split_name(name)
        m = self.layer_re.search(module + ".")
        if m is None:
            return self._outside_layers(module, part)
        layer = int(m.group(1))
        if module in self.projections:
            return self._projection(layer, module, part, tensor)
        group = self._group(layer, module)
        leaf = module.rpartition(".")[2]
        if group == "attention":
            return _Unit(layer, group, _ATTN_KINDS.get(leaf, "other"), part)
        if group == "mlp":
            kind = _MLP_KINDS.get(leaf, "other")
            return _Unit(layer, group, kind, part, experts=kind == "experts" and tensor.dim() == 3)
        return _Unit(layer, group, "norm" if group == "norm" else "other", part)

    def _group(self, layer: int, module: str) -> str:
        g = self.geometry
        if g is not None:
            if module.startswith(g.attention_module(layer) + "."):
                return "attention"
            if module.startswith(f"{g.layer_name(layer)}.{g.mlp_name}."):
                return "mlp"
        else:
            if re.search(r"\.(self_attn|attn|attention)\.", module + "."):
                return "attention"
            if re.search(r"\.(mlp|feed_forward|block_sparse_moe)\.", module + "."):
                return "mlp"
        return "norm" if re.search(r"(norm|(^|\.)ln_\w*$)", module) else "other"

    def _projection(self, layer: int, module: str, part: str, tensor: torch.Tensor) -> _Unit:
        refs = self.projections[module]
        kind = refs[0].kind if len(refs) == 1 else "qkv"
        usable: list[ProjectionRef] = []
        for ref in refs:
            if part == "weight":
                usable.append(ref)
            elif part == "lora_B" and ref.heads_on_output:  # (out, r): rows are output features
                usable.append(dataclasses.replace(ref, axis=0))
            elif part == "lora_A" and not ref.heads_on_output:  # (r, in): columns are input features
                usable.append(dataclasses.replace(ref, axis=1))
        usable = [r for r in usable if tensor.dim() == 2 and r.indices().max() < tensor.shape[r.axis]]
        return _Unit(layer, "attention", kind, part, tuple(usable))

    @staticmethod
    def _outside_layers(module: str, part: str) -> _Unit:
        leaf = module.rpartition(".")[2]
        if leaf in _EMBED_KINDS:
            return _Unit(None, "embedding", _EMBED_KINDS[leaf], part)
        if re.search(r"(norm|^ln_|^ln$)", leaf):
            return _Unit(None, "norm", "norm", part)
        return _Unit(None, "other", "other", part)


def _geometry_for(geometry: AttentionGeometry | None, model: Any) -> AttentionGeometry | None:
    if geometry is not None:
        return geometry
    if model is None:
        return None
    return attention_geometry(model)


# ---------------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------------


def _common_names(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[str]:
    names = [n for n in a if n in b]
    if not names:
        raise ValueError(
            f"grad_a, grad_b: no tensor name in common (e.g. {next(iter(a), None)!r} vs {next(iter(b), None)!r})"
        )
    for n in names:
        if tuple(a[n].shape) != tuple(b[n].shape):
            raise ValueError(f"grad_a[{n!r}] has shape {tuple(a[n].shape)} but grad_b[{n!r}] {tuple(b[n].shape)}")
    return names


def _stats(x: torch.Tensor, y: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``(3, ...)``: <x, y>, ||x||^2, ||y||^2 reduced over ``dims`` (float64)."""
    return torch.stack([(x * y).sum(dims), (x * x).sum(dims), (y * y).sum(dims)])


def _unit_rows(
    names: Sequence[str], a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], classify: _Classifier,
    heads: bool,
) -> tuple[list[dict], list[torch.Tensor]]:
    """Row descriptions (without numbers) and, aligned with them, ``(3, n)`` stat blocks."""
    rows: list[dict] = []
    blocks: list[torch.Tensor] = []
    for name in names:
        x, y = a[name], b[name]
        unit = classify(name, x)
        x = x.detach().to(torch.float64)
        y = y.detach().to(device=x.device, dtype=torch.float64)
        base = {"name": name, "layer": unit.layer, "group": unit.group, "kind": unit.kind, "part": unit.part}
        rows.append({"unit": "matrix", **base, "head": None, "head_type": None, "numel": x.numel()})
        fx, fy = x.reshape(-1), y.reshape(-1)
        blocks.append(torch.stack([fx @ fy, fx @ fx, fy @ fy]).unsqueeze(1))
        if heads:
            for ref in unit.refs:
                hx, hy = ref.per_head(x), ref.per_head(y)  # (heads, head_dim, other)
                head_type = "kv" if ref.kind in ("k", "v") else "query"
                rows += [{"unit": "head", **base, "kind": ref.kind, "head": h, "head_type": head_type,
                          "numel": hx[h].numel()} for h in range(ref.num_heads)]
                blocks.append(_stats(hx, hy, (1, 2)))
            if unit.experts:
                rows += [{"unit": "expert", **base, "head": e, "head_type": "expert", "numel": x[e].numel()}
                         for e in range(x.shape[0])]
                blocks.append(_stats(x, y, (1, 2)))
    return rows, blocks


def _finish(row: dict, dot: float, sq_a: float, sq_b: float) -> dict:
    """Fill ``dot``, ``norm_a``, ``norm_b``, ``cosine`` (NaN when a norm is 0; clipped to [-1, 1])."""
    norm_a, norm_b = math.sqrt(max(sq_a, 0.0)), math.sqrt(max(sq_b, 0.0))
    denom = norm_a * norm_b
    cosine = min(1.0, max(-1.0, dot / denom)) if denom > 0 else math.nan
    row.update(dot=dot, norm_a=norm_a, norm_b=norm_b, cosine=cosine)
    return row


def _aggregates(matrices: Sequence[tuple[dict, float, float, float]]) -> list[dict]:
    """Layer rows (per group, then "all") in layer order and model rows (per group, then "all"), summing
    ``numel``, ``dot`` and the squared norms of the member matrices."""
    sums: dict[tuple[str, int | None, str], list[float]] = {}
    for row, dot, sq_a, sq_b in matrices:
        keys = [("model", None, row["group"]), ("model", None, "all")]
        if row["layer"] is not None:
            keys += [("layer", row["layer"], row["group"]), ("layer", row["layer"], "all")]
        for key in keys:
            acc = sums.setdefault(key, [0, 0.0, 0.0, 0.0])
            acc[0] += row["numel"]
            acc[1] += dot
            acc[2] += sq_a
            acc[3] += sq_b
    rank = {g: i for i, g in enumerate((*GROUPS, "all"))}
    order = sorted(sums, key=lambda k: (k[0] == "model", -1 if k[1] is None else k[1], rank.get(k[2], len(rank))))
    out = []
    for unit, layer, group in order:
        numel, dot, sq_a, sq_b = sums[(unit, layer, group)]
        row = {"unit": unit, "name": None, "layer": layer, "group": group, "kind": "all", "part": None,
               "head": None, "head_type": None, "numel": int(numel)}
        out.append(_finish(row, dot, sq_a, sq_b))
    return out


def _frame(rows: list[dict]) -> pd.DataFrame:
    """The long table with stable dtypes: strings as objects (None where absent), layer/head nullable Int64."""
    columns = {}
    for c in ALIGNMENT_COLUMNS:
        values = [r[c] for r in rows]
        if c in ("layer", "head"):
            columns[c] = pd.array(values, dtype="Int64")
        elif c in _STRING_KEYS or c == "unit":
            columns[c] = pd.Series(values, dtype=object)
        elif c == "numel":
            columns[c] = pd.Series(values, dtype="int64")
        else:
            columns[c] = pd.Series(values, dtype="float64")
    return pd.DataFrame(columns)


_STRING_KEYS = ("name", "group", "kind", "part", "head_type")


def _normalize_keys(df: pd.DataFrame) -> pd.DataFrame:
    """Unit-key dtypes: strings as objects with None, ``layer``/``head`` as nullable Int64 (stable for merges)."""
    df = df.copy()
    for column in _STRING_KEYS:
        if column in df.columns:
            values = df[column].astype(object)
            df[column] = values.where(values.notna(), None)
    for column in ("layer", "head"):
        if column in df.columns:
            df[column] = df[column].astype("Int64")
    return df


def gradient_alignment(
    grad_a: Mapping[str, torch.Tensor],
    grad_b: Mapping[str, torch.Tensor],
    geometry: AttentionGeometry | None = None,
    *,
    model: Any = None,
    heads: bool = True,
) -> pd.DataFrame:
    """Cosine alignment of two gradients (or any two weight-shaped dicts) per matrix, head, expert, layer, model.

    ``dot = <a_u, b_u>``, ``norm_a = ||a_u||``, ``norm_b = ||b_u||``, ``cosine = dot / (norm_a norm_b)``
    for every unit u (module docstring), in float64. Only the arithmetic of slicing and reducing the given
    tensors is done here: no forward or backward pass.

    Args:
        grad_a, grad_b: ``{name: tensor}`` with equal shapes for the names they share (only shared names
            are compared). Names as in ``model.named_parameters()`` (peft names are understood) or base
            weight names (:func:`lora_task_gradients`' effective gradients).
        geometry: the model's :class:`~forgetting.models.geometry.AttentionGeometry`; ``model``: a model
            to read it from. With neither, names are classified by rule and there are no head rows.
        heads: include the ``"head"`` and ``"expert"`` rows.

    Returns:
        long DataFrame with :data:`ALIGNMENT_COLUMNS`: matrix rows in name order, then head/expert rows
        after their matrix, then the layer and model aggregates.
    """
    names = _common_names(grad_a, grad_b)
    classify = _Classifier(_geometry_for(geometry, model))
    rows, blocks = _unit_rows(names, grad_a, grad_b, classify, heads)
    dots, sq_a, sq_b = torch.cat([blk.reshape(3, -1) for blk in blocks], dim=1).cpu().tolist()  # one transfer
    rows = [_finish(row, d, a, b) for row, d, a, b in zip(rows, dots, sq_a, sq_b)]
    matrices = [(r, r["dot"], a, b) for r, a, b in zip(rows, sq_a, sq_b) if r["unit"] == "matrix"]
    return _frame(rows + _aggregates(matrices))


def update_alignment(
    delta: Mapping[str, torch.Tensor],
    grad: Mapping[str, torch.Tensor],
    geometry: AttentionGeometry | None = None,
    *,
    model: Any = None,
    heads: bool = True,
) -> pd.DataFrame:
    """Alignment of a weight change with a task's descent direction: ``cos(delta_u, -g_u)`` per unit.

    Typical use (SCIENCE.md): ``delta = theta_A - theta_0`` (what the old task A changed; for LoRA the
    effective update ``delta W``) against the new task B's first gradient ``g_B`` at theta_A (for LoRA the
    effective gradient G). Negative cosine: B's descent direction points back against A's change.
    Columns as :func:`gradient_alignment` with ``a = delta``, ``b = -g``; so ``dot = -g . delta`` is
    minus the first-order change of B's loss along delta.
    """
    return gradient_alignment(delta, {n: -t for n, t in grad.items()}, geometry, model=model, heads=heads)


def task_alignment(
    model: nn.Module,
    examples_a: EncodedExamples,
    examples_b: EncodedExamples,
    *,
    batch_size: int,
    max_examples: int | None = None,
    params: Any = None,
    heads: bool = True,
) -> pd.DataFrame:
    """Gradients of two tasks at the model's current weights and their alignment (all units, all heads).

    Exactly ``ceil(n_a / batch_size) + ceil(n_b / batch_size)`` forward and backward passes; the head
    rows are slices of the same gradients. Arguments as :func:`task_gradients` and
    :func:`gradient_alignment` (``a`` = task A, ``b`` = task B).
    """
    geometry = attention_geometry(model)
    g_a = task_gradients(model, examples_a, batch_size=batch_size, max_examples=max_examples, params=params)
    g_b = task_gradients(model, examples_b, batch_size=batch_size, max_examples=max_examples, params=params)
    return gradient_alignment(g_a, g_b, geometry, heads=heads)


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
# conflict rates
# ---------------------------------------------------------------------------------------------------


def conflict_rate(alignment: pd.DataFrame, *, unit: str = "head", by: Sequence[str] | None = None,
                  threshold: float = 0.0) -> pd.DataFrame:
    """Fraction of units with negative alignment: ``#{u : cosine_u < threshold} / #{u : cosine_u defined}``.

    Args:
        alignment: rows of :func:`gradient_alignment` (possibly several points, e.g. a ``step`` column).
        unit: which rows count (``"head"``, ``"matrix"``, ``"expert"``, ``"layer"``, ``"model"``).
        by: columns to group by (e.g. ``["layer"]``, ``["kind"]``, ``["step"]``); ``None``: one row.
        threshold: count ``cosine < threshold`` (0: any negative alignment).

    Returns:
        DataFrame with the ``by`` columns, ``n_units`` (with a defined cosine), ``n_conflict`` and
        ``conflict_rate`` (NaN when ``n_units`` is 0).
    """
    if unit not in UNITS:
        raise ValueError(f"unit: {unit!r} is not one of {', '.join(UNITS)}")
    rows = alignment[(alignment["unit"] == unit) & alignment["cosine"].notna()]
    rows = rows.assign(_conflict=(rows["cosine"] < threshold).astype(int))
    by = list(by or [])
    missing = [c for c in by if c not in alignment.columns]
    if missing:
        raise ValueError(f"by: {missing} are not columns of the alignment table ({list(alignment.columns)})")
    if by:
        out = rows.groupby(by, sort=True, dropna=False)["_conflict"].agg(n_units="count", n_conflict="sum").reset_index()
    else:
        out = pd.DataFrame({"n_units": [len(rows)], "n_conflict": [int(rows["_conflict"].sum())]})
    out["conflict_rate"] = out["n_conflict"] / out["n_units"].where(out["n_units"] > 0)
    return out


def step_conflict_rate(alignment: pd.DataFrame, *, unit: str = "model", step: str = "step",
                       threshold: float = 0.0, by: Sequence[str] = ()) -> pd.DataFrame:
    """Per unit, the fraction of steps at which it is in conflict (``cosine < threshold``).

    ``alignment`` holds one alignment table per step (a ``step`` column, as :func:`snapshot_alignment`
    returns). One row per unit (identified by :data:`UNIT_KEYS`) with ``n_steps`` (steps with a defined
    cosine), ``n_conflict`` and ``conflict_rate = n_conflict / n_steps``. ``unit="model"`` with
    ``group == "all"`` is the fraction of steps at which the whole-model gradients conflict. ``by``: more
    columns that tell tables apart (e.g. ``["old_task", "new_task"]`` when several pairs are stacked).
    """
    if step not in alignment.columns:
        raise ValueError(f"step: no column {step!r} in the alignment table")
    out = conflict_rate(alignment, unit=unit, by=[*by, *UNIT_KEYS], threshold=threshold)
    return out.rename(columns={"n_units": "n_steps"})


# ---------------------------------------------------------------------------------------------------
# nulls
# ---------------------------------------------------------------------------------------------------


def split_half_null(
    model: nn.Module,
    examples_old: EncodedExamples,
    *,
    batch_size: int,
    n_splits: int = 1,
    seed: int = 0,
    max_examples: int | None = None,
    params: Any = None,
    heads: bool = True,
) -> pd.DataFrame:
    """Noise floor of gradient alignment: the cosine between the gradients of two disjoint halves of the
    old task's own data, per unit, for ``n_splits`` random splits.

    Each split draws a permutation of the (first ``max_examples``) examples with
    ``torch.Generator().manual_seed(seed + split)`` and compares the first ``n // 2`` with the next
    ``n // 2`` (an odd last example is left out). Cost: the backward passes over all examples, per split.
    A cosine near 1 means the task's gradient direction in that unit is reproducible; near 0 means it is
    noise at this sample size, and an old-vs-new cosine there cannot be read (see the module docstring
    and :func:`compare_with_null`).

    Returns:
        :func:`gradient_alignment` rows with a ``split`` column (a = first half, b = second half).
    """
    if n_splits < 1:
        raise ValueError(f"n_splits: must be >= 1, got {n_splits}")
    examples = _head(examples_old, max_examples)
    half = len(examples) // 2
    if half < 1:
        raise ValueError(f"examples_old: need at least 2 examples for two halves, got {len(examples)}")
    geometry = attention_geometry(model)
    selected = _resolve_params(model, params)
    frames = []
    for split in range(n_splits):
        order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + split))
        g = [
            _gradients_and_loss(model, examples.select(idx), batch_size=batch_size, params=selected)[0]
            for idx in (order[:half], order[half: 2 * half])
        ]
        frames.append(gradient_alignment(g[0], g[1], geometry, heads=heads).assign(split=split))
    return pd.concat(frames, ignore_index=True)


def compare_with_null(alignment: pd.DataFrame, null: pd.DataFrame) -> pd.DataFrame:
    """Old-vs-new alignment next to the split-half noise floor of the old task, per unit.

    Adds to ``alignment``: ``null_cosine`` (mean split-half cosine c over splits), ``null_sd`` (its
    standard deviation; NaN for one split), ``n_splits``, ``reliability`` = Spearman-Brown
    ``R = 2c / (1 + c)`` (NaN where ``c <= 0``: no reproducible direction) and ``corrected_cosine`` =
    ``cosine / sqrt(R)``, the old-vs-new cosine corrected for the attenuation by the old task's gradient
    noise (it assumes the new task's gradient is reliable, ``R_new ~ 1``; with a noisy estimate of R it
    can leave [-1, 1]).
    """
    keys = list(UNIT_KEYS)
    summary = _normalize_keys(null).groupby(keys, dropna=False, sort=False)["cosine"].agg(
        null_cosine="mean", null_sd="std", n_splits="count"
    ).reset_index()
    out = _normalize_keys(alignment).merge(_normalize_keys(summary), on=keys, how="left")
    c = out["null_cosine"]
    out["reliability"] = (2 * c / (1 + c)).where(c > 0)
    out["corrected_cosine"] = out["cosine"] / out["reliability"].pow(0.5)
    return out


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
    from forgetting.train.snapshots import load_snapshot_state

    folder = Path(folder)
    if not (folder / "weights.safetensors").is_file():
        raise FileNotFoundError(f"snapshot: {folder} has no weights.safetensors")
    return load_snapshot_state(folder)


def _snapshot_step(folder: str | Path) -> int | None:
    from forgetting.train.snapshots import snapshot_meta

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
    from forgetting.models.lora import lora_layers

    return bool(lora_layers(model))


def _effective_delta(model: nn.Module, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor]) -> Gradients:
    """``delta W_b - delta W_a`` of every LoRA layer (restores ``state_a``, then ``state_b``)."""
    from forgetting.models.lora import effective_update

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

    At each snapshot s (e.g. every k steps, :func:`stage_snapshots`): ``g_old(theta_s)`` and
    ``g_new(theta_s)`` and :func:`gradient_alignment` (a = old, b = new). With ``fixed_old`` the old task's
    gradient is taken once, at the first snapshot (half the backward passes). The model's weights are put
    back afterwards. Feed the result to :func:`step_conflict_rate` for the fraction of steps in conflict.

    Returns:
        alignment rows with ``snapshot`` (folder name) and ``step`` (from meta.json, else the position).
    """
    from tqdm.auto import tqdm

    from forgetting import paths

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


def stage_snapshots(run_dir: str | Path, stage: int) -> list[Path]:
    """The snapshots along training of stage ``stage`` (1-based), in step order: the end of the previous
    stage (the start point), every-k-step snapshots of this stage, and its end."""
    from forgetting.results import read_json

    run_dir = Path(run_dir)
    labels = read_json(run_dir / "state.json").get("snapshots", [])
    stage_of = {label: int(label[5:7]) for label in labels if re.match(r"^stage\d\d-", label)}
    if stage < 1 or stage not in stage_of.values():
        raise ValueError(f"stage: {stage} has no snapshots in {run_dir} (stages {sorted(set(stage_of.values()))})")
    start = [label for label in labels if stage_of.get(label) == stage - 1 and "-step" not in label]
    inside = [label for label in labels if stage_of.get(label) == stage]
    folders = [run_dir / "snapshots" / label for label in start + inside]
    return sorted(folders, key=lambda f: (_snapshot_step(f) or 0, "-step" not in f.name))


def stage_alignment(
    run_dir: str | Path,
    stage: int,
    *,
    old_stage: int | None = None,
    split: str = "train",
    batch_size: int = 64,
    max_examples: int | None = None,
    heads: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`snapshot_alignment` for a finished run: the task of ``old_stage`` (default ``stage - 1``)
    against the task of ``stage``, at every snapshot of ``stage`` (:func:`stage_snapshots`), on the
    ``split`` (``"train"`` or ``"eval"``) examples. Adds ``old_task`` and ``new_task`` columns."""
    from forgetting.experiments import parse_spec
    from forgetting.profiles import load_run
    from forgetting.train.sequence import load_for_spec, prepare_tasks

    if split not in ("train", "eval"):
        raise ValueError(f"split: {split!r} is not one of train, eval")
    old_stage = stage - 1 if old_stage is None else old_stage
    spec = parse_spec(load_run(run_dir).manifest["spec"])
    n_tasks = len(spec.task_list())
    if not 1 <= old_stage < stage <= n_tasks:
        raise ValueError(f"stage, old_stage: need 1 <= old_stage < stage <= {n_tasks}, got {old_stage}, {stage}")
    snapshots = stage_snapshots(run_dir, stage)
    model, tokenizer = load_for_spec(spec)
    tasks = prepare_tasks(spec, tokenizer)
    old, new = tasks[old_stage - 1], tasks[stage - 1]
    df = snapshot_alignment(
        model, snapshots, getattr(old, split), getattr(new, split), batch_size=batch_size,
        max_examples=max_examples, heads=heads, progress=progress,
    )
    return df.assign(old_task=old.name, new_task=new.name)
