"""Known answers for forgetting.mechanisms.lanczos: the solver on operators with known spectra, and
its steps (Krylov iteration with re-orthogonalisation, Ritz extraction, stopping rule) on their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forgetting.mechanisms import lanczos as lz
from forgetting.mechanisms.lanczos import lanczos
from tests.mechanisms._quadratics import sym_with_spectrum


# --------------------------------------------------------------------------------------------------
# the solver
# --------------------------------------------------------------------------------------------------


def test_lanczos_keeps_its_basis_orthogonal_long_after_convergence() -> None:
    """Re-orthogonalisation (one classical Gram-Schmidt pass, a second only by the DGKS criterion):
    run far past convergence on a wide spectrum, where plain Lanczos loses orthogonality and returns
    spurious copies ("ghosts") of converged eigenvalues. The k largest must be distinct and exact,
    and the Ritz vectors orthonormal."""
    evals = torch.cat([torch.tensor([1e4, 9e3, 5e3, 1e3]), torch.logspace(2, -3, 196)])
    A = sym_with_spectrum(evals, seed=4)
    res = lanczos(lambda v: A @ v, 200, 4, which="LA", tol=1e-14, max_iter=120, return_eigenvectors=True)
    np.testing.assert_allclose(res.eigenvalues, [1e4, 9e3, 5e3, 1e3], rtol=1e-10)
    V = res.eigenvectors
    torch.testing.assert_close(V.T @ V, torch.eye(4, dtype=torch.float64), atol=1e-8, rtol=0)
    top = res.ritz_values[:8]
    assert np.sum(np.abs(top - 1e4) < 1e-3 * 1e4) == 1  # no ghost copy of the top eigenvalue


def test_lanczos_start_vector() -> None:
    """A start vector near the top eigenvector (a warm start, e.g. from a nearby snapshot) converges in
    fewer matvecs to the same value; an exact eigenvector is found in one; bad ones are named."""
    evals = torch.cat([torch.tensor([10.0, 9.5, 9.0]), torch.linspace(-1.0, 1.0, 97)])
    A = sym_with_spectrum(evals, seed=5)
    w, V = torch.linalg.eigh(A)
    cold = lanczos(lambda v: A @ v, 100, 1, tol=1e-8, max_iter=100)
    near = V[:, -1] + 0.01 * torch.randn(100, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    warm = lanczos(lambda v: A @ v, 100, 1, tol=1e-8, max_iter=100, v0=3.0 * near)
    assert cold.eigenvalues[0] == pytest.approx(10.0, rel=1e-8) and warm.eigenvalues[0] == pytest.approx(10.0, rel=1e-8)
    assert warm.n_matvecs < cold.n_matvecs
    exact = lanczos(lambda v: A @ v, 100, 1, tol=1e-8, max_iter=100, v0=V[:, -1])
    assert exact.eigenvalues[0] == pytest.approx(10.0, rel=1e-10) and exact.n_matvecs <= 2
    for bad in (torch.zeros(100), torch.ones(99), torch.full((100,), float("nan"))):
        with pytest.raises(ValueError, match=r"v0: expected a finite, non-zero vector of shape \(100,\)"):
            lanczos(lambda v: A @ v, 100, 1, v0=bad)


def test_lanczos_small_space_is_exact_and_validates() -> None:
    A = torch.diag(torch.tensor([4.0, -1.0, 2.0], dtype=torch.float64))
    res = lanczos(lambda v: A @ v, 3, 3, which="LA", max_iter=50)
    np.testing.assert_allclose(res.eigenvalues, [4.0, 2.0, -1.0], atol=1e-12)
    assert res.converged and res.n_matvecs <= 3
    with pytest.raises(ValueError, match="which"):
        lanczos(lambda v: v, 3, which="largest")
    with pytest.raises(ValueError, match="k: asks for 4"):
        lanczos(lambda v: v, 3, 2, which="both")



def test_a_near_zero_ritz_value_is_not_converged_beside_a_huge_negative_one():
    """Lanczos must not stop on a bulk Ritz value (found on a real snapshot: lambda_max came out as
    -0.0015)."""
    # A spectrum like the old task's Hessian after forgetting: a bulk near 0, a few positive eigenvalues
    # and negative ones far larger in magnitude. With residuals judged against max |theta| this start
    # vector stopped after two iterations at the bulk (0.014) instead of the top eigenvalue 346.
    n = 5000
    d = 0.05 * torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(25))
    d[:9] = torch.tensor([346.0, 236.0, 112.0, -9.0, -142.0, -269.0, -329.0, -3828.0, -3000.0], dtype=torch.float64)
    result = lanczos(lambda v: d * v, n, k=1, max_iter=40, tol=1e-3, seed=25)
    assert result.converged and abs(result.eigenvalues[0] - 346.0) < 0.35
    assert result.n_iter > 2


def test_an_exhausted_krylov_space_restarts_orthogonally() -> None:
    """A rank-3 operator: beta vanishes after 3 steps (an invariant subspace); the iteration continues
    from a fresh orthogonal direction (beta = 0 in T) and still returns both ends, with orthonormal
    Ritz vectors and the zero eigenvalue of the null space."""
    U, _ = torch.linalg.qr(torch.randn(30, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    A = U @ torch.diag(torch.tensor([5.0, -2.0, 1.0], dtype=torch.float64)) @ U.T
    res = lanczos(lambda v: A @ v, 30, 2, which="both", tol=1e-12, max_iter=8, return_eigenvectors=True)
    np.testing.assert_allclose(res.eigenvalues, [5.0, 1.0, 0.0, -2.0], atol=1e-10)
    assert res.n_iter > 3  # went on after the invariant subspace
    V = res.eigenvectors
    torch.testing.assert_close(V.T @ V, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(A @ V, V * torch.tensor(res.eigenvalues), atol=1e-9, rtol=0)


# --------------------------------------------------------------------------------------------------
# the steps
# --------------------------------------------------------------------------------------------------


def krylov_steps(A: torch.Tensor, m: int, seed: int) -> tuple[torch.Tensor, list[float], list[float]]:
    """m steps of _krylov_step on A from a random start: Q (m, N), alpha_0..alpha_{m-1} and
    beta_0..beta_{m-1} (beta_{m-1}: the norm of the direction after the last step)."""
    gen = torch.Generator().manual_seed(seed)
    Q = torch.empty(m, A.shape[0], dtype=torch.float64)
    q = lz._start_vector(None, A.shape[0], None, gen)
    alphas, betas = [], []
    for j in range(m):
        Q[j] = q
        w, alpha, beta = lz._krylov_step(lambda v: A @ v, q, Q, j, betas[-1] if j else None)
        assert beta == pytest.approx(float(w.norm()), rel=1e-15)
        alphas.append(alpha)
        betas.append(beta)
        q = w / beta
    return Q, alphas, betas


def test_krylov_steps_build_an_orthonormal_basis_and_the_tridiagonal_projection() -> None:
    """m steps of _krylov_step: Q (m, N) orthonormal, and Q A Q^T = T_m = tridiag(beta, alpha, beta)."""
    A = sym_with_spectrum(torch.linspace(-3.0, 5.0, 50), seed=1)
    m = 12
    Q, alphas, betas = krylov_steps(A, m, seed=0)
    torch.testing.assert_close(Q @ Q.T, torch.eye(m, dtype=torch.float64), atol=1e-12, rtol=0)
    T = np.diag(alphas) + np.diag(betas[:-1], 1) + np.diag(betas[:-1], -1)
    np.testing.assert_allclose((Q @ A @ Q.T).numpy(), T, atol=1e-10)


def test_reorthogonalise_takes_a_second_pass_only_when_needed() -> None:
    """One pass removes the components along Q; a vector almost inside span(Q) (the first pass removes
    more than 1 - 1/sqrt(2) of its norm) gets a second pass, which a single pass would not match."""
    Q, _ = torch.linalg.qr(torch.randn(40, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    Qj = Q.T.contiguous()  # (5, 40), orthonormal rows
    g = torch.Generator().manual_seed(3)
    w = torch.randn(40, generator=g, dtype=torch.float64)
    beta = lz._reorthogonalise(w, Qj, 0)
    assert float((Qj @ w).abs().max()) < 1e-14 and beta == float(w.norm())
    inside = Qj.T @ torch.randn(5, generator=g, dtype=torch.float64) + 1e-9 * torch.randn(40, generator=g,
                                                                                       dtype=torch.float64)
    once = inside.clone()
    once.addmv_(Qj.T, Qj @ once, alpha=-1.0)
    twice = inside.clone()
    lz._reorthogonalise(twice, Qj, 0)
    assert float((Qj @ twice).abs().max()) <= float((Qj @ once).abs().max())
    assert not torch.equal(once, twice)  # the second pass ran


def test_ritz_residuals_are_the_true_residuals_of_the_ritz_vectors() -> None:
    """r_i = beta_m |S[m-1, i]| = ||A y_i - theta_i y_i|| for y_i = Q^T s_i (the Lanczos relation)."""
    A = sym_with_spectrum(torch.linspace(-2.0, 4.0, 60), seed=7)
    Q, alphas, betas = krylov_steps(A, 10, seed=1)
    beta = betas.pop()  # beta_m: the residual scale; T_m uses beta_0..beta_{m-2}
    for which, k in (("LA", 2), ("SA", 1), ("both", 2), ("LM", 3)):
        ritz = lz._ritz(alphas, betas, beta, k, which)
        assert np.all(np.diff(ritz.theta) >= 0) and ritz.scale == float(np.max(np.abs(ritz.theta)))
        Y = Q.T @ torch.from_numpy(ritz.S[:, ritz.idx])
        true = (A @ Y - Y * torch.from_numpy(ritz.theta[ritz.idx])).norm(dim=0).numpy()
        np.testing.assert_allclose(ritz.residuals, true, rtol=1e-6, atol=1e-12)


def test_wanted_indices() -> None:
    theta = np.array([-5.0, -1.0, 0.5, 2.0, 3.0])
    assert lz._wanted(theta, 2, "LA").tolist() == [4, 3]
    assert lz._wanted(theta, 2, "SA").tolist() == [1, 0]
    assert lz._wanted(theta, 1, "both").tolist() == [4, 0]
    assert lz._wanted(theta, 2, "LM").tolist() == [4, 0]
    assert lz._wanted(theta, 9, "both").tolist() == [4, 3, 2, 1, 0]  # more wanted than there are


def test_converged_conditions() -> None:
    """(a) residual, (b) r^2 / gap with a small last change, (c) small changes twice; with
    residual_only only (a)."""
    theta = np.array([0.0, 1.0, 10.0])
    idx = np.array([2])

    def ritz(r):
        return lz._Ritz(theta=theta, S=np.eye(3), idx=idx, residuals=np.array([r]), scale=10.0)

    small, big = np.array([True]), np.array([False])
    tol = 1e-3
    assert lz._converged(ritz(5e-3), [None], tol, residual_only=False)  # (a): 5e-3 <= 1e-3 * 10
    assert not lz._converged(ritz(2e-2), [None], tol, residual_only=False)
    # (b): r^2 / gap = 4e-4 / 9 <= 1e-2, needs a small last change
    assert lz._converged(ritz(2e-2), [big, small], tol, residual_only=False)
    assert not lz._converged(ritz(2e-2), [small, big], tol, residual_only=False)
    # (c): a large residual, but small changes on the last two iterations
    assert lz._converged(ritz(1.0), [small, small], tol, residual_only=False)
    assert not lz._converged(ritz(1.0), [big, small], tol, residual_only=False)
    assert not lz._converged(ritz(1.0), [small, small], tol, residual_only=True)
    assert lz._converged(ritz(5e-3), [big, big], tol, residual_only=True)


def test_steady_compares_the_last_two_iterations() -> None:
    assert lz._steady([np.array([1.0])], 1e-3) is None
    assert lz._steady([np.array([1.0]), np.array([1.0, 2.0])], 1e-3) is None  # not comparable
    assert lz._steady([np.array([1.0, 2.0]), np.array([1.0005, 2.1])], 1e-3).tolist() == [True, False]


def test_start_vector_and_arguments() -> None:
    gen = torch.Generator().manual_seed(0)
    q = lz._start_vector(torch.full((2, 3), 2.0), 6, None, gen)  # any shape with dim entries
    assert q.dtype == torch.float64 and q.shape == (6,) and float(q.norm()) == pytest.approx(1.0)
    Q = torch.eye(6, dtype=torch.float64)[:2]
    v = lz._random_unit(gen, 6, None, Q)
    assert float((Q @ v).abs().max()) < 1e-15 and float(v.norm()) == pytest.approx(1.0)
    assert lz._check_arguments(10, 2, "both", 5, 1e-3) == 4
    for kwargs, match in (({"k": 0}, "k: expected"), ({"max_iter": 0}, "max_iter"), ({"tol": 0.0}, "tol"),
                          ({"which": "XX"}, "which")):
        args = {"dim": 10, "k": 1, "which": "LA", "max_iter": 5, "tol": 1e-3} | kwargs
        with pytest.raises(ValueError, match=match):
            lz._check_arguments(**args)
