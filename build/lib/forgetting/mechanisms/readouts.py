"""Readouts of a causal LM's hidden states (..., batch, seq, d) with an attention mask (batch, seq).

One example per sequence (n = batch) or per token (n = number of non-padding tokens)::

    "last":    h[b, t_b],  t_b = max {t : mask[b, t] = 1}    (right or left padding)
    "mean":    sum_t mask[b, t] h[b, t] / sum_t mask[b, t]
    "tokens":  every h[b, t] with mask[b, t] = 1, row-major (batch, then position)

Leading dimensions (e.g. layers) are kept. The functions are imported, documented and used from
:mod:`forgetting.mechanisms.drift` (:func:`forgetting.mechanisms.drift.readout_features` and the three
readouts it dispatches to); its module docstring says which readout suits what.
"""

from __future__ import annotations

import torch

__all__ = ["READOUTS", "last_token_features", "masked_token_features", "mean_token_features", "readout_features"]

#: The readouts of ``(batch, seq, d)`` hidden states (module docstring).
READOUTS = ("last", "mean", "tokens")


def _check_hidden_mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """The (batch, seq) bool mask for ``hidden`` (..., batch, seq, d): all True when ``attention_mask`` is
    None; raises ValueError for a wrong shape or a row without any non-padding token."""
    if hidden.ndim < 3:
        raise ValueError(f"hidden: expected (..., batch, seq, d), got shape {tuple(hidden.shape)}")
    B, S = hidden.shape[-3], hidden.shape[-2]
    if attention_mask is None:
        return torch.ones(B, S, dtype=torch.bool, device=hidden.device)
    mask = torch.as_tensor(attention_mask, device=hidden.device)
    if tuple(mask.shape) != (B, S):
        raise ValueError(f"attention_mask: expected shape (batch, seq) = {(B, S)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask: rows {empty[:5]} have no non-padding token")
    return mask


def masked_token_features(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every non-padding token as one example: (..., batch, seq, d) -> (..., n_tokens, d).

    Tokens are taken in row-major (batch, then position) order; leading dims (e.g. layers) are kept.
    """
    hidden = torch.as_tensor(hidden)
    mask = _check_hidden_mask(hidden, attention_mask)
    return hidden[..., mask, :]


def last_token_features(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last non-padding token of each sequence: (..., batch, seq, d) -> (..., batch, d).

    Works for right and left padding: position = the largest index with mask 1 in the row.
    """
    hidden = torch.as_tensor(hidden)
    mask = _check_hidden_mask(hidden, attention_mask)
    S = mask.shape[-1]
    pos = torch.arange(S, device=mask.device).expand_as(mask)
    last = torch.where(mask, pos, -1).amax(-1)  # (batch,)
    return hidden[..., torch.arange(mask.shape[0], device=mask.device), last, :]


def mean_token_features(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over non-padding tokens of each sequence: (..., batch, seq, d) -> (..., batch, d)."""
    hidden = torch.as_tensor(hidden)
    mask = _check_hidden_mask(hidden, attention_mask)
    w = mask.to(hidden.dtype)
    return (hidden * w[..., None]).sum(-2) / w.sum(-1, keepdim=True)


def readout_features(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, readout: str = "last"
) -> torch.Tensor:
    """Dispatch to the readout named ``readout`` (one of :data:`READOUTS`)."""
    if readout == "last":
        return last_token_features(hidden, attention_mask)
    if readout == "mean":
        return mean_token_features(hidden, attention_mask)
    if readout == "tokens":
        return masked_token_features(hidden, attention_mask)
    raise ValueError(f"readout: expected one of {READOUTS}, got {readout!r}")

