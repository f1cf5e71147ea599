"""Checkers for chapter 00 (the introduction): the parameters of one decoder layer from a model's config,
which key/value head a query head reads under grouped-query attention, and BWT of a small R by hand.

>>> from forgetting.exercises.intro import check_layer_parameters
>>> check_layer_parameters(lambda config: ...)          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from forgetting.exercises import ExerciseFeedback, reader_number
from forgetting.metrics import summarize


def config_cases() -> list:
    """Llama configs where the usual slips give different counts: grouped-query attention (fewer key/value
    heads than query heads), a head size that is not ``hidden_size / num_attention_heads``, and an MLP
    width that is not a multiple of the hidden size."""
    from transformers import LlamaConfig

    return [
        LlamaConfig(hidden_size=128, num_attention_heads=8, num_key_value_heads=4, intermediate_size=352,
                    num_hidden_layers=2, vocab_size=100),
        LlamaConfig(hidden_size=96, num_attention_heads=6, num_key_value_heads=2, intermediate_size=200,
                    num_hidden_layers=1, vocab_size=50),
        LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=1, intermediate_size=160, head_dim=32,
                    num_hidden_layers=1, vocab_size=50),
    ]


def layer_parameters(config) -> int:
    """The parameters of one decoder layer of ``config``, counted on a real ``LlamaDecoderLayer``."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    return sum(p.numel() for p in LlamaDecoderLayer(config, layer_idx=0).parameters())


def check_layer_parameters(fn: Callable) -> str:
    """Check ``fn(config) -> int``: the number of parameters of one decoder layer of a Llama-style model:
    q and o projections ``d x (H d_h)``, k and v ``d x (K d_h)`` (K key/value heads), a SwiGLU MLP of three
    ``d x d_ff`` matrices, and two RMSNorm weight vectors of size ``d``; no biases."""
    for config in config_cases():
        want = layer_parameters(config)
        got = reader_number(fn(config), "a number of parameters")
        if got == want:
            continue
        d, H, K, f = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.intermediate_size
        dh = getattr(config, "head_dim", None) or d // H
        attention = 2 * d * H * dh + 2 * d * K * dh
        where = f"(hidden {d}, {H} query heads, {K} key/value heads, head size {dh}, MLP {f})"
        if got == 4 * d * H * dh + 3 * d * f + 2 * d:
            raise ExerciseFeedback(f"you counted k_proj and v_proj as large as q_proj {where}: with grouped-query "
                                   "attention they have num_key_value_heads * head_dim outputs, not num_attention_heads * head_dim")
        if got == attention + 3 * d * f:
            raise ExerciseFeedback(f"{where}: add the two RMSNorm weights (input_layernorm and post_attention_layernorm), "
                                   "d parameters each")
        if got == attention + 2 * d * f + 2 * d:
            raise ExerciseFeedback(f"{where}: the SwiGLU MLP has THREE matrices, gate_proj and up_proj (d -> d_ff) and "
                                   "down_proj (d_ff -> d)")
        if got == 4 * d * d + 2 * d * K * dh + 3 * d * f + 2 * d or got == 2 * d * d + 2 * d * K * (d // H) + 3 * d * f + 2 * d:
            raise ExerciseFeedback(f"{where}: the head size is config.head_dim, which need not be hidden_size / num_heads")
        raise ExerciseFeedback(f"{where} one layer has {want:,} parameters, your function gave {got:,.0f}. Count the "
                               "four attention projections, the three MLP matrices and the two norms; check with "
                               "sum(p.numel() for p in model.model.layers[0].parameters()).")
    return "Correct: attention (with grouped k/v), a three-matrix SwiGLU MLP and two norms, no biases."


def _kv_of_query(n_heads: int, n_kv: int) -> list[int]:
    """Which key/value head each query head reads, as transformers' ``repeat_kv`` lays them out."""
    from transformers.models.llama.modeling_llama import repeat_kv

    kv = torch.arange(n_kv, dtype=torch.float32).view(1, n_kv, 1, 1)
    return [int(v) for v in repeat_kv(kv, n_heads // n_kv).view(-1)]


def check_kv_head(fn: Callable[[int, int, int], int]) -> str:
    """Check ``fn(query_head, n_heads, n_kv_heads) -> int``: the key/value head that query head ``query_head``
    reads under grouped-query attention (``n_heads / n_kv_heads`` consecutive query heads share one)."""
    for n_heads, n_kv in [(8, 4), (12, 3), (8, 1), (6, 6)]:
        want = _kv_of_query(n_heads, n_kv)
        got = [int(reader_number(fn(q, n_heads, n_kv), "a head index")) for q in range(n_heads)]
        if got == want:
            continue
        if got == [q % n_kv for q in range(n_heads)]:
            raise ExerciseFeedback(f"with {n_heads} query heads and {n_kv} key/value heads you interleaved them (q % "
                                   f"{n_kv}); the group size is {n_heads // n_kv} and consecutive query heads share a "
                                   f"key/value head: query head q reads q // {n_heads // n_kv}")
        raise ExerciseFeedback(f"with {n_heads} query heads and {n_kv} key/value heads query heads 0..{n_heads - 1} read "
                               f"{want}; yours gave {got}. The group size is n_heads // n_kv_heads.")
    return "Correct: query head q reads key/value head q // (n_heads // n_kv_heads), as transformers' repeat_kv lays them out."


#: The performance matrix of the BWT exercise; rows are the model after tasks 1..3, columns tasks 1..3.
INTRO_R = np.array([[0.80, 0.10, 0.05], [0.50, 0.90, 0.20], [0.40, 0.70, 0.85]])


def check_intro_bwt(value) -> str:
    """Check a number: BWT of :data:`INTRO_R`, computed by hand."""
    want = summarize(INTRO_R)["bwt"]
    got = reader_number(value, "BWT of INTRO_R")
    if np.isclose(got, want):
        return (f"Correct: BWT = ((0.40 - 0.80) + (0.70 - 0.90)) / 2 = {want:.2f}; negative, so the later tasks "
                "made the model forget the earlier ones.")
    if np.isclose(got, -want):
        raise ExerciseFeedback("the sign is flipped: BWT is final minus just-learned, R[T,j] - R[j,j]; forgetting makes it negative")
    if np.isclose(got, np.mean(INTRO_R[-1] - np.diag(INTRO_R))):
        raise ExerciseFeedback("you included the last task, whose final score is its just-learned score (a difference of 0); "
                               "BWT averages over the first T - 1 tasks only")
    if np.isclose(got, np.sum(INTRO_R[-1, :2] - np.diag(INTRO_R)[:2])):
        raise ExerciseFeedback("that is the sum; divide by T - 1 = 2")
    if np.isclose(got, np.mean(INTRO_R[-1, :2] - INTRO_R[0, :2])):
        raise ExerciseFeedback("compare each task with the row right after it was learned (the diagonal), not the first row")
    raise ExerciseFeedback(f"BWT = (1 / (T - 1)) sum_j<T (R[T, j] - R[j, j]); with T = 3 that is the mean of two "
                           f"differences, final row minus diagonal. You gave {got:.4f}.")


__all__ = ["INTRO_R", "check_intro_bwt", "check_kv_head", "check_layer_parameters", "config_cases", "layer_parameters"]
