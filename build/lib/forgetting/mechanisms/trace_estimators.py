"""Stochastic estimators of tr(A) for a symmetric operator A on R^N given only products A V.

The estimators behind :func:`forgetting.mechanisms.landscape.hessian_trace`; both are imported,
documented and used from :mod:`forgetting.mechanisms.landscape`
(:func:`forgetting.mechanisms.landscape.hutchinson`, :func:`forgetting.mechanisms.landscape.hutchpp`).
With m products and g_i Rademacher vectors (entries +-1 with probability 1/2)::

    Hutchinson:  tr(A) ~ (1/m) sum_i g_i^T A g_i                      (variance 2 (||A||_F^2 - sum_i A_ii^2) / m)
    Hutch++:     Q = orth(A S),  tr(A) ~ tr(Q^T A Q) + tr(G'^T A G') / (m - 2s),  G' = (I - Q Q^T) G

(Hutch++: Meyer, Musco, Musco & Woodruff 2021, with s = m // 3 sketch vectors S and m - 2s vectors G.)
Every vector is float64; ``matmat`` maps (N, b) to (N, b).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["hutchinson", "hutchpp"]

MatMat = Callable[[torch.Tensor], torch.Tensor]


def _rademacher(dim: int, b: int, gen: torch.Generator, device=None) -> torch.Tensor:
    """(dim, b) float64 matrix of independent +-1 entries drawn from ``gen`` on CPU, moved to ``device``."""
    return (torch.randint(0, 2, (dim, b), generator=gen, dtype=torch.int8) * 2 - 1).to(device, torch.float64)


def _mean_and_stderr(samples: torch.Tensor) -> tuple[float, float]:
    """Mean of per-vector values (m,) and its standard error std(ddof=1) / sqrt(m) (NaN for m < 2)."""
    m = samples.numel()
    mean = float(samples.sum() / m)
    stderr = float(samples.std() / math.sqrt(m)) if m >= 2 else math.nan
    return mean, stderr


def hutchinson(
    matmat: MatMat, dim: int, n_matvecs: int, *, seed: int = 0, device=None, return_stderr: bool = False
) -> float | tuple[float, float]:
    """Hutchinson's estimator tr(A) ~ (1/m) sum_i g_i^T A g_i, g_i Rademacher, m = ``n_matvecs``.

    ``matmat``: (dim, b) float64 -> (dim, b) float64 (A applied to each column). Variance
    2 (||A||_F^2 - sum_i A_ii^2) / m. With ``return_stderr=True`` returns ``(estimate, stderr)``,
    stderr = std(g_i^T A g_i) / sqrt(m) from the same m values (no extra matvecs).
    """
    if not (isinstance(n_matvecs, (int, np.integer)) and n_matvecs >= 1):
        raise ValueError(f"n_matvecs: expected an integer >= 1 for hutchinson, got {n_matvecs!r}")
    gen = torch.Generator().manual_seed(int(seed))
    G = _rademacher(dim, int(n_matvecs), gen, device)
    estimate, stderr = _mean_and_stderr((G * matmat(G)).sum(0))
    return (estimate, stderr) if return_stderr else estimate


def hutchpp(
    matmat: MatMat, dim: int, n_matvecs: int, *, seed: int = 0, device=None, return_stderr: bool = False
) -> float | tuple[float, float]:
    """Hutch++ (Meyer et al. 2021) with exactly ``n_matvecs`` products of A (Rademacher vectors).

    s = m // 3 sketch vectors S and m - 2s Hutchinson vectors G (m = n_matvecs >= 3)::

        Q = qr(A S).Q                          (s matvecs)
        t_top  = tr(Q^T (A Q))                 (s matvecs)
        G'     = G - Q (Q^T G)
        t_rest = tr(G'^T (A G')) / (m - 2s)     (m - 2s matvecs)
        tr(A) ~ t_top + t_rest

    With ``return_stderr=True`` returns ``(estimate, stderr)``, stderr = std(g_i'^T A g_i') /
    sqrt(m - 2s). Given the sketch, t_top is exact and t_rest is unbiased for the rest of the trace,
    so the estimate is unbiased for every Q and this conditional standard error is the whole of
    its spread.
    """
    if not (isinstance(n_matvecs, (int, np.integer)) and n_matvecs >= 3):
        raise ValueError(f"n_matvecs: expected an integer >= 3 for hutch++, got {n_matvecs!r}")
    m = int(n_matvecs)
    s = m // 3
    n_g = m - 2 * s
    gen = torch.Generator().manual_seed(int(seed))
    S = _rademacher(dim, s, gen, device)
    G = _rademacher(dim, n_g, gen, device)
    Q, _ = torch.linalg.qr(matmat(S))
    t_top = float((Q * matmat(Q)).sum())
    Gp = G - Q @ (Q.T @ G)
    t_rest, stderr = _mean_and_stderr((Gp * matmat(Gp)).sum(0))
    return (t_top + t_rest, stderr) if return_stderr else t_top + t_rest
