"""Attention geometry per architecture: how many layers and heads, and which rows or columns of which
weight belong to each head.

Everything that slices a model by head (per-head gradient alignment, head disruption, head ablation)
goes through this module, so the layout facts live in one place.

Notation: ``H`` query heads per layer, ``K`` key/value heads (``K < H`` is grouped-query attention,
query head ``h`` reads key/value head ``h // (H // K)``), ``d`` head dim, ``D`` hidden size.

Layouts (verified against the forward pass of transformers 5.24 in ``tests/test_geometry.py``):

* ``"separate"`` (Llama, Qwen2, Mistral, Mixtral, Llama 4 text): ``nn.Linear`` modules
  ``self_attn.{q,k,v,o}_proj``; a Linear weight is ``(out_features, in_features)``.

  - ``q_proj.weight`` ``(H*d, D)``: rows ``h*d : (h+1)*d`` are query head ``h``.
  - ``k_proj.weight``, ``v_proj.weight`` ``(K*d, D)``: rows ``g*d : (g+1)*d`` are key/value head ``g``.
  - ``o_proj.weight`` ``(D, H*d)``: COLUMNS ``h*d : (h+1)*d`` read query head ``h``'s output.

  ``d`` comes from ``config.head_dim`` when set (Llama 4's default is 128 whatever ``D`` is), else ``D // H``.

* ``"gpt2"``: ``attn.c_attn`` and ``attn.c_proj`` are ``Conv1D``, whose weight is ``(in_features,
  out_features)`` (transposed against ``nn.Linear``; ``y = x @ W + b``).

  - ``c_attn.weight`` ``(D, 3*D)``: COLUMN blocks ``[0, D)`` = q, ``[D, 2D)`` = k, ``[2D, 3D)`` = v; inside a
    block, columns ``h*d : (h+1)*d`` are head ``h``. ``c_attn.bias`` ``(3*D,)`` follows the columns.
  - ``c_proj.weight`` ``(D, D)``: ROWS ``h*d : (h+1)*d`` read head ``h``'s output.

* ``"neox"`` (GPT-NeoX, Pythia): ``attention.query_key_value`` is an ``nn.Linear`` with weight ``(3*D, D)``
  whose rows are INTERLEAVED per head: the forward does ``view(..., H, 3*d)`` then ``chunk(3, dim=-1)``,
  i.e. rows reshape to ``(H, 3, d)``: head ``h``'s q is rows ``h*3d + [0, d)``, its k ``h*3d + [d, 2d)``,
  its v ``h*3d + [2d, 3d)``. ``attention.dense.weight`` ``(D, D)``: COLUMNS ``h*d : (h+1)*d`` by head.

A :class:`ProjectionRef` captures all of these with one rule: head ``h`` occupies
``offset + h*stride + [0, d)`` along ``axis`` of the parameter ``param_name``.

Mixture of experts (Mixtral, Llama 4 text): attention is the ``"separate"`` layout; the experts are
fused 3-D tensors, not one Linear per expert: Mixtral ``mlp.experts.gate_up_proj`` ``(E, 2*I, D)`` and
``down_proj`` ``(E, D, I)`` (Linear-like, per expert ``(out, in)``); Llama 4 ``feed_forward.experts.gate_up_proj``
``(E, D, 2*I)`` and ``down_proj`` ``(E, I, D)`` (``(in, out)`` per expert, used with ``bmm``). Llama 4 also
has a dense ``shared_expert`` and, on layers not in ``config.moe_layers``, a dense MLP instead.

Unknown architectures follow the documented generic rule (see :func:`attention_geometry`) or get a
``ValueError`` (:class:`~forgetting.errors.SpecError` on field ``model``) that lists what is supported.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch

from forgetting.errors import SpecError

Kind = Literal["q", "k", "v", "o"]
KINDS: tuple[str, ...] = ("q", "k", "v", "o")


@dataclass(frozen=True)
class _ArchSpec:
    """Where things live in one architecture family (names relative to the base model)."""

    layout: str  # "separate", "gpt2", "neox"
    layers: str  # prefix of the layer list, e.g. "model.layers"
    attention: str  # attention module inside a layer
    modules: dict[str, str]  # kind -> module name inside the attention module
    mlp: str  # MLP / feed-forward module inside a layer
    mlp_modules: tuple[str, ...]  # weight-holding modules inside the MLP (dense layer)
    moe_mlp_modules: tuple[str, ...] = ()  # the same on a mixture-of-experts layer


_SEPARATE = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj"}
_SWIGLU = ("gate_proj", "up_proj", "down_proj")

ARCHITECTURES: dict[str, _ArchSpec] = {
    "llama": _ArchSpec("separate", "model.layers", "self_attn", _SEPARATE, "mlp", _SWIGLU),
    "qwen2": _ArchSpec("separate", "model.layers", "self_attn", _SEPARATE, "mlp", _SWIGLU),
    "mistral": _ArchSpec("separate", "model.layers", "self_attn", _SEPARATE, "mlp", _SWIGLU),
    "mixtral": _ArchSpec("separate", "model.layers", "self_attn", _SEPARATE, "mlp", (), ("gate", "experts")),
    "llama4_text": _ArchSpec(
        "separate", "model.layers", "self_attn", _SEPARATE, "feed_forward", _SWIGLU,
        ("router", "experts", "shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj"),
    ),
    "gpt2": _ArchSpec("gpt2", "transformer.h", "attn", {"q": "c_attn", "k": "c_attn", "v": "c_attn", "o": "c_proj"},
                      "mlp", ("c_fc", "c_proj")),
    "gpt_neox": _ArchSpec(
        "neox", "gpt_neox.layers", "attention",
        {"q": "query_key_value", "k": "query_key_value", "v": "query_key_value", "o": "dense"},
        "mlp", ("dense_h_to_4h", "dense_4h_to_h"),
    ),
}
SUPPORTED_ARCHITECTURES: tuple[str, ...] = tuple(ARCHITECTURES)
GENERIC_RULE = (
    "modules model.layers.N.self_attn.{q,k,v,o}_proj (nn.Linear) and config num_attention_heads, "
    "num_key_value_heads (default: num_attention_heads), head_dim (default: hidden_size // num_attention_heads)"
)


@dataclass(frozen=True)
class ProjectionRef:
    """One attention projection of one layer, and where each head lives in its weight.

    Head ``h`` (a query head for ``q``/``o``, a key/value head for ``k``/``v``) occupies the indices
    ``offset + h*stride + [0, head_dim)`` along ``axis`` of the weight ``param_name``. ``axis`` is 0 for
    rows and 1 for columns of the weight as stored (``nn.Linear``: ``(out, in)``; GPT-2 ``Conv1D``:
    ``(in, out)``). When the heads run along the output features (q, k, v) the bias ``bias_name``
    is split the same way; for ``o`` the heads run along the input features and the bias is not per head.
    """

    layer: int
    kind: str  # "q", "k", "v" or "o"
    module_name: str  # e.g. "model.layers.3.self_attn.q_proj" (relative to the base model)
    param_name: str  # module_name + ".weight"
    bias_name: str  # module_name + ".bias" (the module may have no bias)
    axis: int  # weight axis that runs over heads (0 rows, 1 columns)
    offset: int  # first index of head 0 along axis
    stride: int  # distance between consecutive heads along axis (head_dim, or 3*head_dim for NeoX)
    num_heads: int  # heads along axis: query heads for q/o, key/value heads for k/v
    head_dim: int
    heads_on_output: bool  # True when axis indexes output features (then the bias is per head)

    def head_slice(self, head: int) -> slice:
        """The contiguous range of head ``head`` along :attr:`axis` (length ``head_dim``)."""
        if not 0 <= head < self.num_heads:
            raise IndexError(f"head {head} out of range for {self.kind} of layer {self.layer} ({self.num_heads} heads)")
        start = self.offset + head * self.stride
        return slice(start, start + self.head_dim)

    def head_index(self, head: int) -> tuple[slice, slice]:
        """Index into the weight for one head: ``weight[ref.head_index(h)]`` is ``(d, other)`` or ``(other, d)``."""
        s = self.head_slice(head)
        return (s, slice(None)) if self.axis == 0 else (slice(None), s)

    def indices(self) -> torch.Tensor:
        """All indices of this projection along :attr:`axis`, head-major: LongTensor ``(num_heads * head_dim,)``.

        For separate q/k/v/o this is ``arange``; for the fused GPT-2 and NeoX weights it picks this
        projection's columns/rows out of the fused matrix.
        """
        heads = torch.arange(self.num_heads).unsqueeze(1) * self.stride + self.offset
        return (heads + torch.arange(self.head_dim).unsqueeze(0)).reshape(-1)

    def per_head(self, tensor: torch.Tensor) -> torch.Tensor:
        """Reshape a weight-shaped tensor (the weight, its gradient, a LoRA update) to ``(num_heads, head_dim, other)``.

        ``other`` is the extent of the non-head axis (the hidden size for attention projections).
        Row ``[h, i]`` is entry ``i`` of head ``h`` whatever the stored layout.
        """
        picked = tensor.index_select(self.axis, self.indices().to(tensor.device))
        if self.axis == 1:
            picked = picked.transpose(0, 1)
        return picked.reshape(self.num_heads, self.head_dim, -1)

    def per_head_bias(self, bias: torch.Tensor) -> torch.Tensor:
        """Reshape this projection's bias to ``(num_heads, head_dim)``; only when the heads run along outputs."""
        if not self.heads_on_output:
            raise ValueError(f"the bias of {self.module_name} is not split by head (heads run along its inputs)")
        return bias.index_select(0, self.indices().to(bias.device)).reshape(self.num_heads, self.head_dim)

    def weight(self, model: Any) -> torch.nn.Parameter:
        """The weight parameter in ``model`` (plain or peft-wrapped; with LoRA, the frozen base weight)."""
        return _leaf_module(model, self.module_name).weight

    def bias(self, model: Any) -> torch.nn.Parameter | None:
        """The bias parameter in ``model``, or ``None`` when the projection has none."""
        return getattr(_leaf_module(model, self.module_name), "bias", None)

    def head_weight(self, model: Any, head: int) -> torch.Tensor:
        """A view of head ``head``'s part of the weight, in the stored layout."""
        return self.weight(model)[self.head_index(head)]


@dataclass(frozen=True)
class AttentionGeometry:
    """The attention geometry of one model: counts, and where q/k/v/o and the MLP live per layer.

    Module names are relative to the base model (what ``model.get_base_model()`` returns for peft).
    """

    architecture: str  # config.model_type, e.g. "llama", "llama4_text", "gpt2", "gpt_neox"
    num_layers: int
    num_heads: int  # query heads per layer (H)
    num_kv_heads: int  # key/value heads per layer (K); H % K == 0
    head_dim: int  # d
    hidden_size: int  # D
    layout: str  # "separate", "gpt2" or "neox" (see the module docstring)
    layer_prefix: str  # e.g. "model.layers"; layer L is f"{layer_prefix}.{L}"
    attention_name: str  # attention module inside a layer, e.g. "self_attn"
    projection_modules: tuple[tuple[str, str], ...]  # (kind, module name inside the attention module)
    mlp_name: str  # MLP module inside a layer ("mlp", or "feed_forward" for Llama 4)
    dense_mlp_modules: tuple[str, ...]  # weight-holding modules inside a dense MLP
    moe_mlp_modules: tuple[str, ...] = ()  # the same inside a mixture-of-experts MLP
    is_moe: bool = False
    num_experts: int = 0  # experts per MoE layer (fused into 3-D tensors, not separate modules)
    moe_layers: tuple[int, ...] = ()  # layers whose MLP is a mixture of experts
    generic: bool = False  # True when found by the generic rule, not the supported table

    # --- counts -----------------------------------------------------------------------------------
    @property
    def group_size(self) -> int:
        """Query heads per key/value head (``H // K``; 1 without grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    @property
    def total_heads(self) -> int:
        """Query heads in the whole model, ``num_layers * num_heads``."""
        return self.num_layers * self.num_heads

    def kv_head(self, head: int) -> int:
        """The key/value head that query head ``head`` reads: ``head // group_size``."""
        return head // self.group_size

    def heads(self) -> Iterator[tuple[int, int]]:
        """All ``(layer, head)`` query-head pairs, layer-major; the i-th pair has global index i."""
        for layer in range(self.num_layers):
            for head in range(self.num_heads):
                yield layer, head

    def global_head(self, layer: int, head: int) -> int:
        """Global index of query head ``head`` of ``layer``: ``layer * num_heads + head``."""
        self._check_layer(layer)
        if not 0 <= head < self.num_heads:
            raise IndexError(f"head {head} out of range ({self.num_heads} query heads per layer)")
        return layer * self.num_heads + head

    def layer_head(self, global_head: int) -> tuple[int, int]:
        """Inverse of :meth:`global_head`."""
        if not 0 <= global_head < self.total_heads:
            raise IndexError(f"global head {global_head} out of range ({self.total_heads} heads)")
        return divmod(global_head, self.num_heads)

    # --- where things live ------------------------------------------------------------------------
    def layer_name(self, layer: int) -> str:
        self._check_layer(layer)
        return f"{self.layer_prefix}.{layer}"

    def attention_module(self, layer: int) -> str:
        """Name of layer ``layer``'s attention module, e.g. ``"model.layers.0.self_attn"``."""
        return f"{self.layer_name(layer)}.{self.attention_name}"

    def projection(self, layer: int, kind: str) -> ProjectionRef:
        """Where projection ``kind`` (``"q"``, ``"k"``, ``"v"`` or ``"o"``) of ``layer`` lives, head by head."""
        if kind not in KINDS:
            raise ValueError(f"kind: {kind!r} not one of {', '.join(KINDS)}")
        module = f"{self.attention_module(layer)}.{dict(self.projection_modules)[kind]}"
        d, H, K, D = self.head_dim, self.num_heads, self.num_kv_heads, self.hidden_size
        heads = K if kind in ("k", "v") else H
        if self.layout == "separate":
            axis, offset, stride = (1 if kind == "o" else 0), 0, d
        elif self.layout == "gpt2":  # Conv1D (in, out): q/k/v are column blocks of c_attn, c_proj rows by head
            axis, offset, stride = (0, 0, d) if kind == "o" else (1, "qkv".index(kind) * D, d)
        elif self.layout == "neox":  # Linear rows (H, 3, d) interleaved; dense columns by head
            axis, offset, stride = (1, 0, d) if kind == "o" else (0, "qkv".index(kind) * d, 3 * d)
        else:  # pragma: no cover - layouts are fixed above
            raise AssertionError(self.layout)
        return ProjectionRef(
            layer=layer, kind=kind, module_name=module, param_name=f"{module}.weight", bias_name=f"{module}.bias",
            axis=axis, offset=offset, stride=stride, num_heads=heads, head_dim=d, heads_on_output=kind != "o",
        )

    def projections(self, layer: int) -> dict[str, ProjectionRef]:
        """``{"q": ..., "k": ..., "v": ..., "o": ...}`` for one layer."""
        return {kind: self.projection(layer, kind) for kind in KINDS}

    def head_slices(self, layer: int) -> dict[str, list[slice]]:
        """Per projection, the slice of each head along its :attr:`ProjectionRef.axis` (see the module docstring)."""
        return {kind: [ref.head_slice(h) for h in range(ref.num_heads)] for kind, ref in self.projections(layer).items()}

    def head_rows(self, kind: str, head: int, layer: int = 0) -> slice:
        """The range of head ``head`` along the head axis of ``kind``'s weight (rows for Linear q/k/v,
        columns for o; for GPT-2 the reverse). The range is the same in every layer."""
        return self.projection(layer, kind).head_slice(head)

    def attention_modules(self, layer: int) -> list[str]:
        """Distinct weight-holding attention modules of ``layer`` (one fused ``c_attn`` for GPT-2)."""
        names = [self.projection(layer, kind).module_name for kind in KINDS]
        return list(dict.fromkeys(names))

    def is_moe_layer(self, layer: int) -> bool:
        self._check_layer(layer)
        return layer in self.moe_layers

    def mlp_modules(self, layer: int) -> list[str]:
        """Weight-holding MLP modules of ``layer``, full names.

        Dense layers list their Linear/Conv1D modules; MoE layers list the router and the fused experts
        module (whose parameters ``gate_up_proj``, ``down_proj`` are ``(num_experts, ., .)`` tensors) and,
        for Llama 4, the shared expert's Linear modules.
        """
        inner = self.moe_mlp_modules if self.is_moe_layer(layer) else self.dense_mlp_modules
        return [f"{self.layer_name(layer)}.{self.mlp_name}.{name}" for name in inner]

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range ({self.num_layers} layers)")


def default_lora_targets(geometry: AttentionGeometry) -> list[str]:
    """LoRA target module names (as peft matches them, by suffix) for the attention projections:
    ``q_proj, k_proj, v_proj, o_proj`` (Llama family), ``c_attn, c_proj`` (GPT-2; note ``c_proj`` also
    matches the MLP's ``mlp.c_proj``, so GPT-2 targets are given as ``attn.c_attn``, ``attn.c_proj``),
    ``query_key_value, dense`` (GPT-NeoX)."""
    names = list(dict.fromkeys(name for _, name in geometry.projection_modules))
    if geometry.layout == "gpt2":
        return [f"{geometry.attention_name}.{name}" for name in names]
    return names


# --- building a geometry ----------------------------------------------------------------------------
def base_model(model: Any) -> Any:
    """The plain transformers model under a peft wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _leaf_module(model: Any, name: str) -> torch.nn.Module:
    module = base_model(model).get_submodule(name)
    return getattr(module, "base_layer", module)  # peft LoRA wraps the original layer


def _config_of(model_or_config: Any) -> Any:
    from transformers import PretrainedConfig

    if isinstance(model_or_config, PretrainedConfig):
        return model_or_config
    config = getattr(base_model(model_or_config), "config", None)
    if config is None:
        raise TypeError(f"expected a transformers model, peft model or config, got {type(model_or_config).__name__}")
    return config


def _counts(config: Any) -> tuple[int, int, int, int, int]:
    """``(num_layers, H, K, d, D)`` from a config (GPT-2's n_* names are mapped by transformers)."""
    H = int(config.num_attention_heads)
    D = int(config.hidden_size)
    K = int(getattr(config, "num_key_value_heads", None) or H)
    d = int(getattr(config, "head_dim", None) or D // H)
    return int(config.num_hidden_layers), H, K, d, D


def attention_geometry(model_or_config: Any) -> AttentionGeometry:
    """The :class:`AttentionGeometry` of a transformers causal LM, a peft-wrapped one, or a config.

    The architecture is ``config.model_type``; supported: ``llama``, ``qwen2``, ``mistral``, ``mixtral``,
    ``llama4_text``, ``gpt2``, ``gpt_neox``. Any other type is accepted by the generic rule when a model
    (not just a config) is given and it has ``model.layers.N.self_attn.{q,k,v,o}_proj`` Linear modules
    (counts from ``num_attention_heads``, ``num_key_value_heads``, ``head_dim``); otherwise
    :class:`~forgetting.errors.SpecError` (a ``ValueError``) lists what is supported.

    When a model is given, the counts are checked against its actual weight shapes.
    """
    config = _config_of(model_or_config)
    model = None if model_or_config is config else base_model(model_or_config)
    arch = str(getattr(config, "model_type", ""))
    spec = ARCHITECTURES.get(arch)
    generic = spec is None
    if generic:
        spec = ARCHITECTURES["llama"]
        if model is None or not _follows_generic_rule(model, config):
            raise SpecError(
                "model",
                f"architecture {arch!r} has no known attention geometry; supported: "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}, or any model with {GENERIC_RULE}",
            )
    num_layers, H, K, d, D = _counts(config)
    if H % K:
        raise ValueError(f"num_attention_heads={H} is not a multiple of num_key_value_heads={K}")
    moe_layers: tuple[int, ...] = ()
    num_experts = int(getattr(config, "num_local_experts", 0) or 0) if not generic else 0
    if arch == "mixtral":
        moe_layers = tuple(range(num_layers))
    elif arch == "llama4_text":
        moe_layers = tuple(sorted(int(i) for i in (config.moe_layers or ())))
    geometry = AttentionGeometry(
        architecture=arch, num_layers=num_layers, num_heads=H, num_kv_heads=K, head_dim=d, hidden_size=D,
        layout=spec.layout, layer_prefix=spec.layers, attention_name=spec.attention,
        projection_modules=tuple(spec.modules.items()), mlp_name=spec.mlp, dense_mlp_modules=spec.mlp_modules,
        moe_mlp_modules=spec.moe_mlp_modules, is_moe=bool(moe_layers), num_experts=num_experts if moe_layers else 0,
        moe_layers=moe_layers, generic=generic,
    )
    if model is not None:
        check_geometry(geometry, model)
    return geometry


def _follows_generic_rule(model: Any, config: Any) -> bool:
    if not hasattr(config, "num_attention_heads") or not hasattr(config, "num_hidden_layers"):
        return False
    try:
        attention = model.get_submodule("model.layers.0.self_attn")
    except AttributeError:
        return False
    for name in _SEPARATE.values():
        module = getattr(attention, name, None)
        module = getattr(module, "base_layer", module)
        if not isinstance(module, torch.nn.Linear):
            return False
    return True


def check_geometry(geometry: AttentionGeometry, model: Any) -> None:
    """Raise ``ValueError`` unless every layer's q/k/v/o weights have the shapes the geometry implies."""
    d, H, K, D = geometry.head_dim, geometry.num_heads, geometry.num_kv_heads, geometry.hidden_size
    expected = {
        "separate": {"q": (H * d, D), "k": (K * d, D), "v": (K * d, D), "o": (D, H * d)},
        "gpt2": {"q": (D, 3 * D), "k": (D, 3 * D), "v": (D, 3 * D), "o": (D, D)},
        "neox": {"q": (3 * D, D), "k": (3 * D, D), "v": (3 * D, D), "o": (D, D)},
    }[geometry.layout]
    for layer in range(geometry.num_layers):
        for kind, ref in geometry.projections(layer).items():
            try:
                shape = tuple(ref.weight(model).shape)
            except AttributeError as exc:
                raise ValueError(f"{geometry.architecture}: no module {ref.module_name} ({exc})") from None
            if shape != expected[kind]:
                raise ValueError(
                    f"{geometry.architecture}: {ref.param_name} has shape {shape}, expected {expected[kind]} from "
                    f"config (heads={H}, kv_heads={K}, head_dim={d}, hidden={D})"
                )
