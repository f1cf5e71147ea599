"""The gradient of a task's loss, by one backward pass per batch, for plain and LoRA models.

Notation. theta are the (selected) parameters, T_X the target tokens of task X's examples (the target and
the closing eos, see :mod:`forgetting.tasks.encoding`), and the task loss is the mean over target tokens::

    L_X(theta) = (1 / |T_X|) * sum_{t in T_X} -log p_theta(y_t | y_<t)     (:func:`task_loss`)
    g_X        = dL_X / dtheta                                    (:func:`task_gradients`)

computed with ONE backward pass per batch of examples (the batch's target-token loss sum divided by ``|T_X|`` is
back-propagated and the batch gradients are added), in eval mode (no dropout). A gradient is a dict
``{parameter name: tensor}`` (``Gradients``).

LoRA. A LoRA layer computes ``W x + s B A x`` with ``delta W = s B A``; since ``W_eff = W + delta W``,
the gradient with respect to the effective update delta W is the base weight's gradient ``G = dL/dW``,
and by the chain rule ``dL/dB = s G A^T``, ``dL/dA = s B^T G``. :func:`lora_task_gradients` returns both the
adapter gradients and G (keyed by base weight name, like :func:`forgetting.models.lora.effective_update`)
from one backward pass per batch, so alignment can be read in adapter space and in weight space.

Everything here is also importable from :mod:`forgetting.mechanisms.gradients`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from forgetting.mechanisms.gradient_units import _strip_peft
from forgetting.mechanisms.landscape import select_parameters
from forgetting.models.lora import lora_layers, lora_parameters
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples
from forgetting.train.loop import target_loss_sum

__all__ = ["lora_task_gradients", "task_gradients", "task_loss"]

Gradients = dict[str, torch.Tensor]


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
    adapter_names = list(lora_parameters(model))
    base = _lora_base_weights(model)
    grads, loss = _gradients_and_loss(
        model, examples, batch_size=batch_size, params=_resolve_params(model, adapter_names + list(base))
    )
    return {n: grads[n] for n in adapter_names}, {base[n]: grads[n] for n in base}, loss
