"""Known answers for forgetting.mechanisms.readouts: last / mean / every non-padding token."""

from __future__ import annotations

import pytest
import torch

from forgetting.mechanisms.readouts import (
    READOUTS,
    last_token_features,
    masked_token_features,
    mean_token_features,
    readout_features,
)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])  # right, none, both sides
    return hidden, mask


def test_readouts() -> None:
    hidden, mask = padded_batch()
    toks = masked_token_features(hidden, mask)
    assert toks.shape == (10, 4)
    torch.testing.assert_close(toks[:3], hidden[0, :3])
    torch.testing.assert_close(toks[-2:], hidden[2, 2:4])
    last = last_token_features(hidden, mask)
    torch.testing.assert_close(last, torch.stack([hidden[0, 2], hidden[1, 4], hidden[2, 3]]))
    mean = mean_token_features(hidden, mask)
    torch.testing.assert_close(mean[2], hidden[2, 2:4].mean(0))
    # leading (layer) dimensions are kept
    assert last_token_features(torch.stack([hidden, hidden]), mask).shape == (2, 3, 4)
    assert masked_token_features(hidden).shape == (15, 4)
    with pytest.raises(ValueError, match="attention_mask: rows \\[0\\]"):
        last_token_features(hidden, torch.zeros(3, 5).index_fill_(0, torch.tensor([1, 2]), 1))
    with pytest.raises(ValueError, match="attention_mask: expected shape"):
        last_token_features(hidden, torch.ones(3, 4))



def test_readout_features_dispatches_by_name() -> None:
    hidden, mask = padded_batch()
    fns = {"last": last_token_features, "mean": mean_token_features, "tokens": masked_token_features}
    assert set(READOUTS) == set(fns)
    for name, fn in fns.items():
        assert torch.equal(readout_features(hidden, mask, name), fn(hidden, mask))
    with pytest.raises(ValueError, match="readout: expected one of"):
        readout_features(hidden, mask, "first")
