"""Loss-landscape geometry around a snapshot: Hessian-vector products, extreme eigenvalues, trace, and
loss surfaces between snapshots.

Everything works on the flattened parameter vector theta = concat(p.flatten() for p in params) of
dimension N, for whatever subset ``params`` of a model's parameters is passed (all weights, the
attention projections, one layer, LoRA adapters: see :func:`select_parameters`). The Hessian
H = d^2 L / d theta^2 (N x N) is never formed; it is applied to vectors by double backward::

    g(theta) = dL/dtheta  (built once with create_graph=True)
    H v      = d(g . v)/dtheta                                   (one "matvec", ~3x a forward+backward)

Extreme eigenvalues: Lanczos with full re-orthogonalisation (:func:`lanczos`). After m matvecs it has an
m x m tridiagonal T = Q^T H Q whose eigenvalues (Ritz values) approximate *both* ends of the spectrum
at once. This matters for forgetting (SCIENCE.md): away from a minimum the most negative eigenvalue can
exceed the largest in magnitude, and plain power iteration (PyHessian's ``eigenvalues``) then converges to
the eigenvalue of largest *magnitude*, i.e. the negative one, and reports it as "the top eigenvalue".
``which="LA"`` here always returns the algebraically largest; ``which="both"`` returns both ends.

Trace: Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with Rademacher vectors. With m matvecs split into
s = m // 3 sketch vectors S, s projection matvecs and m - 2s Hutchinson vectors G::

    Q = orth(H S);  tr(H) ~ tr(Q^T H Q) + tr(G'^T H G') / (m - 2s),   G' = (I - Q Q^T) G

exact on the top of the spectrum captured by Q, Hutchinson (tr ~ mean_i g_i^T H g_i) on the rest; the
error decays like 1/m instead of 1/sqrt(m) when the spectrum is dominated by a few large eigenvalues.

Loss surfaces: :func:`interpolate_1d` on the segment between two snapshots, :func:`plane_2d` on the plane
through three, :func:`filter_normalized_direction` for random directions (Li et al. 2018), and
:func:`second_order_change` for the Taylor prediction g.d + d^T H d / 2 of a loss change along d.

``loss_fn`` is a no-argument callable returning a scalar tensor; it must be deterministic (model in eval
mode, no dropout, fixed batch): the gradient graph is built once and reused for every matvec.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = [
    "PARAMETER_PRESETS",
    "HessianOperator",
    "LanczosResult",
    "filter_normalized_direction",
    "hessian_eigenvalues",
    "hessian_trace",
    "hutchinson",
    "hutchpp",
    "hvp",
    "interpolate_1d",
    "lanczos",
    "plane_2d",
    "plane_coordinates",
    "second_order_change",
    "select_parameters",
]

WHICH = ("LA", "SA", "both", "LM")
TRACE_METHODS = ("hutch++", "hutchinson")

LossFn = Callable[[], torch.Tensor]
MatMat = Callable[[torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------------


def _check_params(params) -> list[torch.Tensor]:
    if isinstance(params, torch.Tensor):
        raise TypeError("params: expected a list of tensors, got a single tensor (wrap it in a list)")
    if isinstance(params, Mapping):
        params = list(params.values())
    params = list(params)
    if not params:
        raise ValueError("params: empty; pass at least one tensor that requires grad")
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"params[{i}]: expected a torch.Tensor, got {type(p).__name__}")
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}): does not require grad")
        if not p.is_floating_point():
            raise ValueError(f"params[{i}]: must be a floating-point tensor, got {p.dtype}")
    return params


class HessianOperator:
    """The Hessian of ``loss_fn()`` w.r.t. ``params`` as a linear operator (never formed).

    The loss and its gradient graph are computed once, in ``__init__`` (create_graph=True); every
    :meth:`matvec` reuses that graph (retain_graph=True) and increments :attr:`n_matvecs`.

    Attributes:
        params: the tensors, in order.
        dim: N = total number of entries.
        loss: the loss value (float).
        n_matvecs: Hessian-vector products computed so far.

    Parameters the loss does not depend on (or depends on only linearly) get zero rows/columns in H.
    Flat vectors are float64 (N,) or (N, b); they are cast to each parameter's dtype for the product.
    """

    def __init__(self, loss_fn: LossFn, params: Sequence[torch.Tensor]):
        self.params = _check_params(params)
        loss = loss_fn()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn: must return a scalar tensor")
        if not loss.requires_grad:
            raise ValueError("loss_fn: the returned loss does not depend on any of params (no grad)")
        grads = torch.autograd.grad(loss.reshape(()), self.params, create_graph=True, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError("loss_fn: the loss does not depend on any of params")
        self.loss = float(loss.detach())
        self._grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
        # only gradient entries that themselves depend on params carry second-order information
        self._active = [i for i, g in enumerate(self._grads) if g.requires_grad]
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = int(sum(self.numels))
        self.device = self.params[0].device
        self.n_matvecs = 0

    # ---- flat <-> per-parameter
    def flatten(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-parameter tensors -> (N,) float64."""
        if len(tensors) != len(self.params):
            raise ValueError(f"vectors: expected {len(self.params)} tensors (one per param), got {len(tensors)}")
        for i, (t, s) in enumerate(zip(tensors, self.shapes)):
            if tuple(t.shape) != tuple(s):
                raise ValueError(f"vectors[{i}]: expected shape {tuple(s)}, got {tuple(t.shape)}")
        out = torch.empty(self.dim, dtype=torch.float64, device=self.device)
        for piece, t in zip(torch.split(out, self.numels), tensors):  # one pass: read, convert, write
            piece.view(t.shape).copy_(t.detach())
        return out

    def unflatten(self, flat: torch.Tensor, *, like_params: bool = True) -> list[torch.Tensor]:
        """(N,) -> per-parameter tensors (in the params' dtypes if ``like_params``, else float64)."""
        if flat.shape != (self.dim,):
            raise ValueError(f"flat vector: expected shape ({self.dim},), got {tuple(flat.shape)}")
        dtypes = {p.dtype for p in self.params}
        if like_params and len(dtypes) == 1:  # one conversion, then views
            flat = flat.to(next(iter(dtypes)))
            like_params = False
        out = []
        for piece, p in zip(torch.split(flat, self.numels), self.params):
            piece = piece.view(p.shape)
            out.append(piece.to(p.dtype) if like_params else piece)
        return out

    def gradient(self) -> torch.Tensor:
        """The gradient g at the current parameters, (N,) float64 (detached)."""
        return self.flatten([g.detach() for g in self._grads])

    # ---- products
    def matvec(self, vector: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """H v for v given per parameter (same shapes as params); returns per-parameter tensors."""
        if len(vector) != len(self.params):
            raise ValueError(f"vectors: expected {len(self.params)} tensors (one per param), got {len(vector)}")
        self.n_matvecs += 1
        if not self._active:
            return [torch.zeros_like(p) for p in self.params]
        vs = [vector[i].to(self.params[i].device, self.params[i].dtype) for i in self._active]
        hv = torch.autograd.grad(
            [self._grads[i] for i in self._active], self.params, grad_outputs=vs, retain_graph=True, allow_unused=True
        )
        return [torch.zeros_like(p) if h is None else h.detach() for p, h in zip(self.params, hv)]

    def matvec_flat(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat (N,) vector; returns (N,) float64."""
        return self.flatten(self.matvec(self.unflatten(v)))

    def matmat_flat(self, V: torch.Tensor) -> torch.Tensor:
        """H V for V (N, b), column by column (b matvecs); returns (N, b) float64."""
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise ValueError(f"V: expected shape ({self.dim}, b), got {tuple(V.shape)}")
        return torch.stack([self.matvec_flat(V[:, j]) for j in range(V.shape[1])], dim=1)

    def dense(self) -> torch.Tensor:
        """The full (N, N) float64 Hessian by N matvecs (only for small N: tests, small subsets)."""
        return self.matmat_flat(torch.eye(self.dim, dtype=torch.float64, device=self.device))

    def release(self) -> None:
        """Free the gradient graph; further matvecs raise."""
        self._grads = [g.detach() for g in self._grads]
        self._active = []


def hvp(loss_fn: LossFn, params: Sequence[torch.Tensor], vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """One Hessian-vector product H v by double backward.

    Args:
        loss_fn: no-argument callable returning a scalar loss that depends on ``params``.
        params: list of tensors that require grad (shapes s_1..s_P).
        vectors: v as a list of P tensors with shapes s_1..s_P.

    Returns:
        H v as a list of P tensors with the params' shapes and dtypes. For many products with the same
        loss, build one :class:`HessianOperator` (the gradient graph is computed once).
    """
    op = HessianOperator(loss_fn, params)
    return op.matvec(list(vectors))


# ---------------------------------------------------------------------------------------------------
# Lanczos
# ---------------------------------------------------------------------------------------------------


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
    Also stops when the Krylov space is exhausted (dim reached) or after ``max_iter``.

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
    """
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
    m_max = int(min(max(max_iter, n_want), dim))
    gen = torch.Generator().manual_seed(int(seed))

    def rand_unit(Q: torch.Tensor | None) -> torch.Tensor:
        v = torch.randn(dim, generator=gen, dtype=torch.float64).to(device)
        if Q is not None:
            for _ in range(2):
                v = v - Q.T @ (Q @ v)
        return v / torch.linalg.vector_norm(v)

    Q = torch.empty(min(m_max, 32), dim, dtype=torch.float64, device=device)
    if v0 is None:
        q = rand_unit(None)
    else:
        q = v0.detach().to(device=device, dtype=torch.float64).reshape(-1)
        norm = float(torch.linalg.vector_norm(q)) if q.shape == (dim,) else 0.0
        if not (math.isfinite(norm) and norm > 0):
            raise ValueError(f"v0: expected a finite, non-zero vector of shape ({dim},), got shape {tuple(v0.shape)}")
        q = q / norm
    alphas: list[float] = []
    betas: list[float] = []
    history: list[np.ndarray] = []
    changes: list[np.ndarray | None] = []
    converged = False
    theta = S = None
    idx = np.zeros(0, dtype=np.int64)
    residuals = np.zeros(0)
    n_mv = 0
    for j in range(m_max):
        if j >= Q.shape[0]:  # grow the basis storage geometrically
            Q = torch.cat([Q, torch.empty(min(Q.shape[0], m_max - Q.shape[0]), dim, dtype=Q.dtype, device=Q.device)])
        Q[j] = q
        w = matvec(q)
        n_mv += 1
        if w.shape != (dim,):
            raise FloatingPointError(f"matvec returned a mis-shaped vector at iteration {j}")
        w = w.to(torch.float64, copy=True)  # our own copy: updated in place below
        alpha = float(q @ w)
        if not math.isfinite(alpha):
            raise FloatingPointError(f"matvec returned a non-finite vector at iteration {j}")
        alphas.append(alpha)
        w.sub_(q, alpha=alpha)
        if j > 0:
            w.sub_(Q[j - 1], alpha=betas[-1])
        # full re-orthogonalisation against all previous q by classical Gram-Schmidt; a second pass
        # only when the first removed more than 1 - 1/sqrt(2) of the norm (Daniel, Gragg, Kaufman &
        # Stewart 1976), which after the three-term step above is rare
        Qj = Q[: j + 1]
        before = float(torch.linalg.vector_norm(w))
        for _ in range(2):
            w.addmv_(Qj.T, Qj @ w, alpha=-1.0)
            beta = float(torch.linalg.vector_norm(w))
            if not math.isfinite(beta):
                raise FloatingPointError(f"matvec returned a non-finite vector at iteration {j}")
            if beta >= 0.7071 * before:
                break
            before = beta

        T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, S = np.linalg.eigh(T)
        scale = float(np.max(np.abs(theta))) or 1.0
        residuals_all = beta * np.abs(S[-1, :])
        idx = _wanted(theta, k, which)
        residuals = residuals_all[idx]
        history.append(theta[idx].copy())
        exhausted = j + 1 == dim or beta <= 1e-12 * scale
        if len(history) >= 2 and len(history[-2]) == len(idx):
            cur, old = history[-1], history[-2]
            changes.append(np.abs(cur - old) <= tol * np.abs(cur))
        else:
            changes.append(None)
        if len(idx) >= n_want:
            # ARPACK's test, relative to the Ritz value itself: relative to the largest |theta| instead,
            # a bulk Ritz value near 0 (the Rayleigh quotient of the start vector) passes after two
            # iterations whenever a large eigenvalue of the other sign has appeared, and "LA" returns it
            res_ok = residuals <= tol * np.maximum(np.abs(theta[idx]), 1e-8 * scale)
            last, before = changes[-1], (changes[-2] if len(changes) >= 2 else None)
            none = np.zeros(len(idx), dtype=bool)
            if last is not None and before is not None and before.shape == last.shape:
                steady = last & before
            else:
                steady = none
            # a-posteriori error estimate r^2 / gap (gap to the nearest other Ritz value), trusted only
            # together with a small last change
            gaps = np.array(
                [np.min(np.abs(np.delete(theta, i) - theta[i])) if len(theta) > 1 else np.inf for i in idx]
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                gap_ok = residuals**2 <= tol * np.abs(theta[idx]) * gaps
            gap_ok = gap_ok & (last if last is not None else none)
            # eigenvectors are only as accurate as the residual: then only (a) counts
            converged = bool(np.all(res_ok)) if return_eigenvectors else bool(np.all(res_ok | steady | gap_ok))
        if converged or j + 1 == m_max:
            break
        if exhausted:
            if j + 1 == dim:
                converged = True
                break
            # invariant subspace found: continue with a fresh direction orthogonal to it (beta = 0)
            betas.append(0.0)
            q = rand_unit(Q[: j + 1])
            continue
        betas.append(beta)
        q = w / beta
    if not converged and theta is not None and len(theta) == dim:
        converged = True
    vecs = None
    if return_eigenvectors:
        m = len(alphas)
        vecs = Q[:m].T @ torch.from_numpy(S[:, idx]).to(Q.device)
    return LanczosResult(
        eigenvalues=theta[idx].astype(np.float64),
        eigenvectors=vecs,
        residuals=residuals,
        ritz_values=theta[::-1].copy(),
        n_matvecs=n_mv,
        n_iter=len(alphas),
        converged=bool(converged),
        history=history,
    )


def hessian_eigenvalues(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    k: int = 1,
    *,
    which: Literal["LA", "SA", "both", "LM"] = "LA",
    max_iter: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    return_eigenvectors: bool = False,
):
    """Extreme eigenvalues of the Hessian of ``loss_fn()`` w.r.t. ``params`` by Lanczos.

    Args:
        loss_fn: no-argument callable returning a scalar loss (deterministic: eval mode, fixed batch).
        params: list of tensors that require grad; the Hessian is taken over their concatenation only.
        k: how many eigenvalues (per end for ``which="both"``).
        which: ``"LA"`` (default) the k algebraically largest; ``"SA"`` the k smallest (most negative);
            ``"both"`` k from each end; ``"LM"`` the k largest in magnitude. Unlike power iteration,
            ``"LA"`` is the largest eigenvalue even when a negative one is larger in magnitude.
        max_iter: maximum number of Hessian-vector products. tol: relative tolerance (see :func:`lanczos`).
        seed: seed of the random start vector. return_eigenvectors: also return unit eigenvectors.

    Returns:
        numpy float64 array of the eigenvalues, sorted descending (for ``"both"``: the k largest followed
        by the k smallest); with ``return_eigenvectors=True`` a tuple ``(values, vectors)`` where
        ``vectors[i]`` is a list of tensors shaped like ``params`` (unit norm over all of them).
        Use :func:`lanczos` with :class:`HessianOperator` for the number of matvecs and residuals.
    """
    op = HessianOperator(loss_fn, params)
    res = lanczos(
        op.matvec_flat,
        op.dim,
        k,
        which=which,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        return_eigenvectors=return_eigenvectors,
        device=op.device,
    )
    if not return_eigenvectors:
        return res.eigenvalues
    vectors = [op.unflatten(res.eigenvectors[:, i]) for i in range(res.eigenvectors.shape[1])]
    return res.eigenvalues, vectors


# ---------------------------------------------------------------------------------------------------
# trace
# ---------------------------------------------------------------------------------------------------


def _rademacher(dim: int, b: int, gen: torch.Generator, device=None) -> torch.Tensor:
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


def hessian_trace(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    *,
    n_matvecs: int = 30,
    method: Literal["hutch++", "hutchinson"] = "hutch++",
    seed: int = 0,
    return_stderr: bool = False,
) -> float | tuple[float, float]:
    """Stochastic estimate of tr(H) for the Hessian of ``loss_fn()`` w.r.t. ``params``.

    Args:
        loss_fn, params: as in :func:`hessian_eigenvalues`.
        n_matvecs: exact number of Hessian-vector products to spend (>= 3 for Hutch++).
        method: ``"hutch++"`` (default; :func:`hutchpp`) or ``"hutchinson"`` (:func:`hutchinson`).
        seed: seed of the Rademacher vectors (same seed, same estimate).
        return_stderr: also return the estimate's standard error, from the same products.

    Returns:
        the estimate as a float, or ``(estimate, stderr)``. Both estimators are unbiased. Hutch++ has
        far smaller variance when fewer than about m/3 eigenvalues carry most of ||H||_F^2; when the
        spectrum has a wide bulk it is worse
        (up to sqrt(3) in error), since two thirds of its matvecs go to a sketch that removes little
        variance. On a tiny Llama (benchmarks/README.md), Hutchinson's error was 1.0x to 2.6x smaller
        at 30-300 matvecs on every block measured, while at 999 matvecs on the trained output
        projection Hutch++'s was 9x smaller. Compare both on your model when it matters.
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"method: expected one of {TRACE_METHODS}, got {method!r}")
    op = HessianOperator(loss_fn, params)
    fn = hutchpp if method == "hutch++" else hutchinson
    return fn(op.matmat_flat, op.dim, n_matvecs, seed=seed, device=op.device, return_stderr=return_stderr)


# ---------------------------------------------------------------------------------------------------
# parameter selection
# ---------------------------------------------------------------------------------------------------

#: Named regular expressions over parameter names for :func:`select_parameters`.
PARAMETER_PRESETS: dict[str, str] = {
    "attention": r"(self_attn|attention|attn)\.",
    "attention_qkvo": (
        r"(self_attn|attention|attn)\.(q_proj|k_proj|v_proj|o_proj|c_attn|c_proj|query_key_value|dense)\."
    ),
    "mlp": r"\.(mlp|feed_forward|block_sparse_moe|experts)\.",
    "lora": r"lora_",
    "norm": r"norm",
    "embeddings": r"(embed_tokens|wte|wpe|embed_in|lm_head|embed_out)",
}


def select_parameters(
    model: nn.Module,
    pattern: str | Sequence[str] | None = None,
    *,
    predicate: Callable[[str, nn.Parameter], bool] | None = None,
    layer: int | None = None,
    trainable_only: bool = True,
) -> dict[str, nn.Parameter]:
    """Named parameters of ``model`` selected by regex, predicate and/or decoder layer, in model order.

    Args:
        pattern: a regex searched (``re.search``) in each parameter name, or a preset name from
            :data:`PARAMETER_PRESETS` (``"attention"``, ``"attention_qkvo"``, ``"mlp"``, ``"lora"``,
            ``"norm"``, ``"embeddings"``), or a list of either (a name matching any is kept).
        predicate: ``predicate(name, param) -> bool``, applied in addition to ``pattern``.
        layer: keep only parameters of decoder layer ``layer`` (names containing ``layers.<layer>.``
            or ``h.<layer>.``).
        trainable_only: skip parameters with ``requires_grad=False`` (frozen base weights under LoRA).

    Returns:
        ordered dict name -> parameter; ``list(result.values())`` is the ``params`` argument of
        :func:`hessian_eigenvalues` and :func:`hessian_trace`.

    Raises:
        ValueError: when nothing matches (naming the pattern / layer).
    """
    pats: list[str] = []
    if pattern is not None:
        for p in [pattern] if isinstance(pattern, str) else list(pattern):
            pats.append(PARAMETER_PRESETS.get(p, p))
    try:
        regexes = [re.compile(p) for p in pats]
    except re.error as exc:
        raise ValueError(f"pattern: not a valid regular expression ({exc})") from exc
    layer_re = re.compile(rf"(^|\.)(layers|h|layer|blocks)\.{int(layer)}\.") if layer is not None else None
    out: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        if trainable_only and not p.requires_grad:
            continue
        if regexes and not any(r.search(name) for r in regexes):
            continue
        if layer_re is not None and not layer_re.search(name):
            continue
        if predicate is not None and not predicate(name, p):
            continue
        out[name] = p
    if not out:
        raise ValueError(
            f"pattern/predicate/layer: no {'trainable ' if trainable_only else ''}parameter matched "
            f"(pattern={pattern!r}, layer={layer!r}); presets: {sorted(PARAMETER_PRESETS)}"
        )
    return out


# ---------------------------------------------------------------------------------------------------
# loss surfaces
# ---------------------------------------------------------------------------------------------------


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    named = dict(model.named_parameters())
    for k, v in model.named_buffers():
        named.setdefault(k, v)
    return named


def _resolve(model: nn.Module, theta: Mapping[str, torch.Tensor], arg: str) -> dict[str, torch.Tensor]:
    named = _named_tensors(model)
    if not isinstance(theta, Mapping) or not theta:
        raise ValueError(f"{arg}: expected a non-empty dict name -> tensor")
    out = {}
    for name, t in theta.items():
        if name not in named:
            raise ValueError(f"{arg}: {name!r} is not a parameter or buffer of the model")
        if tuple(t.shape) != tuple(named[name].shape):
            raise ValueError(f"{arg}[{name!r}]: shape {tuple(t.shape)} != model's {tuple(named[name].shape)}")
        out[name] = named[name]
    return out


@contextlib.contextmanager
def _restoring(model: nn.Module, targets: Mapping[str, torch.Tensor], eval_mode: bool) -> Iterator[None]:
    """Save the targeted tensors (and the train/eval mode); restore them on exit, even on exception."""
    saved = {k: t.detach().clone() for k, t in targets.items()}
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        yield
    finally:
        with torch.no_grad():
            for k, t in targets.items():
                t.copy_(saved[k])
        model.train(was_training)


def _flat(theta: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    return torch.cat([theta[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])


def _assign_flat(targets: Mapping[str, torch.Tensor], names: Sequence[str], flat: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for n in names:
            t = targets[n]
            k = t.numel()
            t.copy_(flat[offset : offset + k].reshape(t.shape).to(t.device, t.dtype))
            offset += k


def _eval_losses(loss_fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    out = {}
    with torch.no_grad():
        for task, fn in loss_fns.items():
            v = fn()
            out[task] = float(v.detach() if isinstance(v, torch.Tensor) else v)
    return out


def _check_loss_fns(loss_fns) -> None:
    if not isinstance(loss_fns, Mapping) or not loss_fns:
        raise ValueError("loss_fns: expected a non-empty dict task name -> no-argument callable")
    for k, f in loss_fns.items():
        if not callable(f):
            raise ValueError(f"loss_fns[{k!r}]: not callable")


def interpolate_1d(
    model: nn.Module,
    theta_a: Mapping[str, torch.Tensor],
    theta_b: Mapping[str, torch.Tensor],
    loss_fns: Mapping[str, Callable[[], object]],
    alphas: Iterable[float] = tuple(np.linspace(-0.25, 1.25, 13)),
    *,
    eval_mode: bool = True,
) -> pd.DataFrame:
    """Losses on the line theta(alpha) = (1 - alpha) theta_a + alpha theta_b.

    Args:
        model: the model whose tensors named in ``theta_a`` are overwritten during the sweep.
        theta_a, theta_b: dicts name -> tensor (same keys: a subset of the model's parameters/buffers;
            tensors not named keep their current values).
        loss_fns: task name -> no-argument callable returning the loss of the model as it currently is
            (called under ``torch.no_grad()``).
        alphas: points on the line (0 = theta_a, 1 = theta_b; outside [0, 1] extrapolates).
        eval_mode: put the model in eval mode while evaluating.

    Returns:
        DataFrame (alpha, task, loss), one row per (alpha, task). The model's tensors and train/eval
        mode are restored afterwards, also when a loss function raises.
    """
    _check_loss_fns(loss_fns)
    if set(theta_a) != set(theta_b):
        raise ValueError(f"theta_a, theta_b: need the same names; differ in {sorted(set(theta_a) ^ set(theta_b))[:5]}")
    targets = _resolve(model, theta_a, "theta_a")
    _resolve(model, theta_b, "theta_b")
    names = list(theta_a)
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise ValueError("alphas: empty")
    rows = []
    with _restoring(model, targets, eval_mode):
        with torch.no_grad():
            for a in alphas:
                for n in names:
                    ta = theta_a[n].to(targets[n].device, torch.float64)
                    tb = theta_b[n].to(targets[n].device, torch.float64)
                    targets[n].copy_(((1.0 - a) * ta + a * tb).to(targets[n].dtype))
                for task, loss in _eval_losses(loss_fns).items():
                    rows.append({"alpha": a, "task": task, "loss": loss})
    return pd.DataFrame(rows, columns=["alpha", "task", "loss"])


def plane_coordinates(
    origin: Mapping[str, torch.Tensor], point_a: Mapping[str, torch.Tensor], point_b: Mapping[str, torch.Tensor]
) -> dict:
    """Orthonormal basis (u, v) of the plane through three snapshots, by Gram-Schmidt, and their coordinates.

    u = (a - o) / ||a - o||, v = w / ||w|| with w = (b - o) - ((b - o).u) u. Coordinates:
    origin (0, 0), a (||a - o||, 0), b ((b - o).u, ||w||).

    Returns:
        dict with ``names`` (tensor order), ``u``, ``v`` (flat float64 CPU tensors) and ``points``
        {"origin": (0, 0), "a": (x, y), "b": (x, y)}.

    Raises:
        ValueError: when the names differ, a == origin, or b lies on the line through origin and a.
    """
    if not (set(origin) == set(point_a) == set(point_b)) or not origin:
        raise ValueError("origin, point_a, point_b: need the same non-empty set of names")
    names = list(origin)
    o, a, b = _flat(origin, names), _flat(point_a, names), _flat(point_b, names)
    da, db = a - o, b - o
    na = float(torch.linalg.vector_norm(da))
    if na == 0.0:
        raise ValueError("point_a: coincides with origin; the plane is undefined")
    u = da / na
    bu = float(db @ u)
    w = db - bu * u
    nw = float(torch.linalg.vector_norm(w))
    # relative 1e-6: float32 snapshots carry rounding noise ~1e-7 of their norm
    if nw <= 1e-6 * max(float(torch.linalg.vector_norm(db)), 1e-300):
        raise ValueError("point_b: lies on the line through origin and point_a; the plane is undefined")
    return {"names": names, "u": u, "v": w / nw, "points": {"origin": (0.0, 0.0), "a": (na, 0.0), "b": (bu, nw)}}


def plane_2d(
    model: nn.Module,
    origin: Mapping[str, torch.Tensor],
    point_a: Mapping[str, torch.Tensor],
    point_b: Mapping[str, torch.Tensor],
    loss_fns: Mapping[str, Callable[[], object]],
    grid: int | tuple[Sequence[float], Sequence[float]] = 11,
    *,
    margin: float = 0.25,
    eval_mode: bool = True,
) -> pd.DataFrame:
    """Losses on the plane through three snapshots: theta(x, y) = origin + x u + y v.

    (u, v) is the Gram-Schmidt basis of :func:`plane_coordinates`, so x and y are in parameter-space
    units (Euclidean distance over the named tensors). The other arguments are as in :func:`interpolate_1d`.

    Args:
        grid: ``n`` for an n x n grid spanning the three points' coordinates plus ``margin`` times the
            span on each side, or ``(xs, ys)`` two 1-D sequences of coordinates.

    Returns:
        DataFrame (x, y, task, loss), one row per grid point and task. ``df.attrs["points"]`` holds the
        coordinates of ``origin``, ``a`` and ``b``. Model tensors and mode are restored afterwards.
    """
    _check_loss_fns(loss_fns)
    plane = plane_coordinates(origin, point_a, point_b)
    targets = _resolve(model, origin, "origin")
    _resolve(model, point_a, "point_a")
    _resolve(model, point_b, "point_b")
    pts = plane["points"]
    if isinstance(grid, (int, np.integer)):
        if grid < 2:
            raise ValueError(f"grid: expected an int >= 2 or (xs, ys), got {grid!r}")
        px = [p[0] for p in pts.values()]
        py = [p[1] for p in pts.values()]
        sx, sy = max(px) - min(px), max(py) - min(py)
        xs = np.linspace(min(px) - margin * sx, max(px) + margin * sx, int(grid))
        ys = np.linspace(min(py) - margin * sy, max(py) + margin * sy, int(grid))
    else:
        try:
            xs, ys = (np.asarray(g, dtype=np.float64).reshape(-1) for g in grid)
        except (TypeError, ValueError) as exc:
            raise ValueError("grid: expected an int >= 2 or a pair (xs, ys) of 1-D sequences") from exc
        if xs.size == 0 or ys.size == 0:
            raise ValueError("grid: xs and ys must be non-empty")
    names, u, v = plane["names"], plane["u"], plane["v"]
    o = _flat(origin, names)
    rows = []
    with _restoring(model, targets, eval_mode):
        for x in xs:
            for y in ys:
                _assign_flat(targets, names, o + float(x) * u + float(y) * v)
                for task, loss in _eval_losses(loss_fns).items():
                    rows.append({"x": float(x), "y": float(y), "task": task, "loss": loss})
    df = pd.DataFrame(rows, columns=["x", "y", "task", "loss"])
    df.attrs["points"] = pts
    return df


def _conv1d_weight_names(model: nn.Module) -> set[str]:
    """Names of weights stored (in_features, out_features), e.g. GPT-2's transformers Conv1D."""
    out = set()
    for mname, mod in model.named_modules():
        if type(mod).__name__ == "Conv1D" and isinstance(getattr(mod, "weight", None), torch.Tensor):
            out.add(f"{mname}.weight" if mname else "weight")
    return out


def filter_normalized_direction(
    model_params: nn.Module | Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
    seed: int = 0,
    *,
    one_d: Literal["zero", "norm"] = "zero",
) -> dict[str, torch.Tensor]:
    """A random direction normalised per filter (Li et al. 2018), for transformer weights by output row.

    For each weight W with >= 2 dims, viewed as rows W_i = W[i].flatten() (a Linear weight (out, in):
    one row per output unit, the "filter"; an embedding (vocab, d): one row per token), draw
    D ~ N(0, 1) of the same shape and set D_i <- D_i ||W_i|| / ||D_i||. Weights of GPT-2-style
    ``Conv1D`` modules (stored (in, out)) are normalised per column instead when a module is passed.
    1-D tensors (norm gains, biases): ``one_d="zero"`` (default, as Li et al. do for biases and batch
    norm) sets them to zero; ``one_d="norm"`` draws a Gaussian vector rescaled to ||w||.

    Args:
        model_params: a module (its parameters), a dict name -> tensor, or ``named_parameters()``.
        seed: seed of the Gaussian draws (tensors are drawn in the given order on CPU, then moved).

    Returns:
        dict name -> direction tensor (same shape, dtype and device as each parameter).
    """
    if one_d not in ("zero", "norm"):
        raise ValueError(f"one_d: expected 'zero' or 'norm', got {one_d!r}")
    transposed: set[str] = set()
    if isinstance(model_params, nn.Module):
        transposed = _conv1d_weight_names(model_params)
        items = list(model_params.named_parameters())
    elif isinstance(model_params, Mapping):
        items = list(model_params.items())
    else:
        items = list(model_params)
    if not items:
        raise ValueError("model_params: no tensors given")
    gen = torch.Generator().manual_seed(int(seed))
    out: dict[str, torch.Tensor] = {}
    for name, p in items:
        w = p.detach().to("cpu", torch.float64)
        d = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        if w.ndim <= 1:
            if one_d == "zero":
                d = torch.zeros_like(w)
            else:
                dn = torch.linalg.vector_norm(d)
                d = d * (torch.linalg.vector_norm(w) / dn) if dn > 0 else d
        else:
            t = name in transposed
            W = (w.T if t else w).reshape(w.shape[1] if t else w.shape[0], -1)
            D = (d.T if t else d).reshape(W.shape)
            w_norm = torch.linalg.vector_norm(W, dim=1, keepdim=True)
            D = D * (w_norm / torch.linalg.vector_norm(D, dim=1, keepdim=True))
            d = D.reshape((w.T if t else w).shape)
            d = d.T if t else d
        out[name] = d.to(p.device, p.dtype).contiguous()
    return out


def second_order_change(
    loss_fn: LossFn,
    params: Sequence[torch.Tensor],
    delta: Sequence[torch.Tensor],
    *,
    evaluate_actual: bool = False,
) -> dict[str, float]:
    """Taylor prediction of the loss change along delta: L(theta + d) - L(theta) ~ g.d + d^T H d / 2.

    Args:
        loss_fn, params: as in :func:`hessian_eigenvalues`.
        delta: d as a list of tensors shaped like ``params`` (e.g. theta_after - theta_before).
        evaluate_actual: also evaluate L(theta + d) - L(theta) by temporarily adding d to params
            (restored afterwards, also on exception).

    Returns:
        dict with ``loss`` (L(theta)), ``first_order`` (g.d), ``second_order`` (d^T H d / 2),
        ``predicted`` (their sum) and, if asked, ``actual``.
    """
    op = HessianOperator(loss_fn, params)
    d = op.flatten(list(delta))
    first = float(op.gradient() @ d)
    second = 0.5 * float(d @ op.matvec_flat(d))
    out = {"loss": op.loss, "first_order": first, "second_order": second, "predicted": first + second}
    op.release()
    if evaluate_actual:
        saved = [p.detach().clone() for p in op.params]
        try:
            with torch.no_grad():
                for p, dp in zip(op.params, delta):
                    p.add_(dp.to(p.device, p.dtype))
                new = float(loss_fn().detach())
        finally:
            with torch.no_grad():
                for p, s in zip(op.params, saved):
                    p.copy_(s)
        out["actual"] = new - op.loss
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"second_order_change: non-finite result {out}")
    return out
