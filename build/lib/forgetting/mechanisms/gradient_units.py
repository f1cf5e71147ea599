"""Units of a gradient (matrix, attention head, expert, layer, model) and the per-unit alignment table.

A gradient is a dict ``{parameter name: tensor}``. :func:`gradient_alignment` compares two such dicts
``a`` and ``b`` unit by unit, where a unit u is a set of coordinates (a slice of the tensors)::

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
  and over all of them (group ``"all"``): ``dot = sum_m dot_m``, ``norm_a^2 = sum_m norm_a(m)^2`` (and
  ``norm_b`` alike) over the member matrices m.
- ``"model"``: the same over the whole model, per group (adding ``"embedding"``, ``"other"``) and ``"all"``.

Columns (:data:`ALIGNMENT_COLUMNS`): ``unit, name, layer, group, kind, part, head, head_type, numel, dot,
norm_a, norm_b, cosine``. ``layer`` and ``head`` are nullable integers (``<NA>`` where they do not apply).
``kind`` is one of q, k, v, o, qkv (a fused q/k/v weight), gate, up, down, router, experts, embed,
pos_embed, lm_head, norm, other, or ``"all"`` on aggregate rows; ``part`` is weight, bias, lora_A,
lora_B or the name of a fused expert tensor.

:func:`update_alignment` compares a weight change, e.g. the old task's delta_A = theta_A - theta_0, with
a task's descent direction -g_B: ``cos(delta_u, -g_u)``; a negative cosine means B's first step undoes
part of what A learned.

Only the arithmetic of slicing and reducing given tensors is done here: no forward or backward pass.
Everything here is also importable from :mod:`forgetting.mechanisms.gradients`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from forgetting.models.geometry import AttentionGeometry, ProjectionRef, attention_geometry

__all__ = ["ALIGNMENT_COLUMNS", "UNITS", "gradient_alignment", "update_alignment"]

UNITS = ("matrix", "head", "expert", "layer", "model")
#: The columns of an alignment table (:func:`gradient_alignment`), in order.
ALIGNMENT_COLUMNS = (
    "unit", "name", "layer", "group", "kind", "part", "head", "head_type", "numel", "dot", "norm_a", "norm_b", "cosine",
)
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
            weight names (:func:`~forgetting.mechanisms.loss_gradients.lora_task_gradients`' effective gradients).
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

    Typical use: ``delta = theta_A - theta_0`` (what the old task A changed; for LoRA the
    effective update ``delta W``) against the new task B's first gradient ``g_B`` at theta_A (for LoRA the
    effective gradient G). Negative cosine: B's descent direction points back against A's change.
    Columns as :func:`gradient_alignment` with ``a = delta``, ``b = -g``; so ``dot = -g . delta`` is
    minus the first-order change of B's loss along delta.
    """
    return gradient_alignment(delta, {n: -t for n, t in grad.items()}, geometry, model=model, heads=heads)
