"""Fine-tuning methods: how a loaded model is made trainable, looked up by the spec's ``finetune.method``.

A method is a function ``prepare(model, options, seed) -> model`` registered under a name:

- ``full``: every weight trains (the model is returned as it is);
- ``lora``: low-rank adapters through peft (:func:`forgetting.models.lora.apply_lora`), with the
  options of ``finetune.lora``; the adapter's initialisation draws from ``torch.manual_seed(seed)``.

A new method is one function and one :func:`register_method` call; the spec accepts its name from then
on (``finetune.method`` is validated against :func:`method_names`, not a closed list), and
:func:`prepare_model` is the only dispatch. What a method *does during training* (a penalty, a
gradient projection, a replay buffer) is a training hook instead (:mod:`forgetting.hooks`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from forgetting.errors import SpecError
from forgetting.models.lora import apply_lora

#: ``prepare(model, options, seed) -> model``; ``options`` is the spec's ``finetune`` section.
Prepare = Callable[[torch.nn.Module, Any, int], torch.nn.Module]

_METHODS: dict[str, Prepare] = {}


def register_method(name: str, prepare: Prepare) -> Prepare:
    """Register ``prepare`` as fine-tuning method ``name`` (a name may be registered once)."""
    if name in _METHODS and _METHODS[name] is not prepare:
        raise ValueError(f"fine-tuning method {name!r} is already registered")
    _METHODS[name] = prepare
    return prepare


def method_names() -> tuple[str, ...]:
    """The registered fine-tuning methods, in registration order."""
    return tuple(_METHODS)


def prepare_model(model: torch.nn.Module, method: str, options: Any, seed: int) -> torch.nn.Module:
    """``model`` made trainable by ``method`` (see the module docstring)."""
    if method not in _METHODS:
        raise SpecError("finetune.method", f"{method!r} not allowed; allowed: {', '.join(_METHODS)}")
    return _METHODS[method](model, options, seed)


def _full(model: torch.nn.Module, options: Any, seed: int) -> torch.nn.Module:
    return model


def _lora(model: torch.nn.Module, options: Any, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    lora = options.lora
    return apply_lora(model, r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules)


register_method("full", _full)
register_method("lora", _lora)
