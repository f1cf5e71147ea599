"""What several mitigations share: checked options, a seeded memory of earlier tasks' examples, the
part of the model a parameter belongs to, and the loss of a batch for hooks that need a second pass.

Options are checked before any work starts (the factory of a method calls :func:`check_options`), and
every problem is named at once as ``finetune.mitigation.options.<key>: ...; allowed: ...``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

from forgetting.errors import SpecError
from forgetting.hooks import target_loss_sum
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples, concat_examples

#: ``{option: (default, check, what is allowed)}``; ``check(value) -> bool``.
OptionTable = dict[str, tuple[Any, Callable[[Any], bool], str]]

OPTIONS = "finetune.mitigation.options"


def check_options(method: str, options: dict[str, Any], table: OptionTable) -> dict[str, Any]:
    """``options`` with the defaults of ``table`` filled in; raises one :class:`~forgetting.errors.SpecError` naming every
    unknown key and every value ``table`` does not allow."""
    problems = [(key, f"unknown option of {method}; allowed: {', '.join(table) or 'none'}")
                for key in options if key not in table]
    out = {}
    for key, (default, check, allowed) in table.items():
        value = options.get(key, default)
        if key in options and not _safe(check, value):
            problems.append((key, f"{value!r} not allowed; allowed: {allowed}"))
        out[key] = value
    if len(problems) == 1:
        raise SpecError(f"{OPTIONS}.{problems[0][0]}", problems[0][1])
    if problems:
        raise SpecError(OPTIONS, f"{len(problems)} problems: " + "; ".join(f"{k}: {m}" for k, m in problems))
    return out


def _safe(check: Callable[[Any], bool], value: Any) -> bool:
    try:
        return bool(check(value))
    except (TypeError, ValueError):
        return False


def is_int(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def is_float(low: float, high: float, *, open_low: bool = False) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                      and (low < v if open_low else low <= v) and v <= high)


def check_strength(method: str, strength: float, high: float, meaning: str) -> None:
    """Refuse a strength above ``high`` (a share or a probability): ``strength`` is 0 to ``high``."""
    if strength > high:
        raise SpecError("finetune.mitigation.strength", f"{strength:g} not allowed for {method}; allowed: 0 to "
                                                         f"{high:g} ({meaning})")


def stage_generator(ctx_stage: int | None, salt: int = 0) -> torch.Generator:
    """A generator seeded from torch's current seed (the run seeds every stage with its stage seed
    before training it) and ``salt``: the same draws on every run of the same spec and stage, without
    consuming the global random stream the training uses."""
    return torch.Generator().manual_seed((torch.initial_seed() * 7919 + (ctx_stage or 0) * 131 + salt) % 2**63)


def memory(earlier: dict[str, EncodedExamples], share: float | None = None, size: int | None = None,
           generator: torch.Generator | None = None) -> EncodedExamples | None:
    """Examples of the earlier tasks: with ``share``, that share of each task's examples (at least one,
    a seeded sample); with ``size``, ``size`` examples drawn from all of them together; neither: all.
    ``None`` when there is no earlier task."""
    if not earlier:
        return None
    generator = generator or torch.Generator().manual_seed(0)
    parts = list(earlier.values())
    if share is not None:
        parts = [p.select(torch.randperm(len(p), generator=generator)[: max(1, round(share * len(p)))].sort().values)
                 for p in parts]
    pool = concat_examples(parts)
    if size is not None and size < len(pool):
        pool = pool.select(torch.randperm(len(pool), generator=generator)[:size].sort().values)
    return pool


def sample(pool: EncodedExamples, n: int, generator: torch.Generator) -> EncodedExamples:
    """``n`` rows of ``pool`` drawn without replacement (all of them when it has fewer)."""
    if n >= len(pool):
        return pool
    return pool.select(torch.randperm(len(pool), generator=generator)[:n])


def target_tokens(batch: EncodedExamples) -> int:
    """The number of scored positions of ``batch`` (target tokens and eos)."""
    return int((batch.labels[:, 1:] != IGNORE_INDEX).sum())


def mean_target_loss(model, batch: EncodedExamples) -> torch.Tensor:
    """The mean next-token cross-entropy over ``batch``'s target tokens (and eos), as the training loop scores it."""
    return target_loss_sum(model, batch, next(model.parameters()).device) / target_tokens(batch)


_LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """The transformer layer a parameter name belongs to (``...layers.3...`` -> 3), ``None`` outside layers."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def part_of(name: str) -> str:
    """``"attention"``, ``"mlp"`` (dense MLP, experts, router), ``"embedding"`` or ``"other"`` (norms,
    the output head) for a parameter name of a Llama-style model (LoRA's wrapped names included)."""
    if "embed_tokens" in name or "wte" in name or "embed_in" in name:
        return "embedding"
    if layer_of(name) is None:
        return "other"
    if any(k in name for k in ("self_attn", ".attn.", ".attention.")):
        return "attention"
    if any(k in name for k in (".mlp.", "feed_forward", "experts", "router")):
        return "mlp"
    return "other"
