"""Lanczos must not stop on a bulk Ritz value (found on a real snapshot: lambda_max came out as -0.0015)."""

from __future__ import annotations

import torch

from forgetting.mechanisms.landscape import lanczos


def test_a_near_zero_ritz_value_is_not_converged_beside_a_huge_negative_one():
    # A spectrum like the old task's Hessian after forgetting: a bulk near 0, a few positive eigenvalues
    # and negative ones far larger in magnitude. With residuals judged against max |theta| this start
    # vector stopped after two iterations at the bulk (0.014) instead of the top eigenvalue 346.
    n = 5000
    d = 0.05 * torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(25))
    d[:9] = torch.tensor([346.0, 236.0, 112.0, -9.0, -142.0, -269.0, -329.0, -3828.0, -3000.0], dtype=torch.float64)
    result = lanczos(lambda v: d * v, n, k=1, max_iter=40, tol=1e-3, seed=25)
    assert result.converged and abs(result.eigenvalues[0] - 346.0) < 0.35
    assert result.n_iter > 2
