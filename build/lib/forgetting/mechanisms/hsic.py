"""HSIC estimators for linear CKA, batched over layers, and the CKA ratio with its undefined cases.

The core of :mod:`forgetting.mechanisms.drift` (notation and formulas in its module docstring; the
public names here are imported, documented and used from there:
:func:`forgetting.mechanisms.drift.hsic_terms`, :func:`forgetting.mechanisms.drift.u_centered_gram`,
:class:`forgetting.mechanisms.drift.ConstantRepresentationError`). For a batch of L layers,
X (L, n, p1) and Y (L, n, p2) -> three (L,) float64 tensors HSIC(K, L), HSIC(K, K), HSIC(L, L)::

    feature form (costs ~ n (p1 p2 + p1^2 + p2^2)):  ||Yc^T Xc||_F^2, with K 1, diag K from Xc
    Gram form    (costs ~ n^2 (p1 + p2)):            <K, L>_F, or <U(K), U(L)>_F / (n (n - 3)) debiased

and CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)), NaN (with the reason) where a side is constant
across examples or, debiased, has a self-HSIC that is not positive. Also the conversion and checks of
inputs shared by :func:`forgetting.mechanisms.drift.linear_cka`,
:func:`forgetting.mechanisms.drift.cka_by_layer` and :class:`forgetting.mechanisms.drift.MinibatchCKA`.
"""

from __future__ import annotations

from typing import Literal, Union

import numpy as np
import torch

__all__ = ["ConstantRepresentationError", "hsic_terms", "u_centered_gram"]

OnConstant = Literal["nan", "raise"]
ArrayLike = Union[np.ndarray, torch.Tensor]
_ON_CONSTANT = ("nan", "raise")
MIN_N_DEBIASED = 4
# A representation counts as constant when ||Xc||_F <= _CONST_RTOL * ||X||_F (or X is all zeros).
# Rows that are bitwise identical give ||Xc|| ~ 1e-16 ||X|| from float64 rounding of the mean.
_CONST_RTOL = 1e-10


class ConstantRepresentationError(ValueError):
    """CKA is undefined because a representation does not vary across examples (or, debiased, because
    its self-HSIC estimate is not positive)."""


# ---------------------------------------------------------------------------------------------------
# conversion and validation
# ---------------------------------------------------------------------------------------------------


def _as_float64(a, name: str) -> torch.Tensor:
    """numpy array / torch tensor / nested list -> float64 CPU-or-same-device torch tensor."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(a))
    else:
        try:
            t = torch.as_tensor(np.asarray(a, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(a).__name__}") from exc
    if t.is_complex():
        raise TypeError(f"{name}: complex values are not supported")
    return t.to(torch.float64)


def _check_on_constant(on_constant: str) -> None:
    """Raise ValueError unless ``on_constant`` is ``"nan"`` or ``"raise"``."""
    if on_constant not in _ON_CONSTANT:
        raise ValueError(f"on_constant: expected one of {_ON_CONSTANT}, got {on_constant!r}")


def _check_n(n: int, debiased: bool, name: str = "X") -> None:
    """Raise ValueError (naming ``name``) unless n >= 4 (debiased) or n >= 2 (biased) examples."""
    if debiased and n < MIN_N_DEBIASED:
        raise ValueError(
            f"{name}: debiased CKA needs n >= {MIN_N_DEBIASED} examples (rows); got n = {n}"
        )
    if n < 2:
        raise ValueError(f"{name}: CKA needs n >= 2 examples (rows); got n = {n}")


# ---------------------------------------------------------------------------------------------------
# batched HSIC core: X (L, n, p1), Y (L, n, p2) -> per-layer HSIC(K, L), HSIC(K, K), HSIC(L, L)
# ---------------------------------------------------------------------------------------------------


def _center(X: torch.Tensor) -> torch.Tensor:
    """Column-centre over the example axis: (..., n, p) -> (..., n, p)."""
    return X - X.mean(dim=-2, keepdim=True)


def _gram_is_cheaper(n: int, p1: int, p2: int) -> bool:
    """Feature form costs ~ n (p1 p2 + p1^2 + p2^2) flops, Gram form ~ n^2 (p1 + p2) + O(n^2)."""
    return n * n * (p1 + p2) + 8 * n * n < n * (p1 * p2 + p1 * p1 + p2 * p2)


def _sq_frob_cross(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """||A^T B||_F^2 batched: A (L, n, p1), B (L, n, p2) -> (L,)."""
    return torch.linalg.matrix_norm(A.transpose(-1, -2) @ B).square()


def hsic_terms(
    X: torch.Tensor, Y: torch.Tensor, *, debiased: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSIC(K, L), HSIC(K, K), HSIC(L, L) for each leading index of a batch of layers.

    Args:
        X: (L, n, p1) float64 (any values; centred here). Y: (L, n, p2) float64.
        debiased: ``False`` for HSIC_0 up to the common factor 1/(n-1)^2 (it cancels in CKA), i.e.
            ``||Yc^T Xc||_F^2``; ``True`` for HSIC_1 (module docstring), exactly.

    Returns:
        three (L,) float64 tensors. Uses the (p x p) feature form or the (n x n) Gram form, whichever
        costs fewer flops; both give the same numbers up to rounding.
    """
    n, p1, p2 = X.shape[-2], X.shape[-1], Y.shape[-1]
    # Centring changes neither HSIC_0 (H K H) nor HSIC_1 (invariant to adding a constant to the features),
    # and it keeps the cancellations in HSIC_1 benign.
    Xc, Yc = _center(X), _center(Y)
    if _gram_is_cheaper(n, p1, p2):
        K = Xc @ Xc.transpose(-1, -2)
        Lm = Yc @ Yc.transpose(-1, -2)
        if not debiased:
            # K, L are already doubly centred (Xc has zero column means): tr(KHLH) = <K, L>_F
            return (K * Lm).sum((-1, -2)), (K * K).sum((-1, -2)), (Lm * Lm).sum((-1, -2))
        Ku, Lu = u_centered_gram(K, inplace=True), u_centered_gram(Lm, inplace=True)
        c = n * (n - 3)
        return (Ku * Lu).sum((-1, -2)) / c, (Ku * Ku).sum((-1, -2)) / c, (Lu * Lu).sum((-1, -2)) / c
    if not debiased:
        return _sq_frob_cross(Xc, Yc), _sq_frob_cross(Xc, Xc), _sq_frob_cross(Yc, Yc)
    dx = Xc.square().sum(-1)  # (L, n) diag K
    dy = Yc.square().sum(-1)
    rx = Xc @ Xc.sum(-2).unsqueeze(-1)  # (L, n, 1) = K 1 (zero up to rounding after centring)
    ry = Yc @ Yc.sum(-2).unsqueeze(-1)
    rx = rx.squeeze(-1) - dx  # K~ 1
    ry = ry.squeeze(-1) - dy
    sx, sy = rx.sum(-1), ry.sum(-1)  # 1^T K~ 1

    def h1(tr_kl: torch.Tensor, da, db, ra, rb, sa, sb) -> torch.Tensor:
        tr_t = tr_kl - (da * db).sum(-1)  # tr(K~ L~) = tr(KL) - sum_i K_ii L_ii
        return (tr_t + sa * sb / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (ra * rb).sum(-1)) / (n * (n - 3))

    return (
        h1(_sq_frob_cross(Xc, Yc), dx, dy, rx, ry, sx, sy),
        h1(_sq_frob_cross(Xc, Xc), dx, dx, rx, rx, sx, sx),
        h1(_sq_frob_cross(Yc, Yc), dy, dy, ry, ry, sy, sy),
    )



def u_centered_gram(K: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """U-centre Gram matrices (..., n, n) (Szekely & Rizzo 2014), n >= 4.

    U(K)_ij = K~_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2)) for i != j, U(K)_ii = 0, where K~ is K with
    zero diagonal, r = K~ 1, s = 1^T K~ 1. Then HSIC_1(K, L) = <U(K), U(L)>_F / (n (n - 3)).
    ``inplace=True`` overwrites K (no n x n temporaries).
    """
    n = K.shape[-1]
    U = K if inplace else K.clone()
    U.diagonal(dim1=-2, dim2=-1).zero_()
    r = U.sum(-1)
    s = r.sum(-1, keepdim=True)
    # U_ij = K~_ij + a_i + a_j with a = s / (2 (n-1)(n-2)) - r / (n-2): two passes over U
    a = s / (2.0 * (n - 1) * (n - 2)) - r / (n - 2)
    U.add_(a.unsqueeze(-1)).add_(a.unsqueeze(-2))
    U.diagonal(dim1=-2, dim2=-1).zero_()
    return U


def _is_constant(X: torch.Tensor) -> torch.Tensor:
    """(L, n, p) -> (L,) bool: zero variance across examples after centring (relative to ||X||_F)."""
    norm = torch.linalg.vector_norm(X, dim=(-1, -2))
    cnorm = torch.linalg.vector_norm(_center(X), dim=(-1, -2))
    return cnorm <= _CONST_RTOL * norm


def _cka_from_terms(
    hxy: torch.Tensor, hxx: torch.Tensor, hyy: torch.Tensor, const_x: torch.Tensor, const_y: torch.Tensor
) -> tuple[np.ndarray, list[str]]:
    """Ratio hxy / sqrt(hxx hyy) with the undefined cases set to NaN and explained in ``notes``."""
    hxy, hxx, hyy = (t.cpu().numpy() for t in (hxy, hxx, hyy))
    cx, cy = const_x.cpu().numpy(), const_y.cpu().numpy()
    out = np.full(hxy.shape, np.nan)
    notes: list[str] = []
    for i in range(hxy.shape[0]):
        if cx[i] and cy[i]:
            notes.append("both inputs are constant across examples")
        elif cx[i]:
            notes.append("X is constant across examples")
        elif cy[i]:
            notes.append("Y is constant across examples")
        elif hxx[i] <= 0 or hyy[i] <= 0:
            which = "X" if hxx[i] <= 0 else "Y"
            notes.append(f"the debiased self-HSIC of {which} is not positive (too few examples?)")
        else:
            out[i] = hxy[i] / np.sqrt(hxx[i] * hyy[i])
            notes.append("")
    return out, notes
