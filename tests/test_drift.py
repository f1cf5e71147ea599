"""Known answers for forgetting.mechanisms.drift (linear CKA, minibatch CKA, readouts)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from forgetting.mechanisms import drift
from forgetting.mechanisms.drift import (
    ConstantRepresentationError,
    MinibatchCKA,
    cka_by_layer,
    last_token_features,
    linear_cka,
    masked_token_features,
    mean_token_features,
)



# --------------------------------------------------------------------------------------------------
# references written out from the definitions with explicit n x n Gram matrices
# --------------------------------------------------------------------------------------------------


def ref_hsic0(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_0 = tr(K H L H) / (n - 1)^2, H = I - 11^T / n (Gretton et al. 2005)."""
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def ref_hsic1(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012), with K~, L~ the Gram matrices with zeroed diagonals:

    [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))
    """
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    return float(
        (
            np.trace(Kt @ Lt)
            + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
        )
        / (n * (n - 3))
    )


def ref_cka(X: np.ndarray, Y: np.ndarray, debiased: bool) -> float:
    K, L = X @ X.T, Y @ Y.T
    h = ref_hsic1 if debiased else ref_hsic0
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def related_pair(rng: np.random.Generator, n: int, p1: int, p2: int) -> tuple[np.ndarray, np.ndarray]:
    X = rng.normal(size=(n, p1)) + 3.0  # not centred on purpose
    Y = np.tanh(X @ rng.normal(size=(p1, p2)) / np.sqrt(p1)) + 0.5 * rng.normal(size=(n, p2)) - 1.0
    return X, Y


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
def test_feature_and_gram_forms_agree(monkeypatch: pytest.MonkeyPatch, debiased: bool) -> None:
    rng = np.random.default_rng(1)
    X, Y = related_pair(rng, 20, 7, 9)
    Xt, Yt = torch.tensor(X)[None], torch.tensor(Y)[None]
    monkeypatch.setattr(drift, "_gram_is_cheaper", lambda *a: True)
    gram = [t.item() for t in drift.hsic_terms(Xt, Yt, debiased=debiased)]
    monkeypatch.setattr(drift, "_gram_is_cheaper", lambda *a: False)
    feat = [t.item() for t in drift.hsic_terms(Xt, Yt, debiased=debiased)]
    np.testing.assert_allclose(gram, feat, rtol=1e-10)
    if debiased:  # the HSIC terms themselves are the unbiased estimator, exactly
        np.testing.assert_allclose(feat[0], ref_hsic1(X @ X.T, Y @ Y.T), rtol=1e-10)


def test_u_centering_identity() -> None:
    """HSIC_1(K, L) = <U(K), U(L)> / (n (n - 3)), the form MinibatchCKA accumulates."""
    rng = np.random.default_rng(2)
    X, Y = related_pair(rng, 9, 4, 6)
    K, L = X @ X.T, Y @ Y.T
    Ku = drift.u_centered_gram(torch.tensor(K)).numpy()
    Lu = drift.u_centered_gram(torch.tensor(L)).numpy()
    assert (Ku * Lu).sum() / (9 * 6) == pytest.approx(ref_hsic1(K, L), rel=1e-10)


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
# minibatch CKA
# --------------------------------------------------------------------------------------------------


def test_minibatch_matches_hand_computed_mean_hsic() -> None:
    rng = np.random.default_rng(7)
    batches = [[related_pair(rng, 8, 5, 3) for _ in range(2)] for _ in range(3)]  # batch -> layer -> (X, Y)
    acc = MinibatchCKA(pairs="all", debiased=True)
    diag = MinibatchCKA(pairs="diagonal", debiased=True)
    for layers in batches:
        acc.update([x for x, _ in layers], [y for _, y in layers])
        diag.update([x for x, _ in layers], [y for _, y in layers])
    got = acc.compute()
    want = np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            kl = np.mean([ref_hsic1(b[i][0] @ b[i][0].T, b[j][1] @ b[j][1].T) for b in batches])
            kk = np.mean([ref_hsic1(b[i][0] @ b[i][0].T, b[i][0] @ b[i][0].T) for b in batches])
            ll = np.mean([ref_hsic1(b[j][1] @ b[j][1].T, b[j][1] @ b[j][1].T) for b in batches])
            want[i, j] = kl / np.sqrt(kk * ll)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(diag.compute(), np.diag(want), rtol=1e-10)
    assert acc.n_batches == 3 and acc.n_examples == 24


@pytest.mark.parametrize("debiased", [False, True])
def test_minibatch_one_batch_equals_full(debiased: bool) -> None:
    rng = np.random.default_rng(8)
    X, Y = related_pair(rng, 25, 6, 4)
    acc = MinibatchCKA(debiased=debiased)
    acc.update([X, torch.tensor(Y)], [Y, X])  # mixed numpy / torch inputs, different widths
    np.testing.assert_allclose(acc.compute(), [linear_cka(X, Y, debiased), linear_cka(Y, X, debiased)], rtol=1e-10)


def test_minibatch_converges_to_full_batch() -> None:
    """Mean unbiased HSIC over many small batches estimates the same population quantity."""
    rng = np.random.default_rng(9)
    X, Y = related_pair(rng, 8000, 4, 3)
    full = linear_cka(X, Y, debiased=True)
    acc = MinibatchCKA(debiased=True)
    for s in range(0, 8000, 50):
        acc.update([X[s : s + 50]], [Y[s : s + 50]])
    assert acc.compute()[0] == pytest.approx(full, abs=0.02)


def test_minibatch_constant_layer_is_nan_and_errors() -> None:
    rng = np.random.default_rng(10)
    acc = MinibatchCKA()
    for _ in range(2):
        X = rng.normal(size=(6, 3))
        acc.update([np.ones((6, 2)) * 5.0, X], [X, X])
    out = acc.compute()
    assert np.isnan(out[0]) and out[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n >= 4"):
        MinibatchCKA().update([np.eye(3)], [np.eye(3)])
    with pytest.raises(ValueError, match="as many layers"):
        MinibatchCKA().update([np.eye(5)], [np.eye(5), np.eye(5)])
    with pytest.raises(RuntimeError, match="no batch"):
        MinibatchCKA().compute()
    with pytest.raises(ValueError, match="pairs"):
        MinibatchCKA(pairs="upper")


def reference_minibatch_cka(batches_x, batches_y, pairs: str, debiased: bool) -> np.ndarray:
    """The straightforward algorithm (as MinibatchCKA was first written): per batch and layer, the
    float64 Gram matrix of the centred features, U-centred (debiased) or double-centred (biased), and
    every HSIC term as a Frobenius inner product, summed over batches."""
    lx, ly = len(batches_x[0]), len(batches_y[0])
    hxy, hxx, hyy = np.zeros((lx, ly)), np.zeros(lx), np.zeros(ly)
    for xs, ys in zip(batches_x, batches_y):
        n = xs[0].shape[0]

        def centred(f):
            f = np.asarray(f, dtype=np.float64).reshape(n, -1)
            fc = f - f.mean(0)
            K = torch.tensor(fc @ fc.T)
            if debiased:
                return drift.u_centered_gram(K).numpy(), n * (n - 3)
            H = np.eye(n) - 1.0 / n
            return H @ K.numpy() @ H, (n - 1) ** 2

        Ks = [centred(x) for x in xs]
        Ls = [centred(y) for y in ys]
        for i, (K, c) in enumerate(Ks):
            hxx[i] += (K * K).sum() / c
            for j, (L, _) in enumerate(Ls):
                hxy[i, j] += (K * L).sum() / c
        for j, (L, c) in enumerate(Ls):
            hyy[j] += (L * L).sum() / c
    out = hxy / np.sqrt(hxx[:, None] * hyy[None, :])
    return out if pairs == "all" else np.diag(out)


def hidden_like_batches(seed: int, sizes, widths, dtype=torch.float32, offset: float = 4.0):
    """Batches of layer features that look like residual-stream states: a shared random stream plus
    per-layer drift, a large common offset (the mean across examples is far from zero), float32."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for n in sizes:
        base = torch.randn(n, max(widths), generator=g, dtype=torch.float64)
        bx, by = [], []
        for p in widths:
            h = base[:, :p] + 0.3 * torch.randn(n, p, generator=g, dtype=torch.float64)
            h = h + offset * torch.randn(1, p, generator=g, dtype=torch.float64)
            bx.append(h.to(dtype))
            by.append((h + 0.5 * torch.randn(n, p, generator=g, dtype=torch.float64)).to(dtype))
            base = torch.tanh(base)
        xs.append(bx)
        ys.append(by)
    return xs, ys


@pytest.mark.parametrize("pairs", ["all", "diagonal"])
@pytest.mark.parametrize("debiased", [False, True])
def test_minibatch_matches_reference_algorithm(monkeypatch: pytest.MonkeyPatch, pairs: str, debiased: bool) -> None:
    """Old-vs-new parity: the batched, buffered computation equals the per-batch float64 reference,
    with varying batch sizes (the buffer is flushed when n changes), a buffer that fills up, and
    layers of different widths."""
    xs, ys = hidden_like_batches(11, [8, 8, 8, 12, 8, 8], [6, 6, 9], dtype=torch.float64)
    want = reference_minibatch_cka(xs, ys, pairs, debiased)
    for pending in (MinibatchCKA.PENDING_BYTES, 2000):  # 2000 bytes: a flush every batch or two
        monkeypatch.setattr(MinibatchCKA, "PENDING_BYTES", pending)
        acc = MinibatchCKA(pairs=pairs, debiased=debiased)
        for x, y in zip(xs, ys):
            acc.update(x, y)
        np.testing.assert_allclose(acc.compute(), want, rtol=1e-10)
        assert acc.n_batches == 6 and acc.n_examples == 52


@pytest.mark.parametrize("offset", [0.3, 30.0])
@pytest.mark.parametrize("pairs", ["all", "diagonal"])
@pytest.mark.parametrize("debiased", [False, True])
def test_minibatch_float32_path_matches_float64(pairs: str, debiased: bool, offset: float) -> None:
    """float32 inputs are centred and multiplied in float32: CKA within 1e-6 of the float64 path (the
    benchmark bar is 1e-4), for many narrow batches (p >> n), one wide batch (n >> p), a small common
    offset (wide layers: Gram matrices of the features as given, centred afterwards) and a large one
    (mean far above the spread: those layers are centred before the product)."""
    # p >> n^2 (U-centred before the inner products), p ~ n^2 and n >> p (inner products of the
    # zero-diagonal Grams with row-sum corrections)
    for sizes, widths in (([8] * 4, [2048, 2048]), ([16] * 8, [512, 512, 512]), ([300], [32, 32, 32])):
        xs, ys = hidden_like_batches(12, sizes, widths, dtype=torch.float32, offset=offset)
        got = MinibatchCKA(pairs=pairs, debiased=debiased)
        ref = MinibatchCKA(pairs=pairs, debiased=debiased)
        for x, y in zip(xs, ys):
            got.update(x, y)
            ref.update([t.double() for t in x], [t.double() for t in y])  # float64: the exact path
        np.testing.assert_allclose(got.compute(), ref.compute(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            ref.compute(), reference_minibatch_cka(xs, ys, pairs, debiased), rtol=1e-9
        )


def test_minibatch_float32_constant_and_nearly_constant_layers() -> None:
    """In float32 a constant layer is still recognised (NaN, as in float64); a nearly constant one
    (centred norm 1e-6 of the norm) is redone in float64 and agrees with the float64 path; overflow of
    float32 squares falls back to float64 instead of raising; NaN input is named."""
    g = torch.Generator().manual_seed(13)
    n = 12
    X = torch.randn(n, 5, generator=g)
    const = (3.0 + torch.randn(1, 4, generator=g)).expand(n, 4).contiguous()
    near = 1000.0 + 1e-3 * torch.randn(n, 4, generator=g, dtype=torch.float64)
    huge = 1e20 * torch.randn(n, 3, generator=g)  # squares overflow float32
    xs = [const, near.float(), huge, X]
    ys = [X, X, X, X]
    acc32 = MinibatchCKA(pairs="all")
    acc64 = MinibatchCKA(pairs="all")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        acc32.update(xs, ys)
        acc64.update([t.double() for t in xs], [t.double() for t in ys])
        got, want = acc32.compute(), acc64.compute()
    assert np.isnan(got[0]).all() and np.isnan(want[0]).all()
    np.testing.assert_allclose(got[1:], want[1:], rtol=0, atol=1e-6)
    assert got[3, 3] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"ys\[1\]: contains NaN"):
        MinibatchCKA().update([X, X], [X, torch.full((n, 5), float("nan"))])
    wide = torch.randn(n, 40, generator=g)  # p >= n: the Gram matrix is centred after the product
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"ys\[1\]: contains NaN"):
            MinibatchCKA().update([wide, wide], [wide, wide.clone().fill_(bad)])


# --------------------------------------------------------------------------------------------------
# readouts and cka_by_layer
# --------------------------------------------------------------------------------------------------


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
