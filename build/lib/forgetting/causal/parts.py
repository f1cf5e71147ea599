"""The parts of a model a restoration study puts back: layers, groups of parameters, matrix types.

Every parameter name (of ``model.named_parameters()``, plain or peft) is read as the module it belongs
to, relative to the base model (``base_model.model.`` and ``.base_layer`` dropped; a LoRA factor
``X.lora_A.default.weight`` belongs to module ``X``), and placed with the model's
:class:`~forgetting.models.geometry.AttentionGeometry`:

- ``layer``: the decoder block it is in (``model.layers.<i>.``), or none;
- ``group``: ``attention`` (inside a block's attention module), ``mlp`` (inside its MLP / feed-forward
  module), ``norms`` (a norm inside a block, or outside the blocks: a module whose name has ``norm`` or
  starts with ``ln``), ``embeddings`` (every other parameter outside the blocks: token and position
  embeddings, and ``lm_head`` when it is not tied to the embeddings; a tied one is the same parameter),
  ``other`` (anything else inside a block);
- ``matrix``: for attention and MLP parameters, the module inside the attention / MLP module
  (``q_proj``, ..., ``gate_proj``, ...; ``experts`` for fused mixture-of-experts tensors), the same in every
  layer; a name found in both groups (GPT-2's ``c_proj``) is prefixed with its group (``mlp.c_proj``).

:func:`model_parts` lists the parts, in order: ``layer 0..n-1``, the groups (``all`` first: every
parameter), the matrices; each with a ``select(parameter name) -> bool`` for
:func:`forgetting.causal.restore.recovery`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from forgetting.models.geometry import AttentionGeometry, attention_geometry

__all__ = ["GROUPS", "Part", "Place", "model_parts", "module_of", "place"]

GROUPS = ("attention", "mlp", "embeddings", "norms", "other")
_PEFT_PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?:A|B|embedding_A|embedding_B)\.[^.]+(?:\.weight)?$")


def module_of(name: str) -> str:
    """The module a parameter belongs to, relative to the base model:
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight`` -> ``model.layers.0.self_attn.q_proj``."""
    name = name.removeprefix(_PEFT_PREFIX)
    name = name.replace(".base_layer.", ".")
    m = _LORA.match(name)
    return m["module"] if m else name.rpartition(".")[0]


@dataclass(frozen=True)
class Place:
    """Where a parameter sits (module docstring): its layer (``None`` outside the blocks), group, matrix."""

    layer: int | None
    group: str
    matrix: str | None


def _is_norm(module: str) -> bool:
    leaf = module.rpartition(".")[2]
    return "norm" in leaf or leaf.startswith("ln")


def place(name: str, geometry: AttentionGeometry) -> Place:
    """The :class:`Place` of parameter ``name`` in a model of ``geometry``."""
    module = module_of(name)
    prefix = f"{geometry.layer_prefix}."
    if not module.startswith(prefix):
        return Place(None, "norms" if _is_norm(module) else "embeddings", None)
    layer = int(module[len(prefix):].split(".", 1)[0])
    attention, mlp = geometry.attention_module(layer) + ".", f"{geometry.layer_name(layer)}.{geometry.mlp_name}."
    if module.startswith(attention):
        return Place(layer, "attention", module[len(attention):].split(".", 1)[0])
    if module.startswith(mlp):
        return Place(layer, "mlp", module[len(mlp):])
    return Place(layer, "norms" if _is_norm(module) else "other", None)


@dataclass(frozen=True)
class Part:
    """A set of parameters a study restores: ``study`` (``layer``, ``group``, ``matrix``), ``part`` (its
    name in tables: ``layer 0``, ``attention``, ``q_proj``) and ``select(parameter name) -> bool``."""

    study: str
    part: str
    select: Callable[[str], bool]


def _member(names: set[str]) -> Callable[[str], bool]:
    return names.__contains__


def model_parts(model: nn.Module, geometry: AttentionGeometry | None = None) -> list[Part]:
    """The layers, groups and matrix types of ``model`` (module docstring), as :class:`Part` objects whose
    ``select`` picks the parameter names of that part; groups without parameters are left out."""
    geometry = geometry or attention_geometry(model)
    places = {name: place(name, geometry) for name, _ in model.named_parameters()}
    parts = [Part("layer", f"layer {i}", _member({n for n, p in places.items() if p.layer == i}))
             for i in range(geometry.num_layers)]
    parts.append(Part("group", "all", _member(set(places))))
    for group in GROUPS:
        members = {n for n, p in places.items() if p.group == group}
        if members:
            parts.append(Part("group", group, _member(members)))
    matrices: dict[tuple[str, str], set[str]] = {}
    for name, p in places.items():
        if p.matrix is not None:
            matrices.setdefault((p.group, p.matrix), set()).add(name)
    clash = {m for g, m in matrices if (("mlp" if g == "attention" else "attention"), m) in matrices}
    for (group, matrix), members in matrices.items():
        parts.append(Part("matrix", f"{group}.{matrix}" if matrix in clash else matrix, _member(members)))
    return parts
