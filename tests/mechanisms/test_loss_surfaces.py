"""Known answers for forgetting.mechanisms.loss_surfaces: filter-normalised directions, losses on the
line between two snapshots and on the plane through three (the model restored afterwards)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from forgetting.mechanisms.loss_surfaces import (
    _assign_flat,
    _flat,
    filter_normalized_direction,
    interpolate_1d,
    plane_2d,
    plane_coordinates,
)


def test_filter_normalized_direction() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.ModuleDict({"lin": nn.Linear(6, 4), "emb": nn.Embedding(5, 3), "conv": Conv1D(7, 3)})
    d = filter_normalized_direction(model, seed=1)
    w = model["lin"].weight.detach()
    torch.testing.assert_close(d["lin.weight"].norm(dim=1), w.norm(dim=1))
    torch.testing.assert_close(d["emb.weight"].norm(dim=1), model["emb"].weight.detach().norm(dim=1))
    # Conv1D stores (in, out): one filter per output column
    torch.testing.assert_close(d["conv.weight"].norm(dim=0), model["conv"].weight.detach().norm(dim=0))
    assert torch.count_nonzero(d["lin.bias"]) == 0 and d["lin.bias"].shape == (4,)
    # deterministic per seed, different across seeds, "norm" for 1-D params
    d2 = filter_normalized_direction(dict(model.named_parameters()), seed=1)
    assert torch.equal(d["lin.weight"], d2["lin.weight"])
    assert not torch.equal(d["lin.weight"], filter_normalized_direction(model, seed=2)["lin.weight"])
    dn = filter_normalized_direction(model.named_parameters(), seed=1, one_d="norm")
    assert float(dn["lin.bias"].norm()) == pytest.approx(float(model["lin"].bias.detach().norm()), rel=1e-6)


def linear_problem():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x = torch.randn(10, 3)
    target_a, target_b = torch.randn(10, 2), torch.randn(10, 2)
    losses = {
        "A": lambda: nn.functional.mse_loss(model(x), target_a),
        "B": lambda: nn.functional.mse_loss(model(x), target_b),
    }
    snap = lambda: {n: p.detach().clone() for n, p in model.named_parameters()}  # noqa: E731
    theta_a = snap()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    theta_b = snap()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    theta_c = snap()  # the model currently holds theta_c
    return model, losses, theta_a, theta_b, theta_c


def loss_at(model, theta, fn) -> float:
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.load_state_dict(theta, strict=False)
    with torch.no_grad():
        out = float(fn())
    model.load_state_dict(saved)
    return out


def test_interpolate_1d_endpoints_and_restore() -> None:
    model, losses, theta_a, theta_b, theta_c = linear_problem()
    model.train()
    df = interpolate_1d(model, theta_a, theta_b, losses, alphas=[0.0, 0.5, 1.0])
    assert isinstance(df, pd.DataFrame) and list(df.columns) == ["alpha", "task", "loss"] and len(df) == 6
    at = lambda a, t: float(df[(df.alpha == a) & (df.task == t)].loss.iloc[0])  # noqa: E731
    assert at(0.0, "A") == pytest.approx(loss_at(model, theta_a, losses["A"]), rel=1e-6)
    assert at(1.0, "B") == pytest.approx(loss_at(model, theta_b, losses["B"]), rel=1e-6)
    mid = {n: 0.5 * (theta_a[n] + theta_b[n]) for n in theta_a}
    assert at(0.5, "A") == pytest.approx(loss_at(model, mid, losses["A"]), rel=1e-6)
    for n, p in model.named_parameters():  # weights and mode restored
        assert torch.equal(p.detach(), theta_c[n])
    assert model.training

    calls = []

    def failing():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return losses["A"]()

    with pytest.raises(RuntimeError, match="boom"):
        interpolate_1d(model, theta_a, theta_b, {"A": failing}, alphas=[0.0, 1.0])
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), theta_c[n])
    with pytest.raises(ValueError, match="theta_a.*not a parameter"):
        interpolate_1d(model, {"nope": torch.zeros(1)}, {"nope": torch.zeros(1)}, losses, [0.0])


def test_plane_2d_passes_through_the_three_snapshots() -> None:
    model, losses, theta_a, theta_b, theta_c = linear_problem()
    pts = plane_coordinates(theta_c, theta_a, theta_b)["points"]
    assert pts["origin"] == (0.0, 0.0) and pts["a"][1] == 0.0 and pts["b"][1] > 0
    dist_a = float(torch.cat([(theta_a[n] - theta_c[n]).reshape(-1) for n in theta_c]).norm())
    assert pts["a"][0] == pytest.approx(dist_a, rel=1e-6)
    xs = [0.0, pts["a"][0], pts["b"][0]]
    ys = [0.0, pts["b"][1]]
    df = plane_2d(model, theta_c, theta_a, theta_b, losses, grid=(xs, ys))
    assert list(df.columns) == ["x", "y", "task", "loss"] and len(df) == 3 * 2 * 2
    assert df.attrs["points"] == pts

    def at(x, y, t):
        sel = df[(df.x == x) & (df.y == y) & (df.task == t)]
        return float(sel.loss.iloc[0])

    assert at(0.0, 0.0, "A") == pytest.approx(loss_at(model, theta_c, losses["A"]), rel=1e-5)
    assert at(pts["a"][0], 0.0, "A") == pytest.approx(loss_at(model, theta_a, losses["A"]), rel=1e-5)
    assert at(pts["b"][0], pts["b"][1], "B") == pytest.approx(loss_at(model, theta_b, losses["B"]), rel=1e-5)
    auto = plane_2d(model, theta_c, theta_a, theta_b, losses, grid=4)
    assert len(auto) == 4 * 4 * 2
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), theta_c[n])
    with pytest.raises(ValueError, match="point_b: lies on the line"):
        plane_coordinates(theta_c, theta_a, {n: 2 * theta_a[n] - theta_c[n] for n in theta_c})


def test_flat_and_assign_flat_round_trip() -> None:
    model = nn.Linear(3, 2)
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = list(theta)
    flat = _flat(theta, names)
    assert flat.dtype == torch.float64 and flat.shape == (8,)
    targets = dict(model.named_parameters())
    _assign_flat(targets, names, flat + 1.0)
    for n in names:
        torch.testing.assert_close(targets[n].detach(), theta[n] + 1.0)
    assert model.weight.dtype == torch.float32  # cast back to each target's dtype
