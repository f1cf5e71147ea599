"""Known answers for forgetting.mechanisms.cka_minibatch: MinibatchCKA against the definition, the
straightforward per-batch algorithm and linear_cka, its float32 path against float64, and each step
(Gram formation, constant layers, HSIC accumulation) on its own."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from forgetting.mechanisms import cka_minibatch as cm
from forgetting.mechanisms.drift import MinibatchCKA, linear_cka
from tests.mechanisms._cka_reference import (
    hidden_like_batches,
    ref_hsic0,
    ref_hsic1,
    related_pair,
    reference_minibatch_cka,
)


# --------------------------------------------------------------------------------------------------
# the accumulator
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
# the steps
# --------------------------------------------------------------------------------------------------


def test_layer_list_flattens_and_keeps_float32() -> None:
    f32 = np.ones((6, 2, 3), dtype=np.float32)
    mats = cm._layer_list([f32, torch.zeros(6, 4, dtype=torch.float16), [[1.0]] * 6], "xs")
    assert [tuple(m.shape) for m in mats] == [(6, 6), (6, 4), (6, 1)]
    assert [m.dtype for m in mats] == [torch.float32, torch.float16, torch.float64]
    assert cm._layer_list(torch.zeros(3, 6, 5), "ys")[2].shape == (6, 5)
    with pytest.raises(ValueError, match=r"xs\[1\]: expected \(n, ...\) with n = 6"):
        cm._layer_list([f32, np.ones((5, 2))], "xs")
    with pytest.raises(ValueError, match="ys: need at least one layer"):
        cm._layer_list([], "ys")


def test_wide_grams_equal_centring_first() -> None:
    """Centring K = X X^T after the product (H K H) gives the Gram matrix of the centred features, and
    the squared norm of the mean; a layer whose mean dominates (R^2 > 8) is redone centred first,
    bit for bit as _centred_gram_into."""
    g = torch.Generator().manual_seed(0)
    n, p = 8, 64
    small = torch.randn(n, p, generator=g) + 0.5 * torch.randn(1, p, generator=g)
    big = torch.randn(n, p, generator=g) + 20.0 * torch.randn(1, p, generator=g)  # R^2 ~ 8 * 400
    out = torch.empty(2, n, n)
    mu_sq = cm._wide_grams([small, big], out)
    for i, X in enumerate((small, big)):
        Xd = X.double()
        Xc = Xd - Xd.mean(0)
        torch.testing.assert_close(out[i].double(), Xc @ Xc.T, rtol=0, atol=1e-4 * float((Xc * Xc).sum()) / n)
        assert float(mu_sq[i]) == pytest.approx(float(Xd.mean(0).square().sum()), rel=1e-4)
    redone = torch.empty(n, n)
    cm._centred_gram_into(big, redone)
    assert torch.equal(out[1], redone)


def test_centred_grams_paths_agree_and_staging_is_reused() -> None:
    """One width: stacked and centred in one batched product; different widths: one product each;
    both equal (Xc Xc^T, ||mean||^2) per layer. The staging buffer is kept while the shape and dtype
    stay the same."""
    g = torch.Generator().manual_seed(1)
    same = [torch.randn(10, 4, generator=g, dtype=torch.float64) + 3.0 for _ in range(3)]
    mixed = [same[0], torch.randn(10, 7, generator=g, dtype=torch.float64)]
    staging = cm._Staging()
    for mats in (same, mixed):
        out = torch.empty(len(mats), 10, 10, dtype=torch.float64)
        mu_sq = cm._centred_grams(mats, torch.float64, out, staging)
        for i, X in enumerate(mats):
            Xc = X - X.mean(0)
            torch.testing.assert_close(out[i], Xc @ Xc.T, rtol=1e-12, atol=1e-12)
            assert float(mu_sq[i]) == pytest.approx(float(X.mean(0).square().sum()), rel=1e-12)
    first = staging.buf
    assert first is not None and tuple(first.shape) == (3, 10, 4)  # the mixed widths did not stage
    assert staging.get((3, 10, 4), torch.float64, first.device) is first
    assert staging.get((3, 10, 4), torch.float32, first.device) is not first


def test_constant_layers_zeroes_them_and_sends_nearly_constant_float32_to_float64() -> None:
    g = torch.Generator().manual_seed(2)
    n = 10
    varying = torch.randn(n, 3, generator=g)
    const = torch.full((n, 3), 7.0)
    near = 100.0 + 1e-3 * torch.randn(n, 3, generator=g)  # centred norm ~1e-5 of the norm
    for dtype in (torch.float64, torch.float32):
        mats = [m.to(dtype) for m in (varying, const)]
        G = torch.empty(2, n, n, dtype=dtype)
        mu_sq = cm._centred_grams(mats, dtype, G)
        assert cm._constant_layers(G, mu_sq, mats, lx=1).tolist() == [False, True]
        assert torch.count_nonzero(G[1]) == 0 and torch.count_nonzero(G[0]) > 0
    G = torch.empty(2, n, n)
    mats = [varying, near]
    assert cm._constant_layers(G, cm._centred_grams(mats, torch.float32, G), mats, lx=1) is None
    G64 = torch.empty(2, n, n, dtype=torch.float64)
    mats64 = [m.double() for m in mats]
    assert cm._constant_layers(G64, cm._centred_grams(mats64, torch.float64, G64), mats64, lx=1).tolist() == [
        False, False]
    bad = [varying, varying.clone().fill_(float("inf"))]
    with pytest.raises(ValueError, match=r"ys\[0\]: contains NaN"):
        cm._constant_layers(G, cm._centred_grams(bad, torch.float32, G), bad, lx=1)


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("pairs", ["all", "diagonal"])
def test_pending_hsic_is_the_sum_of_hsic_over_batches(debiased: bool, pairs: str) -> None:
    """_pending_hsic on B pending batches of centred Gram matrices: sum_b HSIC(K_b^i, L_b^j) with
    HSIC_1, or HSIC_0 (the (n - 1)^2-normalised biased estimator), for every pair."""
    rng = np.random.default_rng(3)
    B, n, lx, ly = 3, 9, 2, 2
    pairs_ = [[related_pair(rng, n, 4, 3) for _ in range(lx)] for _ in range(B)]  # batch -> layer -> (X, Y)
    xs = [[x for x, _ in batch] for batch in pairs_]
    ys = [[y for _, y in batch] for batch in pairs_]
    G = torch.empty(B, lx + ly, n, n, dtype=torch.float64)
    for b in range(B):
        mats = [torch.tensor(m) for m in xs[b] + ys[b]]
        cm._centred_grams(mats, torch.float64, G[b])
    hxy, hxx, hyy = cm._pending_hsic(G, lx, debiased, pairs)
    ref = ref_hsic1 if debiased else ref_hsic0
    K = [[x @ x.T for x in bx] for bx in xs]
    L = [[y @ y.T for y in by] for by in ys]
    want_xy = np.array([[sum(ref(K[b][i], L[b][j]) for b in range(B)) for j in range(ly)] for i in range(lx)])
    np.testing.assert_allclose(hxy.numpy(), want_xy if pairs == "all" else np.diag(want_xy), rtol=1e-10)
    np.testing.assert_allclose(hxx.numpy(), [sum(ref(K[b][i], K[b][i]) for b in range(B)) for i in range(lx)],
                               rtol=1e-10)
    np.testing.assert_allclose(hyy.numpy(), [sum(ref(L[b][j], L[b][j]) for b in range(B)) for j in range(ly)],
                               rtol=1e-10)


def test_self_terms_u_centre_when_the_diagonal_dominates() -> None:
    """Few examples, many features: ||K~||_F > 2 ||U(K)||_F, so the Gram matrices are U-centred in
    place (row sums then zero) and the self terms are ||U(K)||_F^2 = n (n - 3) HSIC_1(K, K)."""
    g = torch.Generator().manual_seed(4)
    n = 5
    X = torch.randn(n, 4000, generator=g, dtype=torch.float64)
    G = torch.empty(1, 1, n, n, dtype=torch.float64)
    cm._centred_grams([X], torch.float64, G[0])
    K = G[0, 0].clone()
    G.diagonal(dim1=-2, dim2=-1).zero_()
    c, c1, c2 = cm._hsic_constants(n, True)
    r, s, h = cm._self_terms(G, True, c1, c2)
    assert torch.count_nonzero(r) == 0 and torch.count_nonzero(s) == 0
    assert float(h[0, 0]) * c == pytest.approx(ref_hsic1(K.numpy(), K.numpy()), rel=1e-9)
    assert float(G[0, 0].sum(-1).abs().max()) < 1e-9 * float(K.abs().max())  # U(K) has zero row sums


def test_hsic_constants() -> None:
    assert cm._hsic_constants(10, True) == (1 / 70, 1 / 72, 2 / 8)
    assert cm._hsic_constants(10, False) == (1 / 81, 1 / 100, 2 / 10)
