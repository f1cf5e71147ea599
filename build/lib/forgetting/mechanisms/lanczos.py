"""Lanczos with full re-orthogonalisation: the extreme eigenvalues of a symmetric operator on R^N.

This module holds the solver behind :func:`forgetting.mechanisms.landscape.lanczos` (imported,
documented and used from there, with :class:`forgetting.mechanisms.landscape.LanczosResult`) in
its three steps, each a function:

1. ``_krylov_step``: the Krylov iteration. With Q = [q_0; ...; q_j] (j + 1, N) the orthonormal basis
   so far and beta_{-1} = 0::

       w       = A q_j
       alpha_j = q_j . w
       w      <- w - alpha_j q_j - beta_{j-1} q_{j-1}          (three-term recurrence)
       w      <- w - Q^T (Q w)                                 (once or twice: _reorthogonalise)
       beta_j  = ||w||,   q_{j+1} = w / beta_j

2. ``_ritz``: the tridiagonal eigen-solve and Ritz extraction. T_m = tridiag(beta, alpha, beta)
   (m x m, m = j + 1) = S diag(theta) S^T; the wanted Ritz values theta_i (``_wanted``) have residual
   norms ``r_i = ||A y_i - theta_i y_i|| = beta_m |S[m-1, i]|`` for the Ritz vectors y_i = Q^T s_i.

3. ``_converged``: the stopping rule on (theta_i, r_i) and the change of theta_i over the last
   iterations (``_steady``), conditions (a)-(c) of :func:`forgetting.mechanisms.landscape.lanczos`.

The basis is float64 throughout; memory 8 m N bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["WHICH", "LanczosResult", "lanczos"]

#: The spectrum ends :func:`forgetting.mechanisms.landscape.lanczos` can be asked for.
WHICH = ("LA", "SA", "both", "LM")

# a second re-orthogonalisation pass when the first one left less than this fraction of the norm
# (1/sqrt(2): Daniel, Gragg, Kaufman & Stewart 1976)
_REORTH_KEEP = 0.7071
# beta_j below this multiple of max |theta|: the Krylov space is an invariant subspace
_EXHAUSTED_RTOL = 1e-12


@dataclass
class LanczosResult:
    """Outcome of :func:`lanczos`.

    eigenvalues: (k',) wanted Ritz values, sorted descending. eigenvectors: (N, k') float64 Ritz
    vectors (unit norm) or None. residuals: (k',) ``||H y - theta y|| = beta_m |s_m|`` for each (an
    eigenvalue of H lies within that distance). ritz_values: all m Ritz values, descending.
    """

    eigenvalues: np.ndarray
    eigenvectors: torch.Tensor | None
    residuals: np.ndarray
    ritz_values: np.ndarray
    n_matvecs: int
    n_iter: int
    converged: bool
    history: list[np.ndarray] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# arguments and start vectors
# ---------------------------------------------------------------------------------------------------


def _check_arguments(dim: int, k: int, which: str, max_iter: int, tol: float) -> int:
    """Validate the arguments of :func:`lanczos`; returns n_want = k (2k for ``"both"``)."""
    if which not in WHICH:
        raise ValueError(f"which: expected one of {WHICH}, got {which!r}")
    if not (isinstance(k, (int, np.integer)) and k >= 1):
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    if dim < 1:
        raise ValueError(f"dim: expected >= 1, got {dim}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter: expected an integer >= 1, got {max_iter!r}")
    if not (tol > 0):
        raise ValueError(f"tol: expected > 0, got {tol!r}")
    n_want = 2 * k if which == "both" else k
    if n_want > dim:
        raise ValueError(f"k: asks for {n_want} eigenvalues but the operator has dimension {dim}")
    return n_want


def _random_unit(gen: torch.Generator, dim: int, device, Q: torch.Tensor | None = None) -> torch.Tensor:
    """A Gaussian (dim,) float64 vector drawn on CPU from ``gen``, moved to ``device``, orthogonalised
    twice against the rows of ``Q`` (j, dim) when given, v <- v - Q^T (Q v), and normalised."""
    v = torch.randn(dim, generator=gen, dtype=torch.float64).to(device)
    if Q is not None:
        for _ in range(2):
            v = v - Q.T @ (Q @ v)
    return v / torch.linalg.vector_norm(v)


def _start_vector(v0: torch.Tensor | None, dim: int, device, gen: torch.Generator) -> torch.Tensor:
    """q_0: ``v0`` (any shape with dim entries is flattened) as float64 divided by its norm, or a random
    unit vector when ``v0`` is None."""
    if v0 is None:
        return _random_unit(gen, dim, device)
    q = v0.detach().to(device=device, dtype=torch.float64).reshape(-1)
    norm = float(torch.linalg.vector_norm(q)) if q.shape == (dim,) else 0.0
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"v0: expected a finite, non-zero vector of shape ({dim},), got shape {tuple(v0.shape)}")
    return q / norm


def _grow(Q: torch.Tensor, m_max: int) -> torch.Tensor:
    """The basis storage Q (rows, dim) with its number of rows doubled (at most m_max in all)."""
    extra = torch.empty(min(Q.shape[0], m_max - Q.shape[0]), Q.shape[1], dtype=Q.dtype, device=Q.device)
    return torch.cat([Q, extra])


# ---------------------------------------------------------------------------------------------------
# 1. the Krylov iteration
# ---------------------------------------------------------------------------------------------------


def _reorthogonalise(w: torch.Tensor, Qj: torch.Tensor, j: int) -> float:
    """w <- w - Qj^T (Qj w) in place (classical Gram-Schmidt against all rows of Qj, (j + 1, dim)),
    repeated once when the pass removed more than 1 - 1/sqrt(2) of the norm (after the three-term
    step that is rare); returns beta = ||w|| after the last pass."""
    before = float(torch.linalg.vector_norm(w))
    for _ in range(2):
        w.addmv_(Qj.T, Qj @ w, alpha=-1.0)
        beta = float(torch.linalg.vector_norm(w))
        if not math.isfinite(beta):
            raise FloatingPointError(f"matvec returned a non-finite vector at iteration {j}")
        if beta >= _REORTH_KEEP * before:
            break
        before = beta
    return beta


def _krylov_step(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    q: torch.Tensor,
    Q: torch.Tensor,
    j: int,
    beta_prev: float | None,
) -> tuple[torch.Tensor, float, float]:
    """One Lanczos step from q = q_j (dim,), with q_0..q_j stored in the rows of Q.

    w = A q_j; alpha_j = q_j . w; w <- w - alpha_j q_j - beta_{j-1} q_{j-1} (the last term when
    ``beta_prev`` = beta_{j-1} is given); then w is re-orthogonalised against q_0..q_j.

    Returns:
        (w, alpha_j, beta_j): the new (dim,) float64 direction (not normalised), q_j . A q_j and ||w||.
    """
    dim = q.shape[0]
    w = matvec(q)
    if w.shape != (dim,):
        raise FloatingPointError(f"matvec returned a mis-shaped vector at iteration {j}")
    w = w.to(torch.float64, copy=True)  # our own copy: updated in place below
    alpha = float(q @ w)
    if not math.isfinite(alpha):
        raise FloatingPointError(f"matvec returned a non-finite vector at iteration {j}")
    w.sub_(q, alpha=alpha)
    if beta_prev is not None:
        w.sub_(Q[j - 1], alpha=beta_prev)
    return w, alpha, _reorthogonalise(w, Q[: j + 1], j)


# ---------------------------------------------------------------------------------------------------
# 2. the tridiagonal eigen-solve and Ritz extraction
# ---------------------------------------------------------------------------------------------------


def _wanted(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices (into ascending ``theta``) of the wanted Ritz values."""
    m = len(theta)
    if which == "LA":
        idx = np.arange(m - 1, max(m - k, 0) - 1, -1)
    elif which == "SA":
        idx = np.arange(0, min(k, m))
    elif which == "both":
        idx = np.unique(np.concatenate([np.arange(0, min(k, m)), np.arange(max(m - k, 0), m)]))
    else:  # LM
        idx = np.argsort(-np.abs(theta), kind="stable")[: min(k, m)]
    return np.asarray(sorted(idx, key=lambda i: -theta[i]), dtype=np.int64)


@dataclass
class _Ritz:
    """The Ritz pairs after m iterations.

    theta: (m,) ascending eigenvalues of T_m. S: (m, m) their eigenvectors (columns). idx: indices of
    the wanted ones, by descending theta. residuals: (len(idx),) beta_m |S[m-1, idx]|. scale:
    max |theta| (1.0 when all are zero).
    """

    theta: np.ndarray
    S: np.ndarray
    idx: np.ndarray
    residuals: np.ndarray
    scale: float


def _ritz(alphas: list[float], betas: list[float], beta: float, k: int, which: str) -> _Ritz:
    """Eigen-decompose T_m = diag(alphas) + diag(betas, +-1) (m = len(alphas), len(betas) = m - 1) and
    pick the wanted Ritz values; ``beta`` = beta_m (the norm of the next direction) gives the residuals."""
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, S = np.linalg.eigh(T)
    scale = float(np.max(np.abs(theta))) or 1.0
    residuals_all = beta * np.abs(S[-1, :])
    idx = _wanted(theta, k, which)
    return _Ritz(theta=theta, S=S, idx=idx, residuals=residuals_all[idx], scale=scale)


# ---------------------------------------------------------------------------------------------------
# 3. the convergence test
# ---------------------------------------------------------------------------------------------------


def _steady(history: list[np.ndarray], tol: float) -> np.ndarray | None:
    """|theta_i - theta_i'| <= tol |theta_i| per wanted Ritz value between the last two entries of
    ``history`` (wanted values per iteration); None when there is no comparable previous entry."""
    if len(history) >= 2 and len(history[-2]) == len(history[-1]):
        cur, old = history[-1], history[-2]
        return np.abs(cur - old) <= tol * np.abs(cur)
    return None


def _converged(ritz: _Ritz, changes: list[np.ndarray | None], tol: float, residual_only: bool) -> bool:
    """The stopping rule of :func:`lanczos`: every wanted Ritz value satisfies (a) r <= tol |theta|,
    (b) r^2 / gap <= tol |theta| with a small last change, or (c) small changes on the last two
    iterations (``changes``: the per-iteration results of ``_steady``). ``residual_only``: (a) only."""
    theta, idx, residuals = ritz.theta, ritz.idx, ritz.residuals
    # ARPACK's test, relative to the Ritz value itself: relative to the largest |theta| instead,
    # a bulk Ritz value near 0 (the Rayleigh quotient of the start vector) passes after two
    # iterations whenever a large eigenvalue of the other sign has appeared, and "LA" returns it
    res_ok = residuals <= tol * np.maximum(np.abs(theta[idx]), 1e-8 * ritz.scale)
    if residual_only:  # eigenvectors are only as accurate as the residual: then only (a) counts
        return bool(np.all(res_ok))
    last, before = changes[-1], (changes[-2] if len(changes) >= 2 else None)
    none = np.zeros(len(idx), dtype=bool)
    if last is not None and before is not None and before.shape == last.shape:
        steady = last & before
    else:
        steady = none
    # a-posteriori error estimate r^2 / gap (gap to the nearest other Ritz value), trusted only
    # together with a small last change
    gaps = np.array([np.min(np.abs(np.delete(theta, i) - theta[i])) if len(theta) > 1 else np.inf for i in idx])
    with np.errstate(divide="ignore", invalid="ignore"):
        gap_ok = residuals**2 <= tol * np.abs(theta[idx]) * gaps
    gap_ok = gap_ok & (last if last is not None else none)
    return bool(np.all(res_ok | steady | gap_ok))


# ---------------------------------------------------------------------------------------------------
# the solver
# ---------------------------------------------------------------------------------------------------


def lanczos(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    dim: int,
    k: int = 1,
    *,
    which: str = "LA",
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    return_eigenvectors: bool = False,
    device: torch.device | str | None = None,
    v0: torch.Tensor | None = None,
) -> LanczosResult:
    """Lanczos with full re-orthogonalisation for a symmetric operator ``matvec`` on R^dim.

    Iteration j: w = A q_j; alpha_j = q_j . w; w -= alpha_j q_j + beta_{j-1} q_{j-1}; then w is
    re-orthogonalised against all previous q (classical Gram-Schmidt, float64; a second pass when the
    first removed much of the norm, the criterion of Daniel et al. 1976), beta_j = ||w||,
    q_{j+1} = w / beta_j. T_m = tridiag(beta, alpha, beta); its eigenpairs (theta_i, s_i) give Ritz
    values theta_i and residual norms ``r_i = beta_m |s_i[m-1]|``.

    Stopping rule (checked once at least k (2k for "both") Ritz values exist): every wanted Ritz value
    theta_i satisfies one of::

      (a) r_i <= tol * |theta_i|  (an eigenvalue of A lies within r_i of theta_i; ARPACK's test);
      (b) r_i^2 / gap_i <= tol * |theta_i| and theta_i changed by < tol * |theta_i| in the last
          iteration, with gap_i the distance to the nearest other Ritz value (the a-posteriori error
          estimate |theta_i - lambda| <~ r_i^2 / gap; the gap is estimated from the Ritz values, hence
          the extra change condition);
      (c) theta_i changed by < tol * |theta_i| relative on each of the last two iterations.

    With ``return_eigenvectors=True`` only (a) counts, so that every returned Ritz vector y has
    ``||A y - theta y|| <= tol * |theta|`` (eigenvalue errors are ~ r^2, eigenvector errors ~ r).
    Also stops when the Krylov space is exhausted (dim reached) or after ``max_iter``. When beta_j
    vanishes before that (an invariant subspace), the iteration continues from a fresh random
    direction orthogonal to it, with beta_j = 0 in T.

    Memory: the basis Q is m x dim float64 (8 m N bytes). Multiple eigenvalues are found once (one start
    vector spans one copy of each eigenspace).

    Args:
        matvec: (dim,) float64 -> (dim,) float64, symmetric.
        dim: N.
        k: number of eigenvalues wanted (per end for ``"both"``).
        which: ``"LA"`` largest algebraic, ``"SA"`` smallest algebraic, ``"both"`` k from each end,
            ``"LM"`` largest magnitude.
        max_iter: maximum number of matvecs (clamped to dim).
        tol: relative tolerance.
        seed: seed of the Gaussian start vector.
        v0: start vector (dim,) instead of a random one (normalised here), e.g. an eigenvector found
            at a nearby point. ``seed`` still draws any later restart vectors.
        return_eigenvectors: also return Ritz vectors.
        device: where the basis and the vectors passed to ``matvec`` live.
    """
    n_want = _check_arguments(dim, k, which, max_iter, tol)
    m_max = int(min(max(max_iter, n_want), dim))
    gen = torch.Generator().manual_seed(int(seed))
    Q = torch.empty(min(m_max, 32), dim, dtype=torch.float64, device=device)  # grown geometrically
    q = _start_vector(v0, dim, device, gen)
    alphas: list[float] = []
    betas: list[float] = []
    history: list[np.ndarray] = []  # the wanted Ritz values of every iteration
    changes: list[np.ndarray | None] = []  # _steady of every iteration
    converged = False
    for j in range(m_max):
        if j >= Q.shape[0]:
            Q = _grow(Q, m_max)
        Q[j] = q
        w, alpha, beta = _krylov_step(matvec, q, Q, j, betas[-1] if j > 0 else None)
        alphas.append(alpha)
        ritz = _ritz(alphas, betas, beta, k, which)
        history.append(ritz.theta[ritz.idx].copy())
        changes.append(_steady(history, tol))
        if len(ritz.idx) >= n_want:
            converged = _converged(ritz, changes, tol, residual_only=return_eigenvectors)
        if converged or j + 1 == m_max:  # (m_max <= dim: the whole space ends here too)
            break
        if beta <= _EXHAUSTED_RTOL * ritz.scale:
            # invariant subspace found: continue with a fresh direction orthogonal to it (beta = 0)
            betas.append(0.0)
            q = _random_unit(gen, dim, device, Q[: j + 1])
            continue
        betas.append(beta)
        q = w / beta
    if len(ritz.theta) == dim:  # the Krylov space is the whole space: T_m is similar to A
        converged = True
    vecs = None
    if return_eigenvectors:
        vecs = Q[: len(alphas)].T @ torch.from_numpy(ritz.S[:, ritz.idx]).to(Q.device)
    return LanczosResult(
        eigenvalues=ritz.theta[ritz.idx].astype(np.float64),
        eigenvectors=vecs,
        residuals=ritz.residuals,
        ritz_values=ritz.theta[::-1].copy(),
        n_matvecs=len(alphas),
        n_iter=len(alphas),
        converged=bool(converged),
        history=history,
    )
