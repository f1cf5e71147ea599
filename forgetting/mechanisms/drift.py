"""Representational drift: linear centered kernel alignment (CKA) between two sets of representations.

Notation. X is (n, p1), Y is (n, p2): row i of both describes the same example i. Linear kernels
K = X X^T and L = Y Y^T are (n, n); H = I - 11^T / n is the centering matrix; Xc = H X, Yc = H Y.

Biased (Kornblith et al. 2019)::

    HSIC_0(K, L) = tr(K H L H) / (n - 1)^2 = ||Yc^T Xc||_F^2 / (n - 1)^2
    CKA(X, Y)    = HSIC_0(K, L) / sqrt(HSIC_0(K, K) HSIC_0(L, L))
                 = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)

Debiased (unbiased HSIC of Song et al. 2012, used for CKA by Nguyen, Raghu & Kornblith 2021). With
K~ = K with its diagonal set to zero (same for L~), and 1 the all-ones vector::

    HSIC_1(K, L) = [ tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((n - 1)(n - 2)) - 2/(n - 2) 1^T K~ L~ 1 ] / (n (n - 3))

defined for n >= 4. Equivalently HSIC_1(K, L) = <U(K), U(L)>_F / (n (n - 3)) with the U-centred
Gram matrix U(K)_ij = K~_ij - r_i/(n-2) - r_j/(n-2) + s/((n-1)(n-2)) off the diagonal and 0 on it,
where r = K~ 1 and s = 1^T K~ 1 (Szekely & Rizzo 2014); :class:`MinibatchCKA` uses this form.

Minibatch CKA (Nguyen et al. 2021) over batches b = 1..B of the same examples::

    CKA_mb = mean_b HSIC_1(K_b, L_b) / sqrt( mean_b HSIC_1(K_b, K_b) * mean_b HSIC_1(L_b, L_b) )

Cost. Every HSIC term above needs only tr(K L), tr(K~ L~), K~ 1 and L~ 1, and these can be computed
either from the (p1, p2) feature products (X^T Y costs n p1 p2) or from the (n, n) Gram matrices
(costs n^2 (p1 + p2)). :func:`linear_cka` and :func:`cka_by_layer` pick the cheaper form; all
their arithmetic is float64. :class:`MinibatchCKA` always uses the Gram form and forms the Gram
matrices of float32 (and lower precision) inputs in float32 (its docstring says how accurate that is).

Constant representations. If X (or Y) is the same for every example (zero variance after centring;
SCIENCE.md: at the last prompt token the embedding layer is constant because every prompt ends with the
same token), both forms are 0/0 and CKA is undefined. It is never returned silently as NaN:
``on_constant="nan"`` (default) returns ``nan`` *and* emits a :class:`RuntimeWarning` naming the constant
input; ``on_constant="raise"`` raises :class:`ConstantRepresentationError` (a ``ValueError``).
:func:`cka_by_layer` records the reason in its ``note`` column instead of warning once per layer.
The debiased self-HSIC of a non-constant input can still be <= 0 for very small n (it is an unbiased
estimate, not a squared norm); that case is handled the same way.

Readouts of a causal LM's hidden states (batch, seq, d) with an attention mask (batch, seq):
``"last"``: the last non-padding token of each sequence (n = batch); ``"mean"``: the mean over
non-padding tokens (n = batch); ``"tokens"``: every non-padding token is one example (n = number of
tokens; dominated by prompt tokens, SCIENCE.md). State which one you report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal, Union

import numpy as np
import pandas as pd
import torch

__all__ = [
    "ConstantRepresentationError",
    "MinibatchCKA",
    "READOUTS",
    "cka_by_layer",
    "hsic_terms",
    "last_token_features",
    "linear_cka",
    "masked_token_features",
    "mean_token_features",
    "readout_features",
    "u_centered_gram",
]

#: The readouts of ``(batch, seq, d)`` hidden states (module docstring).
READOUTS = ("last", "mean", "tokens")
OnConstant = Literal["nan", "raise"]
ArrayLike = Union[np.ndarray, torch.Tensor]
_ON_CONSTANT = ("nan", "raise")
MIN_N_DEBIASED = 4
# A representation counts as constant when ||Xc||_F <= _CONST_RTOL * ||X||_F (or X is all zeros).
# Rows that are bitwise identical give ||Xc|| ~ 1e-16 ||X|| from float64 rounding of the mean.
_CONST_RTOL = 1e-10
# MinibatchCKA forms Gram matrices of float32/float16/bfloat16 inputs in float32; a layer with
# ||Xc||_F^2 <= _F32_REDO ||X||_F^2 (centred norm below 1e-4 of the norm) is checked in float64 (and its batch is
# done in float64 unless the layer is constant).
_F32_REDO = 1e-8
_LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)
# Wide float32 layers are centred after the Gram product unless the mean carries more than this multiple
# of the centred norm (R^2 = n ||mean||^2 / ||Xc||_F^2; MinibatchCKA._wide_grams): at most about one digit lost.
_WIDE_R2_MAX = 8.0


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
    if on_constant not in _ON_CONSTANT:
        raise ValueError(f"on_constant: expected one of {_ON_CONSTANT}, got {on_constant!r}")


def _check_n(n: int, debiased: bool, name: str = "X") -> None:
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


def _centred_gram_into(X: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Gram matrix Xc Xc^T of the column-centred features X (n, p) into ``out`` (n, n); returns
    ||mean||^2 (a 0-d tensor)."""
    mu = X.mean(0, keepdim=True)
    Xc = X - mu
    torch.mm(Xc, Xc.T, out=out)
    return mu.square().sum()


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


# ---------------------------------------------------------------------------------------------------
# public: one pair
# ---------------------------------------------------------------------------------------------------


def linear_cka(X: ArrayLike, Y: ArrayLike, debiased: bool = False, *, on_constant: OnConstant = "nan") -> float:
    """Linear CKA between X (n, p1) and Y (n, p2) (numpy arrays or torch tensors), in float64.

    Biased: CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F) with column-centred Xc, Yc
    (Kornblith et al. 2019); in [0, 1], invariant to orthogonal transforms, isotropic scaling and shifts
    of either input. Debiased: HSIC_1 (Song et al. 2012) in place of HSIC_0 (module docstring);
    needs n >= 4, can be slightly negative for unrelated inputs.

    Args:
        X: (n, p1) representations, rows are examples. Y: (n, p2), the same examples in the same order.
        debiased: use the unbiased HSIC estimator.
        on_constant: what to do when CKA is undefined because X or Y does not vary across examples:
            ``"nan"`` returns ``float("nan")`` and warns (:class:`RuntimeWarning` naming the input),
            ``"raise"`` raises :class:`ConstantRepresentationError`.

    Returns:
        CKA as a Python float.

    Raises:
        ValueError: wrong shapes, n mismatch, n < 4 with ``debiased=True`` (n < 2 otherwise), or
            non-finite values.
    """
    _check_on_constant(on_constant)
    Xt, Yt = _as_float64(X, "X"), _as_float64(Y, "Y")
    if Xt.ndim != 2:
        raise ValueError(f"X: expected a 2-D array (n, p1), got shape {tuple(Xt.shape)}")
    if Yt.ndim != 2:
        raise ValueError(f"Y: expected a 2-D array (n, p2), got shape {tuple(Yt.shape)}")
    if Xt.shape[0] != Yt.shape[0]:
        raise ValueError(
            f"X, Y: need the same number of examples (rows); got X n = {Xt.shape[0]}, Y n = {Yt.shape[0]}"
        )
    _check_n(Xt.shape[0], debiased)
    if Xt.shape[1] == 0 or Yt.shape[1] == 0:
        raise ValueError(f"X, Y: need at least one feature; got shapes {tuple(Xt.shape)}, {tuple(Yt.shape)}")
    for name, t in (("X", Xt), ("Y", Yt)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
    Xb, Yb = Xt.unsqueeze(0), Yt.unsqueeze(0)
    hxy, hxx, hyy = hsic_terms(Xb, Yb, debiased=debiased)
    vals, notes = _cka_from_terms(hxy, hxx, hyy, _is_constant(Xb), _is_constant(Yb))
    if notes[0]:
        msg = f"linear_cka is undefined: {notes[0]}"
        if on_constant == "raise":
            raise ConstantRepresentationError(msg)
        warnings.warn(msg + "; returning nan", RuntimeWarning, stacklevel=2)
    return float(vals[0])


# ---------------------------------------------------------------------------------------------------
# public: minibatch accumulation over many layer pairs
# ---------------------------------------------------------------------------------------------------


class MinibatchCKA:
    """Accumulate minibatch CKA (Nguyen, Raghu & Kornblith 2021) for many layer pairs at once.

    For batches b of the same n_b examples seen by both sides::

        CKA[i, j] = mean_b HSIC(K_b^i, L_b^j) / sqrt( mean_b HSIC(K_b^i, K_b^i) * mean_b HSIC(L_b^j, L_b^j) )

    where K_b^i = X_b^i X_b^i^T is the linear Gram matrix of x-layer i on batch b (n_b >= 4), and HSIC is
    HSIC_1 (``debiased=True``, the estimator of the paper: the mean over batches is then an unbiased
    estimate of the population HSIC, so the result does not depend on the batch size in expectation) or
    HSIC_0 (``debiased=False``; biased per batch). With a single batch it equals :func:`linear_cka`.

    Args:
        pairs: ``"diagonal"`` compares x-layer i with y-layer i (needs as many layers on both sides);
            ``"all"`` compares every x-layer with every y-layer.
        debiased: HSIC_1 (default, as in the paper) or HSIC_0.

    Use::

        acc = MinibatchCKA()
        for batch in loader:
            acc.update([h_a0, h_a1, ...], [h_b0, h_b1, ...])   # each (n_b, p) or (n_b, ...) flattened
        acc.compute()   # (n_layers,) for "diagonal", (n_x, n_y) for "all"

    How it is computed. :meth:`update` forms the Gram matrices of the centred, flattened features of
    every layer of both sides into a buffer of pending batches: in one batched product of the stacked,
    centred features (per side, or per layer, when widths differ), or, for float32 layers at least as
    wide as the batch, one product per layer from the features as given, centred afterwards in
    O(n^2) (``_wide_grams``). Once the buffer is full (16 MiB) or at :meth:`compute`, every HSIC
    term of the pending batches is a Frobenius inner product of two Gram matrices with zeroed diagonal
    plus corrections from their row sums (``_flush`` gives the formula; when the features are much
    wider than n^2, where those corrections would cancel, the matrices are U-centred first), taken row
    by row in the Gram dtype, with all x-y layer pairs of all pending batches in one batched product.
    Sums over rows and batches are kept in float64.

    Precision. float64 inputs (and numpy arrays other than float32) are handled in float64 throughout,
    as in :func:`linear_cka`. float32, float16 and bfloat16 inputs are centred and multiplied in
    float32, the precision of the inputs (torch-cka does all of it in float32): CKA then differs from
    the float64 result by about 1e-8 (``tests/test_drift.py`` checks the two paths against each
    other). Layers whose centred features are tiny next to their mean (norm ratio below
    1e-4) are checked in float64: constant ones are recognised exactly as in float64, and a batch with
    a nearly constant layer is done in float64, so no precision is lost to cancellation.
    """

    #: Size (bytes) of the buffer of pending Gram matrices.
    PENDING_BYTES = 16 * 2**20

    def __init__(self, pairs: Literal["diagonal", "all"] = "diagonal", debiased: bool = True):
        if pairs not in ("diagonal", "all"):
            raise ValueError(f"pairs: expected 'diagonal' or 'all', got {pairs!r}")
        self.pairs = pairs
        self.debiased = bool(debiased)
        self.n_batches = 0
        self.n_examples = 0
        self._hxy: torch.Tensor | None = None  # float64 running sums of the HSIC terms
        self._hxx: torch.Tensor | None = None
        self._hyy: torch.Tensor | None = None
        self._n_layers: tuple[int, int] | None = None
        self._varies: np.ndarray | None = None  # (Lx + Ly,) bool: not constant on some batch
        self._buf: torch.Tensor | None = None  # (capacity, Lx + Ly, n, n) pending Gram matrices
        self._n_pending = 0
        self._stage: torch.Tensor | None = None  # (Lx + Ly, n, p) reused copy of one batch's features

    # ---- features -> Gram matrices
    @staticmethod
    def _layer_list(feats, side: str) -> list[torch.Tensor]:
        """One side's layers as a list of 2-D tensors (n, p_i): flattened, detached, not copied."""
        if isinstance(feats, torch.Tensor):
            if feats.ndim != 3:
                raise ValueError(f"{side}: expected a sequence of (n, ...) arrays or one (L, n, p) tensor")
            mats = list(feats.detach().unbind(0))
        else:
            if len(feats) == 0:
                raise ValueError(f"{side}: need at least one layer")
            mats = []
            for i, f in enumerate(feats):
                if isinstance(f, torch.Tensor):
                    if f.is_complex():
                        raise TypeError(f"{side}[{i}]: complex values are not supported")
                    mats.append(f.detach())
                elif isinstance(f, np.ndarray) and f.dtype == np.float32:
                    mats.append(torch.from_numpy(np.ascontiguousarray(f)))
                else:
                    mats.append(_as_float64(f, f"{side}[{i}]"))
        n = mats[0].shape[0] if mats[0].ndim else 0
        for i, m in enumerate(mats):
            if m.ndim < 2 or m.shape[0] != n:
                raise ValueError(f"{side}[{i}]: expected (n, ...) with n = {n}, got shape {tuple(m.shape)}")
        return [m.reshape(n, -1) for m in mats]

    def _centred_grams(
        self, mats: list[torch.Tensor], dtype: torch.dtype, out: torch.Tensor, stage: bool
    ) -> torch.Tensor:
        """Gram matrices of the column-centred features of ``mats`` (n, p_i) into ``out`` (L, n, n);
        returns the (L,) squared norms of the column means. Layers of one width: one batched product
        (on a reused staging copy when ``stage``); float32 layers at least as wide as n: see
        :meth:`_wide_grams`."""
        n, p = mats[0].shape
        if dtype == torch.float32 and all(m.dtype == dtype and m.shape[1] >= n for m in mats):
            return self._wide_grams(mats, out)
        if all(m.shape[1] == p for m in mats):
            shape = (len(mats), n, p)
            if stage:
                if self._stage is None or tuple(self._stage.shape) != shape or self._stage.dtype != dtype:
                    self._stage = torch.empty(shape, dtype=dtype, device=mats[0].device)
                F = self._stage
            else:
                F = torch.empty(shape, dtype=dtype, device=mats[0].device)
            if all(m.dtype == dtype for m in mats):
                torch.stack(mats, out=F)
            else:
                for i, m in enumerate(mats):
                    F[i].copy_(m)
            mu = F.mean(-2, keepdim=True)
            F.sub_(mu)
            torch.bmm(F, F.transpose(-1, -2), out=out)
            return mu.square().sum((-1, -2))
        # layers of different widths: one product each
        return torch.stack([_centred_gram_into(m.to(dtype), out[i]) for i, m in enumerate(mats)])

    def _wide_grams(self, mats: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        """Centred Gram matrices of float32 layers with p_i >= n, centred after the product.

        For wide features, copying and centring them costs as much memory traffic as the product
        itself (16 x 4096 features: the copy and the centring pass took longer than the Gram
        products). So K = X X^T is formed from the features as given, one product per layer, and
        centred in O(n^2)::

            H K H = K - r 1^T - 1 r^T + s 1 1^T,   r = K 1 / n,  s = 1^T K 1 / n^2 = ||mean||^2

        In float32 this loses about log10(1 + R^2) digits, R^2 = n ||mean||^2 / ||Xc||_F^2 (the
        mean's share of the norm). Layers with R^2 > ``_WIDE_R2_MAX`` are re-done with the features
        centred first. Returns the (L,) squared norms of the column means.
        """
        n = mats[0].shape[0]
        for i, m in enumerate(mats):
            torch.mm(m, m.T, out=out[i])
        r = out.mean(-1)  # (L, n)
        mu_sq = r.mean(-1)  # (L,)
        out.sub_(r.unsqueeze(-1)).sub_(r.unsqueeze(-2)).add_(mu_sq[:, None, None])
        spread = torch.diagonal(out, dim1=-2, dim2=-1).sum(-1)  # ||Xc||_F^2
        # non-finite input is not redone here: _add_grams checks every layer for it next
        for i in (n * mu_sq > _WIDE_R2_MAX * spread).nonzero().flatten().tolist():
            _centred_gram_into(mats[i], out[i])
        return mu_sq.clamp_min(0.0)

    def _add_grams(self, mats: list[torch.Tensor], lx: int, n: int, dtype: torch.dtype) -> np.ndarray | None:
        """Centred Gram matrices of one batch into the next buffer slot; returns which layers are
        constant (their Gram matrices are set to zero), or None (slot not used) when ``dtype`` is float32
        and a layer is too close to constant for it."""
        device = mats[0].device
        buf = self._buf
        if buf is not None and (buf.shape[-1] != n or buf.dtype != dtype or buf.device != device):
            self._flush()
            buf = None
        if buf is None:
            per_batch = len(mats) * n * n * (4 if dtype == torch.float32 else 8)
            capacity = max(1, min(64, self.PENDING_BYTES // per_batch))
            buf = self._buf = torch.empty((capacity, len(mats), n, n), dtype=dtype, device=device)
            self._n_pending = 0
        G = buf[self._n_pending]
        if all(m.shape[1] == mats[0].shape[1] for m in mats):
            mu_sq = self._centred_grams(mats, dtype, G, stage=True)
        else:
            mx, my = mats[:lx], mats[lx:]
            mu_sq = torch.cat(
                [self._centred_grams(mx, dtype, G[:lx], False), self._centred_grams(my, dtype, G[lx:], False)]
            )
        # ||Xc||_F^2 = tr(Xc Xc^T) and ||X||_F^2 = ||Xc||_F^2 + n ||mean||^2: one check per batch for
        # non-finite input, constant layers and (float32) layers too close to constant for float32
        low = dtype == torch.float32
        dg = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
        ok = dg > (_F32_REDO if low else _CONST_RTOL**2) * (dg + n * mu_sq)  # False also for nan/inf
        const = np.zeros(len(mats), dtype=bool)
        if not bool(ok.all()):
            for i in (~ok).nonzero().flatten().tolist():
                g, m2 = G[i], float(mu_sq[i])
                if low:  # check this layer in float64 (also float32 overflow)
                    g = torch.empty((1, n, n), dtype=torch.float64, device=device)
                    m2 = float(self._centred_grams([mats[i]], torch.float64, g, stage=False)[0])
                    g = g[0]
                d = float(torch.diagonal(g).sum())
                if not math.isfinite(d + n * m2):
                    name = f"xs[{i}]" if i < lx else f"ys[{i - lx}]"
                    raise ValueError(f"{name}: contains NaN or infinite values")
                const[i] = d <= _CONST_RTOL**2 * (d + n * m2)
                if not const[i] and low:
                    return None
                G[i] = 0.0
        self._n_pending += 1
        return const

    def update(self, xs: Sequence[ArrayLike] | torch.Tensor, ys: Sequence[ArrayLike] | torch.Tensor) -> None:
        """Add one batch: xs[i] is x-layer i on the batch (n_b, ...), ys[j] y-layer j (n_b, ...).

        ``xs``/``ys`` may also be one (L, n_b, p) tensor each (e.g. stacked hidden states).
        """
        mx = self._layer_list(xs, "xs")
        my = self._layer_list(ys, "ys")
        lx, ly = len(mx), len(my)
        n = mx[0].shape[0]
        if my[0].shape[0] != n:
            raise ValueError(f"xs, ys: batch sizes differ ({n} vs {my[0].shape[0]})")
        _check_n(n, self.debiased, "xs")
        if self.pairs == "diagonal" and lx != ly:
            raise ValueError(f"xs, ys: pairs='diagonal' needs as many layers on both sides, got {lx} and {ly}")
        if self._n_layers is not None and self._n_layers != (lx, ly):
            raise ValueError("xs, ys: the number of layers changed between batches")
        mats = mx + my
        low = all(m.dtype in _LOW_PRECISION for m in mats)
        const = self._add_grams(mats, lx, n, torch.float32 if low else torch.float64)
        if const is None:  # a float32 layer close to constant: the whole batch in float64
            const = self._add_grams(mats, lx, n, torch.float64)
        if self._n_layers is None:
            self._n_layers = (lx, ly)
            self._varies = ~const
        else:
            self._varies |= ~const
        self.n_batches += 1
        self.n_examples += n
        if self._n_pending == self._buf.shape[0]:
            self._flush()

    def _flush(self) -> None:
        """HSIC terms of the pending batches (one n), added to the float64 running sums.

        Every term is a Frobenius inner product of two centred Gram matrices, taken row by row in the
        Gram dtype (short sums: accurate in float32) and summed over rows and batches in float64.
        Debiased, with K~ the Gram matrix with zero diagonal, r = K~ 1 and s = 1^T K~ 1 (module
        docstring)::

            <U(K), U(L)> = <K~, L~> + s_K s_L / ((n-1)(n-2)) - 2/(n-2) r_K . r_L

        which needs no pass to U-centre the matrices. It subtracts large terms when ||K~||_F is much
        larger than ||U(K)||_F (many features, few examples: the diagonal dominates), so when that
        ratio exceeds 2 for some layer the matrices are U-centred first instead.
        """
        B = self._n_pending
        if B == 0:
            return
        self._n_pending = 0
        lx, ly = self._n_layers
        G = self._buf[:B]  # (B, Lx + Ly, n, n), Gram matrices of centred features
        n = G.shape[-1]
        if self.debiased:
            c = 1.0 / (n * (n - 3))
            c1, c2 = 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2)
            G.diagonal(dim1=-2, dim2=-1).zero_()
        else:  # <HKH, HLH> = <K, L> - 2/n (K 1).(L 1) + (1'K1)(1'L1)/n^2
            c = 1.0 / (n - 1) ** 2
            c1, c2 = 1.0 / n**2, 2.0 / n
        r = G.sum(-1).double()  # (B, Lx + Ly, n); summed in the Gram dtype (a float64 sum is slow)
        s = r.sum(-1)
        t_self = torch.linalg.vector_norm(G, dim=-1).double().square().sum(-1)  # (B, Lx + Ly)
        h_self = t_self + c1 * s * s - c2 * (r * r).sum(-1)  # (B, Lx + Ly)
        if self.debiased and bool((t_self > 4.0 * h_self).any()):  # ||K~|| > 2 ||U(K)||: U-centre
            u_centered_gram(G, inplace=True)
            r = torch.zeros_like(r)
            s = torch.zeros_like(s)
            t_self = h_self = torch.linalg.vector_norm(G, dim=-1).double().square().sum(-1)
        rx, ry, sx, sy = r[:, :lx], r[:, lx:], s[:, :lx], s[:, lx:]
        if self.pairs == "all":  # row i of every batch: (Lx, n) @ (n, Ly), all in one batched product
            Gx = G[:, :lx].permute(0, 2, 1, 3).reshape(B * n, lx, n)
            Gy = G[:, lx:].permute(0, 2, 3, 1).reshape(B * n, n, ly)
            t = torch.bmm(Gx, Gy).double().reshape(B, n, lx, ly).sum(1)  # (B, Lx, Ly)
            cross = (t + c1 * sx[:, :, None] * sy[:, None, :] - c2 * torch.bmm(rx, ry.transpose(1, 2))).sum(0)
        else:  # row dots in the Gram dtype, summed over rows in float64
            t = (G[:, :lx] * G[:, lx:]).sum(-1).double().sum(-1)  # (B, L)
            cross = (t + c1 * sx * sy - c2 * (rx * ry).sum(-1)).sum(0)
        h_self = h_self.sum(0)
        hxx, hyy, hxy = h_self[:lx] * c, h_self[lx:] * c, cross * c
        if self._hxy is None:
            self._hxy, self._hxx, self._hyy = hxy, hxx, hyy
        else:
            self._hxy += hxy
            self._hxx += hxx
            self._hyy += hyy

    def compute(self) -> np.ndarray:
        """CKA per pair: (n_layers,) for ``"diagonal"``, (n_x, n_y) for ``"all"``; NaN where undefined
        (a side whose mean self-HSIC is not positive, e.g. a constant layer)."""
        self._flush()
        if self._hxy is None:
            raise RuntimeError("MinibatchCKA.compute: no batch was added (call update first)")
        lx = self._n_layers[0]
        hxx = self._hxx.cpu().numpy()
        hyy = self._hyy.cpu().numpy()
        hxy = self._hxy.cpu().numpy()
        # a layer that was constant on every batch has exactly zero self-HSIC (its Grams were zeroed)
        hxx = np.where(self._varies[:lx], hxx, 0.0)
        hyy = np.where(self._varies[lx:], hyy, 0.0)
        if self.pairs == "diagonal":
            denom = hxx * hyy
        else:
            denom = hxx[:, None] * hyy[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(denom > 0, hxy / np.sqrt(np.where(denom > 0, denom, 1.0)), np.nan)
        return out

    def reset(self) -> None:
        self.__init__(self.pairs, self.debiased)


# ---------------------------------------------------------------------------------------------------
# public: readouts of (batch, seq, d) hidden states
# ---------------------------------------------------------------------------------------------------


def _check_hidden_mask(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if hidden.ndim < 3:
        raise ValueError(f"hidden: expected (..., batch, seq, d), got shape {tuple(hidden.shape)}")
    B, S = hidden.shape[-3], hidden.shape[-2]
    if attention_mask is None:
        return torch.ones(B, S, dtype=torch.bool, device=hidden.device)
    mask = torch.as_tensor(attention_mask, device=hidden.device)
    if tuple(mask.shape) != (B, S):
        raise ValueError(f"attention_mask: expected shape (batch, seq) = {(B, S)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask: rows {empty[:5]} have no non-padding token")
    return mask


def masked_token_features(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Every non-padding token as one example: (..., batch, seq, d) -> (..., n_tokens, d).

    Tokens are taken in row-major (batch, then position) order; leading dims (e.g. layers) are kept.
    """
    hidden = torch.as_tensor(hidden)
    mask = _check_hidden_mask(hidden, attention_mask)
    return hidden[..., mask, :]


def last_token_features(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The last non-padding token of each sequence: (..., batch, seq, d) -> (..., batch, d).

    Works for right and left padding: position = the largest index with mask 1 in the row.
    """
    hidden = torch.as_tensor(hidden)
    mask = _check_hidden_mask(hidden, attention_mask)
    S = mask.shape[-1]
    pos = torch.arange(S, device=mask.device).expand_as(mask)
    last = torch.where(mask, pos, -1).amax(-1)  # (batch,)
    return hidden[..., torch.arange(mask.shape[0], device=mask.device), last, :]


def mean_token_features(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over non-padding tokens of each sequence: (..., batch, seq, d) -> (..., batch, d)."""
    hidden = torch.as_tensor(hidden)
    mask = _check_hidden_mask(hidden, attention_mask)
    w = mask.to(hidden.dtype)
    return (hidden * w[..., None]).sum(-2) / w.sum(-1, keepdim=True)


def readout_features(
    hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, readout: str = "last"
) -> torch.Tensor:
    """Dispatch to the readout named ``readout`` (one of :data:`READOUTS`)."""
    if readout == "last":
        return last_token_features(hidden, attention_mask)
    if readout == "mean":
        return mean_token_features(hidden, attention_mask)
    if readout == "tokens":
        return masked_token_features(hidden, attention_mask)
    raise ValueError(f"readout: expected one of {READOUTS}, got {readout!r}")


def _layers(hiddens, name: str) -> list[torch.Tensor]:
    """A sequence of (batch, seq, d) tensors or one (layers, batch, seq, d) tensor -> list of layers."""
    if isinstance(hiddens, torch.Tensor):
        if hiddens.ndim != 4:
            raise ValueError(f"{name}: expected (layers, batch, seq, d) or a sequence of (batch, seq, d)")
        return list(hiddens.detach().unbind(0))
    hs = [torch.as_tensor(h).detach() for h in hiddens]
    if not hs:
        raise ValueError(f"{name}: no layers given")
    shapes = {tuple(h.shape) for h in hs}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise ValueError(f"{name}: every layer must be (batch, seq, d) with one shape; got {sorted(shapes)}")
    return hs


def _read_all(hs: list[torch.Tensor], mask, readout: str) -> torch.Tensor:
    """Readout of every layer, then one float64 (L, n, d) tensor (the readout runs in the input dtype
    except "mean", which averages in float64)."""
    if readout == "mean":
        return torch.stack([readout_features(h.to(torch.float64), mask, readout) for h in hs])
    return torch.stack([readout_features(h, mask, readout) for h in hs]).to(torch.float64)


def cka_by_layer(
    hiddens_a: Sequence[torch.Tensor] | torch.Tensor,
    hiddens_b: Sequence[torch.Tensor] | torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    debiased: bool = False,
    readout: Literal["last", "mean", "tokens"] = "last",
) -> pd.DataFrame:
    """CKA between two models' (or snapshots') hidden states, layer by layer, in one batched pass.

    Args:
        hiddens_a, hiddens_b: sequences of L+1 tensors (batch, seq, d), e.g. ``out.hidden_states`` of a
            Hugging Face model called with ``output_hidden_states=True`` on the same inputs (index 0 is
            the embedding output, index l the output of decoder layer l; in transformers the last one
            has the final norm applied). A (layers, batch, seq, d) tensor works too.
        mask: attention mask (batch, seq), 1 for real tokens; ``None`` = no padding.
        debiased: debiased CKA (needs n >= 4 examples after the readout).
        readout: ``"last"``, ``"mean"`` or ``"tokens"`` (module docstring).

    Returns:
        pandas.DataFrame: long, one row per layer, ``layer`` (int), ``cka`` (float, NaN where undefined),
        ``readout``, ``n`` (number of examples after the readout), ``debiased`` (bool), ``note`` (why
        CKA is undefined for that layer, e.g. "X is constant across examples"; "" otherwise; X is
        ``hiddens_a``).

    All layers go through one batched float64 computation (feature or Gram form, whichever is cheaper).
    """
    if readout not in READOUTS:
        raise ValueError(f"readout: expected one of {READOUTS}, got {readout!r}")
    A = _layers(hiddens_a, "hiddens_a")
    B = _layers(hiddens_b, "hiddens_b")
    if (len(A),) + tuple(A[0].shape[:2]) != (len(B),) + tuple(B[0].shape[:2]):
        raise ValueError(
            "hiddens_a, hiddens_b: need the same (layers, batch, seq); got "
            f"{(len(A),) + tuple(A[0].shape[:2])} and {(len(B),) + tuple(B[0].shape[:2])}"
        )
    if mask is not None:
        mask = torch.as_tensor(mask).to(A[0].device)
    X = _read_all(A, mask, readout)  # (L, n, d) float64
    Y = _read_all(B, mask, readout)
    n = X.shape[-2]
    _check_n(n, debiased, f"readout {readout!r} (n examples)")
    for name, t in (("hiddens_a", X), ("hiddens_b", Y)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
    hxy, hxx, hyy = hsic_terms(X, Y, debiased=debiased)
    vals, notes = _cka_from_terms(hxy, hxx, hyy, _is_constant(X), _is_constant(Y))
    return pd.DataFrame(
        {
            "layer": np.arange(X.shape[0], dtype=np.int64),
            "cka": vals,
            "readout": readout,
            "n": n,
            "debiased": bool(debiased),
            "note": notes,
        }
    )


def intermediate_layers(layers: Sequence[int]) -> list[int]:
    """The hidden-state indices strictly between the embedding output (0) and the last layer's output:
    ``1 .. L-1`` for ``L + 1`` hidden states ``0 .. L`` (the last one carries the final norm). These are
    the paper's "intermediate layers" wherever this package reports drift."""
    layers = sorted(int(x) for x in set(layers))
    return [x for x in layers if layers[0] < x < layers[-1]]
