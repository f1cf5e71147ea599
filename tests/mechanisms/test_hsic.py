"""Known answers for forgetting.mechanisms.hsic: the biased and debiased HSIC terms in both forms
(feature products and Gram matrices), U-centring, and the CKA ratio with its undefined cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetting.mechanisms import hsic
from tests.mechanisms._cka_reference import ref_hsic0, ref_hsic1, related_pair


@pytest.mark.parametrize("debiased", [False, True])
def test_feature_and_gram_forms_agree(monkeypatch: pytest.MonkeyPatch, debiased: bool) -> None:
    rng = np.random.default_rng(1)
    X, Y = related_pair(rng, 20, 7, 9)
    Xt, Yt = torch.tensor(X)[None], torch.tensor(Y)[None]
    monkeypatch.setattr(hsic, "_gram_is_cheaper", lambda *a: True)
    gram = [t.item() for t in hsic.hsic_terms(Xt, Yt, debiased=debiased)]
    monkeypatch.setattr(hsic, "_gram_is_cheaper", lambda *a: False)
    feat = [t.item() for t in hsic.hsic_terms(Xt, Yt, debiased=debiased)]
    np.testing.assert_allclose(gram, feat, rtol=1e-10)
    if debiased:  # the HSIC terms themselves are the unbiased estimator, exactly
        np.testing.assert_allclose(feat[0], ref_hsic1(X @ X.T, Y @ Y.T), rtol=1e-10)


def test_u_centering_identity() -> None:
    """HSIC_1(K, L) = <U(K), U(L)> / (n (n - 3)), the form MinibatchCKA accumulates."""
    rng = np.random.default_rng(2)
    X, Y = related_pair(rng, 9, 4, 6)
    K, L = X @ X.T, Y @ Y.T
    Ku = hsic.u_centered_gram(torch.tensor(K)).numpy()
    Lu = hsic.u_centered_gram(torch.tensor(L)).numpy()
    assert (Ku * Lu).sum() / (9 * 6) == pytest.approx(ref_hsic1(K, L), rel=1e-10)



@pytest.mark.parametrize("n,p1,p2", [(12, 3, 5), (6, 40, 30)])  # feature form, Gram form
@pytest.mark.parametrize("debiased", [False, True])
def test_hsic_terms_per_layer_of_a_batch(n: int, p1: int, p2: int, debiased: bool) -> None:
    """hsic_terms over a stack of L layers equals the definition layer by layer: HSIC_1 exactly,
    HSIC_0 times the common factor (n - 1)^2 that cancels in CKA."""
    rng = np.random.default_rng(n + p1)
    pairs = [related_pair(rng, n, p1, p2) for _ in range(3)]
    X = torch.tensor(np.stack([x for x, _ in pairs]))
    Y = torch.tensor(np.stack([y for _, y in pairs]))
    hxy, hxx, hyy = hsic.hsic_terms(X, Y, debiased=debiased)
    assert hxy.shape == hxx.shape == hyy.shape == (3,) and hxy.dtype == torch.float64
    ref, scale = (ref_hsic1, 1.0) if debiased else (ref_hsic0, (n - 1) ** 2)
    for i, (x, y) in enumerate(pairs):
        K, L = x @ x.T, y @ y.T
        np.testing.assert_allclose(
            [hxy[i], hxx[i], hyy[i]], [scale * ref(K, L), scale * ref(K, K), scale * ref(L, L)], rtol=1e-10
        )


def test_u_centered_gram_rows_sum_to_zero_and_inplace() -> None:
    """U(K) has a zero diagonal and zero row sums (off the diagonal, the U-centring removes the row
    and column means); ``inplace=True`` overwrites K with the same result."""
    rng = np.random.default_rng(3)
    X, _ = related_pair(rng, 7, 3, 2)
    K = torch.tensor(X @ X.T)
    U = hsic.u_centered_gram(K)
    assert torch.count_nonzero(torch.diagonal(U)) == 0
    torch.testing.assert_close(U.sum(-1), torch.zeros(7, dtype=torch.float64), atol=1e-10, rtol=0)
    K2 = K.clone()
    assert hsic.u_centered_gram(K2, inplace=True) is K2 and torch.equal(K2, U)
    assert not torch.equal(K, U)  # the default leaves K alone


def test_cka_from_terms_names_every_undefined_case() -> None:
    hxy = torch.tensor([0.5, 1.0, 1.0, 1.0, 2.0], dtype=torch.float64)
    hxx = torch.tensor([1.0, 1.0, 1.0, -0.1, 4.0], dtype=torch.float64)
    hyy = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    cx = torch.tensor([True, True, False, False, False])
    cy = torch.tensor([True, False, True, False, False])
    vals, notes = hsic._cka_from_terms(hxy, hxx, hyy, cx, cy)
    assert notes == [
        "both inputs are constant across examples",
        "X is constant across examples",
        "Y is constant across examples",
        "the debiased self-HSIC of X is not positive (too few examples?)",
        "",
    ]
    assert np.isnan(vals[:4]).all() and vals[4] == 2.0 / np.sqrt(4.0)


def test_is_constant_is_relative_to_the_norm() -> None:
    rng = np.random.default_rng(4)
    row = torch.tensor(rng.normal(size=(1, 1, 5)))
    X = torch.cat([row.expand(1, 8, 5), 1e6 * row.expand(1, 8, 5), torch.zeros(1, 8, 5),
                   row + 1e-6 * torch.tensor(rng.normal(size=(1, 8, 5)))])
    assert hsic._is_constant(X).tolist() == [True, True, True, False]


def test_checks_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"xs: debiased CKA needs n >= 4.*n = 3"):
        hsic._check_n(3, True, "xs")
    hsic._check_n(3, False)
    with pytest.raises(ValueError, match="n >= 2"):
        hsic._check_n(1, False)
    with pytest.raises(TypeError, match="Y: complex"):
        hsic._as_float64(torch.ones(2, dtype=torch.complex64), "Y")
    assert hsic._as_float64([[1, 2], [3, 4]], "X").dtype == torch.float64
