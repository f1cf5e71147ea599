"""LoRA through peft: apply adapters to the attention projections, list their parameters, and read the
weight update they amount to.

A LoRA layer adds ``delta W = (alpha / r) * B @ A`` to a frozen base weight, with ``A`` ``(r, in)`` and
``B`` ``(out, r)``, i.e. ``B @ A`` is ``(out, in)`` like an ``nn.Linear`` weight. For GPT-2's
``Conv1D`` (weight ``(in, out)``) peft sets ``fan_in_fan_out`` and the update is transposed to ``(in, out)``.
:func:`effective_update` returns it in the layout of the base weight, so it can be sliced by head with
:class:`forgetting.models.geometry.ProjectionRef` exactly like the weight itself.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from forgetting.errors import SpecError
from forgetting.models.geometry import attention_geometry, base_model, default_lora_targets

DEFAULT_FIELD = "finetune.lora"  # where LoRA settings live in an experiment spec; errors name this field


def _adaptable_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Modules peft's LoRA can wrap here: ``nn.Linear`` and transformers' ``Conv1D`` (GPT-2)."""
    from transformers.pytorch_utils import Conv1D

    return {name: m for name, m in model.named_modules() if name and isinstance(m, (torch.nn.Linear, Conv1D))}


def _check_targets(model: torch.nn.Module, targets: list[str], field: str) -> dict[str, torch.nn.Module]:
    """The modules each target name selects (peft's rule: the full name, or a suffix after a dot)."""
    modules = _adaptable_modules(model)
    allowed = sorted({name.rsplit(".", 1)[-1] for name in modules})
    if not targets:
        raise SpecError(f"{field}.target_modules", f"must name at least one module; allowed: {', '.join(allowed)}")
    selected: dict[str, torch.nn.Module] = {}
    unknown = []
    for target in targets:
        if not isinstance(target, str) or not target:
            unknown.append(repr(target))
            continue
        hits = {n: m for n, m in modules.items() if n == target or n.endswith(f".{target}")}
        if not hits:
            unknown.append(repr(target))
        selected.update(hits)
    if unknown:
        raise SpecError(
            f"{field}.target_modules",
            f"{', '.join(unknown)} not found among the model's Linear modules; allowed: {', '.join(allowed)}",
        )
    return selected


def apply_lora(
    model: Any,
    *,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
    field: str = DEFAULT_FIELD,
) -> Any:
    """Wrap ``model`` in a ``peft.PeftModel`` with one LoRA adapter (``"default"``); base weights frozen.

    Args:
        model: a transformers causal LM (not already peft-wrapped).
        r: rank (>= 1). alpha: scaling numerator; the update is ``(alpha / r) * B @ A``.
        dropout: LoRA dropout in [0, 1).
        target_modules: module names matched as peft does (exact, or a suffix after a dot); ``None``:
            :func:`~forgetting.models.geometry.default_lora_targets` for the architecture.
        field: prefix of the field names in error messages (the spec's ``finetune.lora``).

    Raises:
        SpecError: on ``{field}.target_modules`` for names no Linear/Conv1D module has (the message lists
            the module names that exist), or on ``{field}.r`` / ``.alpha`` / ``.dropout`` out of range.
    """
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers.pytorch_utils import Conv1D

    if isinstance(model, PeftModel):
        raise SpecError(field, "the model already has peft adapters; apply LoRA to the plain model")
    if not isinstance(r, int) or r < 1:
        raise SpecError(f"{field}.r", f"must be an integer >= 1, got {r!r}")
    if not alpha > 0:
        raise SpecError(f"{field}.alpha", f"must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise SpecError(f"{field}.dropout", f"must be in [0, 1), got {dropout!r}")
    targets = list(target_modules) if target_modules is not None else default_lora_targets(attention_geometry(model))
    selected = _check_targets(model, targets, field)
    # fan_in_fan_out: True for Conv1D (GPT-2), whose weight is (in, out). peft corrects it per layer (with a
    # warning) when the targets mix Conv1D and Linear; each LoRA layer keeps its own flag.
    all_conv = all(isinstance(m, Conv1D) for m in selected.values())
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
        fan_in_fan_out=all_conv, task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft 0.21 calls a transformers 5 method deprecated in favour of another
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def lora_layers(model: Any) -> dict[str, Any]:
    """``{base weight name: peft LoRA layer}`` for every adapted module.

    Names are those of the base weights in the plain model (``"model.layers.0.self_attn.q_proj.weight"``),
    the names :class:`~forgetting.models.geometry.ProjectionRef.param_name` uses.
    """
    from peft.tuners.lora import LoraLayer

    return {f"{name}.weight": module for name, module in base_model(model).named_modules() if isinstance(module, LoraLayer)}


def lora_parameters(model: Any, adapter: str = "default") -> dict[str, torch.nn.Parameter]:
    """The trainable LoRA parameters, by their full name in ``model`` (``...lora_A.default.weight`` ``(r, in)``
    and ``...lora_B.default.weight`` ``(out, r)``)."""
    return {
        name: p for name, p in model.named_parameters()
        if (".lora_A." in name or ".lora_B." in name) and f".{adapter}." in name
    }


@torch.no_grad()
def effective_update(model: Any, adapter: str = "default") -> dict[str, torch.Tensor]:
    """The weight update each adapter amounts to: ``{base weight name: delta W}``.

    ``delta W = scaling * B @ A`` with ``scaling = alpha / r`` (``alpha / sqrt(r)`` under rsLoRA), shaped
    like the base weight: ``(out, in)`` for ``nn.Linear``, ``(in, out)`` for GPT-2 ``Conv1D``
    (``fan_in_fan_out``). Merging adds exactly this: ``W_merged = W + delta W``.
    """
    updates = {}
    for name, layer in lora_layers(model).items():
        if adapter not in layer.lora_A:
            continue
        a = layer.lora_A[adapter].weight.float()  # (r, in)
        b = layer.lora_B[adapter].weight.float()  # (out, r)
        delta = (b @ a) * layer.scaling[adapter]  # (out, in)
        if getattr(layer, "fan_in_fan_out", False):
            delta = delta.T.contiguous()
        base = layer.get_base_layer().weight
        updates[name] = delta.to(base.dtype).reshape(base.shape)
    return updates
