"""Quadratic losses 0.5 x^T A x with a chosen spectrum (their Hessian is A exactly), shared by the
landscape, lanczos and trace-estimator tests."""

from __future__ import annotations

import torch

# top 3, bottom -10: the most negative eigenvalue is larger in magnitude than the largest one
NEG_DOMINANT = torch.cat([torch.tensor([3.0, 2.0, 1.5, -10.0, -6.0]), torch.linspace(-1.0, 1.0, 35)])


def sym_with_spectrum(evals: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A = Q diag(evals) Q^T (n x n float64) with a random orthogonal Q."""
    g = torch.Generator().manual_seed(seed)
    n = evals.numel()
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(evals.double()) @ Q.T


def quadratic(A: torch.Tensor, split: tuple[int, ...] | None = None):
    """loss_fn and params for 0.5 x^T A x, with x optionally split into several parameter tensors."""
    n = A.shape[0]
    x0 = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sizes = split or (n,)
    params = [p.clone().requires_grad_(True) for p in torch.split(x0, sizes)]

    def loss_fn() -> torch.Tensor:
        x = torch.cat(params)
        return 0.5 * x @ A @ x

    return loss_fn, params
