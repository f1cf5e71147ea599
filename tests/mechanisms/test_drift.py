"""Known answers for forgetting.mechanisms.drift: linear CKA of one pair, CKA layer by layer, and the
stable import path of everything the drift modules define."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.mechanisms import cka_minibatch, drift, hsic, readouts
from forgetting.mechanisms.drift import (
    ConstantRepresentationError,
    cka_by_layer,
    intermediate_layers,
    linear_cka,
)
from tests.mechanisms._cka_reference import ref_cka, related_pair

# shapes that exercise the feature form (n >> p), the Gram form (p >> n) and in between
SHAPES = [(40, 5, 3), (12, 80, 60), (30, 30, 25)]


@pytest.mark.parametrize("n,p1,p2", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_definition(n: int, p1: int, p2: int, debiased: bool) -> None:
    rng = np.random.default_rng(n + p1 + p2)
    X, Y = related_pair(rng, n, p1, p2)
    want = ref_cka(X, Y, debiased)
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(want, rel=1e-9, abs=1e-12)
    # torch inputs (float32) give the same within float32 input rounding
    got = linear_cka(torch.tensor(X, dtype=torch.float32), torch.tensor(Y, dtype=torch.float32), debiased)
    assert got == pytest.approx(want, abs=1e-5)



@pytest.mark.parametrize("debiased", [False, True])
def test_cka_invariances_give_one(debiased: bool) -> None:
    """Y = s X Q + c (orthogonal Q, scale s, shift c) has CKA exactly 1 with X."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(50, 8))
    Q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    Y = 3.7 * X @ Q + rng.normal(size=(1, 8)) * 10
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(1.0, abs=1e-10)
    # also when Y has more columns (an isometric embedding of X into a larger space)
    Q2, _ = np.linalg.qr(rng.normal(size=(20, 8)))  # (20, 8) with orthonormal columns
    assert linear_cka(X, 0.1 * X @ Q2.T - 2.0, debiased=debiased) == pytest.approx(1.0, abs=1e-10)


def test_cka_symmetric_and_in_unit_interval() -> None:
    rng = np.random.default_rng(4)
    X, Y = related_pair(rng, 30, 6, 4)
    a, b = linear_cka(X, Y), linear_cka(Y, X)
    assert a == pytest.approx(b, rel=1e-12)
    assert 0.0 <= a <= 1.0


def test_debiased_needs_four_examples() -> None:
    X = np.arange(6.0).reshape(3, 2) ** 2
    with pytest.raises(ValueError, match=r"X.*n >= 4.*n = 3"):
        linear_cka(X, X, debiased=True)
    assert linear_cka(X, X) == pytest.approx(1.0)  # the biased form is defined for n = 3


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="X, Y: need the same number"):
        linear_cka(np.ones((5, 2)), np.ones((6, 2)))
    with pytest.raises(ValueError, match="X: expected a 2-D"):
        linear_cka(np.ones(5), np.ones((5, 2)))
    with pytest.raises(ValueError, match="on_constant"):
        linear_cka(np.eye(5), np.eye(5), on_constant="zero")
    with pytest.raises(ValueError, match="Y: contains NaN"):
        linear_cka(np.eye(5), np.full((5, 2), np.nan))


@pytest.mark.parametrize("debiased", [False, True])
def test_constant_representation_warns_or_raises(debiased: bool) -> None:
    rng = np.random.default_rng(5)
    X = np.tile(rng.normal(size=(1, 4)), (10, 1))  # every example identical (e.g. last-token embeddings)
    Y = rng.normal(size=(10, 3))
    with pytest.warns(RuntimeWarning, match="X is constant"):
        assert np.isnan(linear_cka(X, Y, debiased=debiased))
    with pytest.warns(RuntimeWarning, match="Y is constant"):
        assert np.isnan(linear_cka(Y, X, debiased=debiased))
    with pytest.warns(RuntimeWarning, match="both inputs"):
        linear_cka(X, X, debiased=debiased)
    with pytest.raises(ConstantRepresentationError, match="X is constant"):
        linear_cka(X, Y, debiased=debiased, on_constant="raise")
    with pytest.raises(ValueError):  # ConstantRepresentationError is a ValueError
        linear_cka(np.zeros((10, 2)), Y, on_constant="raise")


def test_nearly_constant_but_varying_is_defined() -> None:
    rng = np.random.default_rng(6)
    X = 1000.0 + 1e-4 * rng.normal(size=(20, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-8)


# --------------------------------------------------------------------------------------------------
# cka_by_layer and intermediate_layers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("readout", ["last", "mean", "tokens"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_by_layer_matches_linear_cka(readout: str, debiased: bool) -> None:
    torch.manual_seed(1)
    B, S, d, L = 8, 6, 5, 3
    mask = torch.ones(B, S, dtype=torch.long)
    mask[::2, 4:] = 0
    ha = [torch.randn(B, S, d) for _ in range(L)]
    hb = [h + 0.5 * torch.randn(B, S, d) for h in ha]
    df = cka_by_layer(ha, hb, mask, debiased=debiased, readout=readout)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns[:4]) == ["layer", "cka", "readout", "n"]
    assert list(df["layer"]) == [0, 1, 2] and set(df["readout"]) == {readout}
    for layer in range(L):
        X = drift.readout_features(ha[layer].double(), mask, readout)  # cka_by_layer reads out in float64
        Y = drift.readout_features(hb[layer].double(), mask, readout)
        assert df["n"][layer] == X.shape[0]
        assert df["cka"][layer] == pytest.approx(linear_cka(X, Y, debiased), rel=1e-9)


def test_cka_by_layer_constant_layer_noted_not_warned() -> None:
    torch.manual_seed(2)
    B, S, d = 6, 4, 3
    emb = torch.randn(1, 1, d).expand(B, S, d).clone()  # e.g. every prompt ends with the same token
    ha = [emb, torch.randn(B, S, d)]
    hb = [emb.clone(), ha[1] * 2.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = cka_by_layer(ha, hb, readout="last")
    assert np.isnan(df["cka"][0]) and "both inputs are constant" in df["note"][0]
    assert df["cka"][1] == pytest.approx(1.0) and df["note"][1] == ""
    with pytest.raises(ValueError, match="readout"):
        cka_by_layer(ha, hb, readout="first")
    with pytest.raises(ValueError, match="n >= 4"):
        cka_by_layer([h[:3] for h in ha], [h[:3] for h in hb], debiased=True)
    with pytest.raises(ValueError, match="hiddens_a, hiddens_b"):
        cka_by_layer(ha, hb[:1])


def test_intermediate_layers_drop_the_embedding_and_the_last_output() -> None:
    assert intermediate_layers([0, 1, 2, 3, 4]) == [1, 2, 3]
    assert intermediate_layers([4, 2, 0, 3, 1, 3]) == [1, 2, 3]  # unsorted, repeated
    assert intermediate_layers([0, 1]) == []


def test_drift_is_the_stable_path_of_its_parts() -> None:
    """Every public name of the modules drift is split into is importable from drift as the same
    object (one definition, no copies), and drift.__all__ lists them."""
    for part in (hsic, cka_minibatch, readouts):
        for name in part.__all__:
            assert name in drift.__all__, name
            assert getattr(drift, name) is getattr(part, name), name
    assert all(hasattr(drift, name) for name in drift.__all__)


def _kornblith_feature_cka(X: np.ndarray, Y: np.ndarray, debiased: bool) -> float:
    """The feature-space linear CKA of Kornblith et al.'s reference notebook (the form Nguyen, Raghu &
    Kornblith 2021 use for the debiased estimator), written independently of ``ref_cka``."""

    def helper(xty, rows_x, rows_y, norm_x, norm_y, n):
        return xty - n / (n - 2.0) * rows_x.dot(rows_y) + norm_x * norm_y / ((n - 1) * (n - 2))

    X, Y = X - X.mean(0, keepdims=True), Y - Y.mean(0, keepdims=True)
    dot = np.linalg.norm(X.T @ Y) ** 2
    nx, ny = np.linalg.norm(X.T @ X), np.linalg.norm(Y.T @ Y)
    if debiased:
        n = X.shape[0]
        rx, ry = np.einsum("ij,ij->i", X, X), np.einsum("ij,ij->i", Y, Y)
        sx, sy = rx.sum(), ry.sum()
        dot = helper(dot, rx, ry, sx, sy, n)
        nx = np.sqrt(helper(nx**2, rx, rx, sx, sx, n))
        ny = np.sqrt(helper(ny**2, ry, ry, sy, sy, n))
    return float(dot / (nx * ny))


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_the_reference_notebook(debiased: bool) -> None:
    X, Y = related_pair(np.random.default_rng(7), 60, 128, 96)
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(_kornblith_feature_cka(X, Y, debiased), rel=1e-9)


def test_independent_gaussians_debiased_is_near_zero_biased_is_inflated() -> None:
    # n = 60 examples < d = 128 features: the drift report's regime
    biased, debiased = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        X, Y = rng.normal(size=(60, 128)), rng.normal(size=(60, 128))
        biased.append(linear_cka(X, Y))
        debiased.append(linear_cka(X, Y, debiased=True))
    assert 0.6 < np.mean(biased) < 0.75  # about 0.68 for unrelated inputs
    assert abs(np.mean(debiased)) < 0.03 and max(map(abs, debiased)) < 0.12  # sd about 0.026 per draw


def test_cka_by_layer_defines_constant_layers_without_nan() -> None:
    rng = np.random.default_rng(8)
    varying = [torch.tensor(rng.normal(size=(10, 3, 4))) for _ in range(2)]
    constant = torch.ones(10, 3, 4)
    a = [constant, constant, varying[0]]
    b = [constant * 2.0, varying[1], varying[1]]
    for debiased in (False, True):
        df = cka_by_layer(a, b, debiased=debiased, readout="last", constant="define")
        assert not df.cka.isna().any()
        assert df.cka[0] == 1.0 and df.cka[1] == 0.0  # both constant: equal; one constant: nothing shared
        assert "both inputs are constant" in df.note[0] and "defined as 1" in df.note[0]
        assert "X is constant" in df.note[1] and "defined as 0" in df.note[1] and df.note[2] == ""
        plain = cka_by_layer(a, b, debiased=debiased, readout="last")
        assert plain.cka[:2].isna().all() and plain.cka[2] == pytest.approx(df.cka[2])
    with pytest.raises(ValueError, match="constant"):
        cka_by_layer(a, b, constant="zero")
