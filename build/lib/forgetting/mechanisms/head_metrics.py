"""Per-head disruption between two snapshots: how much each head's attention, output, weights and
importance changed, measured on the old task's data (two :class:`~forgetting.mechanisms.head_records.HeadRecord` of the same examples).

Notation as in ``forgetting.mechanisms.head_records``: ``L`` layers, ``H`` query heads, ``N`` read rows
over ``T`` key positions, ``d`` head dim; ``p``, ``q`` an attention row before and after.

**Masking.** A key counts when it is a real token at or before the query; the weights of each row are
renormalised over those keys (a no-op up to rounding, because masked keys get ~0 weight). Padding
therefore changes nothing (tested by padding an example further).

**Averaging** (``mean_rows``): first over the rows of each example, then over examples,
``mean_rows(v) = (1/n) sum_e (1/|R_e|) sum_{r in R_e} v_r`` (:meth:`~forgetting.mechanisms.head_records.HeadRecord.row_weights`).

**Metrics** (:func:`head_disruption`, one row per layer, head, metric):

- ``js_divergence``: Jensen-Shannon divergence of the attention rows, in bits (0 = identical, 1 = disjoint
  supports): ``JS(p, q) = 1/2 KL(p || m) + 1/2 KL(q || m)``, ``m = (p + q)/2``,
  ``KL(p || m) = sum_k p_k log2(p_k / m_k)``; ``mean_rows`` over rows.
- ``entropy_change``: ``mean_rows(H(q)) - mean_rows(H(p))`` with ``H(p) = -sum_k p_k log2 p_k`` (bits;
  positive = the head attends more diffusely after). ``entropy_before``/``entropy_after`` are reported too.
- ``output_similarity``: ``mean_rows(cos(z_before_r, z_after_r))``, ``cos(a, b) = a.b / (|a| |b|)`` (1 when
  both are zero): the head writes the same vector for the same token. ``output_cka``: linear CKA
  (:mod:`forgetting.mechanisms.drift`, biased form) between the ``(N', d)`` output matrices over all
  kept rows, ``CKA = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y))`` (token-weighted; invariant to rotations
  of the head's output space, so it asks whether the same *information* is there rather than the same
  vector).
- ``weight_change``: ``sqrt(sum_P ||dW_P||_F^2 / sum_P ||W_P||_F^2)`` over the head's slices
  ``P in {q, k, v, o}`` (k, v through its key/value head), ``dW = W_after - W_before``; per projection
  ``weight_change_q = ||dW_q|| / ||W_q||`` etc.
- ``ablation_effect_change``: ``e_after - e_before`` with ``e = loss(head ablated) - loss(intact)``, the
  old task's loss (mean nats per target token) increase when the head is ablated in that snapshot.
  ``ablation_effect_before``/``_after`` are reported too.

Everything here is also importable from :mod:`forgetting.mechanisms.heads`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from forgetting.mechanisms.head_records import HeadRecord
from forgetting.mechanisms.hsic import hsic_terms
from forgetting.models.geometry import KINDS, AttentionGeometry

__all__ = ["attention_entropy", "head_disruption", "js_divergence", "weight_change"]

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
    ``dW = after - before``, norms of the before weights. Inputs as :func:`~forgetting.mechanisms.head_records.head_weights` returns them.
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

