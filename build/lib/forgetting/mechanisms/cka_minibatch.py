"""Minibatch CKA (Nguyen, Raghu & Kornblith 2021) accumulated over batches for many layer pairs.

The class :class:`forgetting.mechanisms.drift.MinibatchCKA` lives here and is imported, documented
and used from :mod:`forgetting.mechanisms.drift` (notation in its module docstring). Per batch of
n examples it runs three steps, each a function here:

1. Gram-matrix formation (``_centred_grams``, ``_wide_grams``): for every layer of both sides the
   (n, n) Gram matrix K = Xc Xc^T of the column-centred, flattened features Xc = X - 1 mean(X), into
   one slot (L, n, n) of a buffer of pending batches (L = Lx + Ly layers), with ||mean(X)||^2 per layer.
2. Constant layers (``_constant_layers``): from ||Xc||_F^2 = tr K and ||X||_F^2 = tr K + n ||mean||^2,
   a layer with tr K <= rtol^2 ||X||_F^2 is constant (its K is zeroed); float32 layers too close to
   constant send the batch to float64.
3. HSIC accumulation (``_pending_hsic``), once the buffer is full or at ``compute``: with K~ the Gram
   matrix with zeroed diagonal (debiased) or K itself (biased), r = K~ 1 and s = 1^T K~ 1::

       HSIC(K, L) = c [ <K~, L~>_F + c1 s_K s_L - c2 r_K . r_L ]
       debiased:  c = 1 / (n (n - 3)),  c1 = 1 / ((n - 1)(n - 2)),  c2 = 2 / (n - 2)
       biased:    c = 1 / (n - 1)^2,    c1 = 1 / n^2,               c2 = 2 / n

   summed over the pending batches in float64; ``MinibatchCKA.compute`` takes the ratio
   sum HSIC(K, L) / sqrt(sum HSIC(K, K) sum HSIC(L, L)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from forgetting.mechanisms.hsic import _CONST_RTOL, ArrayLike, _as_float64, _check_n, u_centered_gram

__all__ = ["MinibatchCKA"]

# MinibatchCKA forms Gram matrices of float32/float16/bfloat16 inputs in float32; a layer with
# ||Xc||_F^2 <= _F32_REDO ||X||_F^2 (centred norm below 1e-4 of the norm) is checked in float64 (and its batch is
# done in float64 unless the layer is constant).
_F32_REDO = 1e-8
_LOW_PRECISION = (torch.float32, torch.float16, torch.bfloat16)
# Wide float32 layers are centred after the Gram product unless the mean carries more than this multiple
# of the centred norm (R^2 = n ||mean||^2 / ||Xc||_F^2; _wide_grams): at most about one digit lost.
_WIDE_R2_MAX = 8.0


# ---------------------------------------------------------------------------------------------------
# 1. features -> centred Gram matrices
# ---------------------------------------------------------------------------------------------------


def _layer_list(feats, side: str) -> list[torch.Tensor]:
    """One side's layers as a list of 2-D tensors (n, p_i): flattened, detached, not copied.

    ``feats``: a sequence of (n, ...) arrays or tensors, or one (L, n, p) tensor. float32 numpy arrays
    stay float32; other non-tensors become float64.
    """
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


def _centred_gram_into(X: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Gram matrix Xc Xc^T of the column-centred features X (n, p) into ``out`` (n, n); returns
    ||mean||^2 (a 0-d tensor)."""
    mu = X.mean(0, keepdim=True)
    Xc = X - mu
    torch.mm(Xc, Xc.T, out=out)
    return mu.square().sum()


class _Staging:
    """A reused (L, n, p) buffer for one batch's stacked features, reallocated when its shape or dtype
    changes (saves an allocation per batch)."""

    def __init__(self) -> None:
        self.buf: torch.Tensor | None = None

    def get(self, shape: tuple[int, int, int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The (L, n, p) buffer, allocated on ``device`` when missing or of another shape or dtype."""
        if self.buf is None or tuple(self.buf.shape) != shape or self.buf.dtype != dtype:
            self.buf = torch.empty(shape, dtype=dtype, device=device)
        return self.buf


def _wide_grams(mats: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Centred Gram matrices of float32 layers with p_i >= n, centred after the product.

    For wide features, copying and centring them costs as much memory traffic as the product
    itself (16 x 4096 features: the copy and the centring pass took longer than the Gram
    products). So K = X X^T is formed from the features as given, one product per layer, and
    centred in O(n^2)::

        H K H = K - r 1^T - 1 r^T + s 1 1^T,   r = K 1 / n,  s = 1^T K 1 / n^2 = ||mean||^2

    In float32 this loses about log10(1 + R^2) digits, R^2 = n ||mean||^2 / ||Xc||_F^2 (the
    mean's share of the norm). Layers with R^2 > ``_WIDE_R2_MAX`` are re-done with the features
    centred first. ``out``: (L, n, n). Returns the (L,) squared norms of the column means.
    """
    n = mats[0].shape[0]
    for i, m in enumerate(mats):
        torch.mm(m, m.T, out=out[i])
    r = out.mean(-1)  # (L, n)
    mu_sq = r.mean(-1)  # (L,)
    out.sub_(r.unsqueeze(-1)).sub_(r.unsqueeze(-2)).add_(mu_sq[:, None, None])
    spread = torch.diagonal(out, dim1=-2, dim2=-1).sum(-1)  # ||Xc||_F^2
    # non-finite input is not redone here: _constant_layers checks every layer for it next
    for i in (n * mu_sq > _WIDE_R2_MAX * spread).nonzero().flatten().tolist():
        _centred_gram_into(mats[i], out[i])
    return mu_sq.clamp_min(0.0)


def _centred_grams(
    mats: list[torch.Tensor], dtype: torch.dtype, out: torch.Tensor, staging: _Staging | None = None
) -> torch.Tensor:
    """Gram matrices of the column-centred features of ``mats`` (n, p_i) into ``out`` (L, n, n), formed in
    ``dtype``; returns the (L,) squared norms of the column means.

    float32 layers all at least as wide as n: :func:`_wide_grams`. Layers of one width: stacked into an
    (L, n, p) copy (``staging``'s buffer when given), centred, one batched product. Otherwise one
    product per layer.
    """
    n, p = mats[0].shape
    if dtype == torch.float32 and all(m.dtype == dtype and m.shape[1] >= n for m in mats):
        return _wide_grams(mats, out)
    if all(m.shape[1] == p for m in mats):
        shape = (len(mats), n, p)
        if staging is not None:
            F = staging.get(shape, dtype, mats[0].device)
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


# ---------------------------------------------------------------------------------------------------
# 2. constant layers
# ---------------------------------------------------------------------------------------------------


def _constant_layers(G: torch.Tensor, mu_sq: torch.Tensor, mats: list[torch.Tensor], lx: int) -> np.ndarray | None:
    """Which layers of one batch are constant across examples; their Gram matrices in G are zeroed.

    G: (L, n, n) centred Gram matrices (float32 or float64) of ``mats``, mu_sq: (L,) ||mean||^2. With
    ||Xc||_F^2 = tr K and ||X||_F^2 = tr K + n ||mean||^2 there is one check per batch for non-finite
    input (ValueError naming ``xs[i]`` / ``ys[j]``; ``lx`` layers are x-layers), constant layers
    (tr K <= _CONST_RTOL^2 ||X||_F^2) and, in float32, layers too close to constant for float32
    (tr K <= _F32_REDO ||X||_F^2), which are checked again in float64.

    Returns:
        (L,) bool, or None when a float32 layer is nearly constant but not constant: the batch must
        then be done in float64.
    """
    n = G.shape[-1]
    device = G.device
    low = G.dtype == torch.float32
    dg = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
    ok = dg > (_F32_REDO if low else _CONST_RTOL**2) * (dg + n * mu_sq)  # False also for nan/inf
    const = np.zeros(len(mats), dtype=bool)
    if not bool(ok.all()):
        for i in (~ok).nonzero().flatten().tolist():
            g, m2 = G[i], float(mu_sq[i])
            if low:  # check this layer in float64 (also float32 overflow)
                g = torch.empty((1, n, n), dtype=torch.float64, device=device)
                m2 = float(_centred_grams([mats[i]], torch.float64, g)[0])
                g = g[0]
            d = float(torch.diagonal(g).sum())
            if not math.isfinite(d + n * m2):
                name = f"xs[{i}]" if i < lx else f"ys[{i - lx}]"
                raise ValueError(f"{name}: contains NaN or infinite values")
            const[i] = d <= _CONST_RTOL**2 * (d + n * m2)
            if not const[i] and low:
                return None
            G[i] = 0.0
    return const


# ---------------------------------------------------------------------------------------------------
# 3. HSIC terms of the pending batches
# ---------------------------------------------------------------------------------------------------


def _hsic_constants(n: int, debiased: bool) -> tuple[float, float, float]:
    """(c, c1, c2) of HSIC(K, L) = c [<K~, L~> + c1 s_K s_L - c2 r_K . r_L] (module docstring).

    Biased: <HKH, HLH> = <K, L> - 2/n (K 1).(L 1) + (1'K1)(1'L1)/n^2, over (n - 1)^2.
    """
    if debiased:
        return 1.0 / (n * (n - 3)), 1.0 / ((n - 1) * (n - 2)), 2.0 / (n - 2)
    return 1.0 / (n - 1) ** 2, 1.0 / n**2, 2.0 / n


def _self_terms(
    G: torch.Tensor, debiased: bool, c1: float, c2: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row sums r (B, L, n), their totals s (B, L) and the self terms <K~, K~> + c1 s^2 - c2 r.r (B, L),
    all float64, for the pending Gram matrices G (B, L, n, n) (diagonals already zeroed if ``debiased``).

    The Frobenius norms are taken row by row in the Gram dtype (short sums: accurate in float32) and
    summed over rows in float64. Debiased, the correction terms subtract large numbers when ||K~||_F is
    much larger than ||U(K)||_F (many features, few examples: the diagonal dominates); when that ratio
    exceeds 2 for some layer, G is U-centred in place instead (then r = s = 0).
    """
    r = G.sum(-1).double()  # (B, Lx + Ly, n); summed in the Gram dtype (a float64 sum is slow)
    s = r.sum(-1)
    t_self = torch.linalg.vector_norm(G, dim=-1).double().square().sum(-1)  # (B, Lx + Ly)
    h_self = t_self + c1 * s * s - c2 * (r * r).sum(-1)  # (B, Lx + Ly)
    if debiased and bool((t_self > 4.0 * h_self).any()):  # ||K~|| > 2 ||U(K)||: U-centre
        u_centered_gram(G, inplace=True)
        r = torch.zeros_like(r)
        s = torch.zeros_like(s)
        h_self = torch.linalg.vector_norm(G, dim=-1).double().square().sum(-1)
    return r, s, h_self


def _cross_terms(
    G: torch.Tensor, r: torch.Tensor, s: torch.Tensor, lx: int, c1: float, c2: float, pairs: str
) -> torch.Tensor:
    """sum_b <K~_b^i, L~_b^j> + c1 s_K s_L - c2 r_K . r_L, float64: (Lx, Ly) for ``pairs="all"``, (L,)
    for ``"diagonal"``. G: (B, Lx + Ly, n, n), the first ``lx`` layers the x side; r, s from
    :func:`_self_terms`."""
    B, n = G.shape[0], G.shape[-1]
    ly = G.shape[1] - lx
    rx, ry, sx, sy = r[:, :lx], r[:, lx:], s[:, :lx], s[:, lx:]
    if pairs == "all":  # row i of every batch: (Lx, n) @ (n, Ly), all in one batched product
        Gx = G[:, :lx].permute(0, 2, 1, 3).reshape(B * n, lx, n)
        Gy = G[:, lx:].permute(0, 2, 3, 1).reshape(B * n, n, ly)
        t = torch.bmm(Gx, Gy).double().reshape(B, n, lx, ly).sum(1)  # (B, Lx, Ly)
        return (t + c1 * sx[:, :, None] * sy[:, None, :] - c2 * torch.bmm(rx, ry.transpose(1, 2))).sum(0)
    # row dots in the Gram dtype, summed over rows in float64
    t = (G[:, :lx] * G[:, lx:]).sum(-1).double().sum(-1)  # (B, L)
    return (t + c1 * sx * sy - c2 * (rx * ry).sum(-1)).sum(0)


def _pending_hsic(
    G: torch.Tensor, lx: int, debiased: bool, pairs: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSIC sums over the pending batches' centred Gram matrices G (B, Lx + Ly, n, n), overwritten.

    Returns:
        float64 (hxy, hxx, hyy): hxy (Lx, Ly) (``pairs="all"``) or (L,) (``"diagonal"``), hxx (Lx,),
        hyy (Ly,), each sum_b HSIC over the B batches.
    """
    c, c1, c2 = _hsic_constants(G.shape[-1], debiased)
    if debiased:
        G.diagonal(dim1=-2, dim2=-1).zero_()
    r, s, h_self = _self_terms(G, debiased, c1, c2)
    cross = _cross_terms(G, r, s, lx, c1, c2, pairs)
    h_self = h_self.sum(0)
    return cross * c, h_self[:lx] * c, h_self[lx:] * c


# ---------------------------------------------------------------------------------------------------
# the accumulator
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

    How it is computed (the steps are functions of ``forgetting.mechanisms.cka_minibatch``).
    :meth:`update` forms the Gram matrices of the centred, flattened features of
    every layer of both sides into a buffer of pending batches: in one batched product of the stacked,
    centred features (per side, or per layer, when widths differ), or, for float32 layers at least as
    wide as the batch, one product per layer from the features as given, centred afterwards in
    O(n^2) (``_wide_grams``). Once the buffer is full (16 MiB) or at :meth:`compute`, every HSIC
    term of the pending batches is a Frobenius inner product of two Gram matrices with zeroed diagonal
    plus corrections from their row sums (``_pending_hsic``; when the features are much
    wider than n^2, where those corrections would cancel, the matrices are U-centred first), taken row
    by row in the Gram dtype, with all x-y layer pairs of all pending batches in one batched product.
    Sums over rows and batches are kept in float64.

    Precision. float64 inputs (and numpy arrays other than float32) are handled in float64 throughout,
    as in :func:`linear_cka`. float32, float16 and bfloat16 inputs are centred and multiplied in
    float32, the precision of the inputs (torch-cka does all of it in float32): CKA then differs from
    the float64 result by about 1e-8 (``tests/mechanisms/test_drift.py`` checks the two paths against
    each other). Layers whose centred features are tiny next to their mean (norm ratio below
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
        self._staging = _Staging()  # (Lx + Ly, n, p) reused copy of one batch's features

    def _slot(self, n_layers: int, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The next free (n_layers, n, n) slot of the pending buffer; the buffer is flushed first and
        reallocated when n, the dtype or the device change."""
        buf = self._buf
        if buf is not None and (buf.shape[-1] != n or buf.dtype != dtype or buf.device != device):
            self._flush()
            buf = None
        if buf is None:
            per_batch = n_layers * n * n * (4 if dtype == torch.float32 else 8)
            capacity = max(1, min(64, self.PENDING_BYTES // per_batch))
            buf = self._buf = torch.empty((capacity, n_layers, n, n), dtype=dtype, device=device)
            self._n_pending = 0
        return buf[self._n_pending]

    def _add_grams(self, mats: list[torch.Tensor], lx: int, n: int, dtype: torch.dtype) -> np.ndarray | None:
        """Centred Gram matrices of one batch into the next buffer slot; returns which layers are
        constant (their Gram matrices are set to zero), or None (slot not used) when ``dtype`` is float32
        and a layer is too close to constant for it."""
        G = self._slot(len(mats), n, dtype, mats[0].device)
        if all(m.shape[1] == mats[0].shape[1] for m in mats):
            mu_sq = _centred_grams(mats, dtype, G, self._staging)
        else:
            mx, my = mats[:lx], mats[lx:]
            mu_sq = torch.cat([_centred_grams(mx, dtype, G[:lx]), _centred_grams(my, dtype, G[lx:])])
        const = _constant_layers(G, mu_sq, mats, lx)
        if const is not None:
            self._n_pending += 1
        return const

    def update(self, xs: Sequence[ArrayLike] | torch.Tensor, ys: Sequence[ArrayLike] | torch.Tensor) -> None:
        """Add one batch: xs[i] is x-layer i on the batch (n_b, ...), ys[j] y-layer j (n_b, ...).

        ``xs``/``ys`` may also be one (L, n_b, p) tensor each (e.g. stacked hidden states).
        """
        mx = _layer_list(xs, "xs")
        my = _layer_list(ys, "ys")
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
        """HSIC terms of the pending batches (one n; :func:`_pending_hsic`), added to the float64
        running sums."""
        B = self._n_pending
        if B == 0:
            return
        self._n_pending = 0
        hxy, hxx, hyy = _pending_hsic(self._buf[:B], self._n_layers[0], self.debiased, self.pairs)
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
        """Forget every batch added so far (keeps ``pairs`` and ``debiased``)."""
        self.__init__(self.pairs, self.debiased)
