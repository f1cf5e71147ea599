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

Where the parts live. This module is the stable import path of everything in ``__all__``; the code is
split by step: :mod:`forgetting.mechanisms.hsic` (the HSIC estimators batched over layers, input
checks), :mod:`forgetting.mechanisms.cka_minibatch` (:class:`MinibatchCKA`) and
:mod:`forgetting.mechanisms.readouts` (the readouts below); :func:`linear_cka` and
:func:`cka_by_layer` are here.

Constant representations. If X (or Y) is the same for every example (zero variance after centring;
e.g. at the last prompt token the embedding layer is constant because every prompt ends with the
same token), both forms are 0/0 and CKA is undefined. It is never returned silently as NaN:
``on_constant="nan"`` (default) returns ``nan`` *and* emits a :class:`RuntimeWarning` naming the constant
input; ``on_constant="raise"`` raises :class:`ConstantRepresentationError` (a ``ValueError``).
:func:`cka_by_layer` records the reason in its ``note`` column instead of warning once per layer, and
with ``constant="define"`` replaces the NaN by a defined value (the note stays): CKA compares the
*geometry of the examples* (it is invariant to shifts), and a constant representation has none, so
two constant representations are equal (``CKA = 1``: nothing drifted) and a constant one shares nothing
with a varying one (``CKA = 0``). That is what a drift table needs at the embedding layer of the
last-token readout, where "before" and "after" both see one token.
The debiased self-HSIC of a non-constant input can still be <= 0 for very small n (it is an unbiased
estimate, not a squared norm); that case is handled the same way.

Readouts of a causal LM's hidden states (batch, seq, d) with an attention mask (batch, seq):
``"last"``: the last non-padding token of each sequence (n = batch); ``"mean"``: the mean over
non-padding tokens (n = batch); ``"tokens"``: every non-padding token is one example (n = number of
tokens; dominated by prompt tokens, which every task shares). State which one you report.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch

from forgetting.mechanisms.cka_minibatch import MinibatchCKA
from forgetting.mechanisms.hsic import (
    ArrayLike,
    ConstantRepresentationError,
    OnConstant,
    _as_float64,
    _check_n,
    _check_on_constant,
    _cka_from_terms,
    _is_constant,
    hsic_terms,
    u_centered_gram,
)
from forgetting.mechanisms import readouts as _readouts
from forgetting.mechanisms.readouts import (
    last_token_features,
    masked_token_features,
    mean_token_features,
    readout_features,
)

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

# bound here with a doc comment so that the API reference documents it at this, its stable, path
#: The readouts of ``(batch, seq, d)`` hidden states (module docstring).
READOUTS = _readouts.READOUTS


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
# public: every layer of two models' hidden states
# ---------------------------------------------------------------------------------------------------


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
    constant: Literal["nan", "define"] = "nan",
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
        constant: where a side is constant across examples, ``"nan"`` leaves ``cka`` NaN, ``"define"``
            sets it to 1 when both sides are constant and 0 when one is (module docstring); ``note``
            says so either way. (A debiased self-HSIC that is not positive stays NaN.)

    Returns:
        pandas.DataFrame: long, one row per layer, ``layer`` (int), ``cka`` (float, NaN where undefined),
        ``readout``, ``n`` (number of examples after the readout), ``debiased`` (bool), ``note`` (why
        CKA is undefined for that layer, e.g. "X is constant across examples"; "" otherwise; X is
        ``hiddens_a``).

    All layers go through one batched float64 computation (feature or Gram form, whichever is cheaper).
    """
    if readout not in READOUTS:
        raise ValueError(f"readout: expected one of {READOUTS}, got {readout!r}")
    if constant not in ("nan", "define"):
        raise ValueError(f"constant: expected 'nan' or 'define', got {constant!r}")
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
    const_x, const_y = _is_constant(X), _is_constant(Y)
    vals, notes = _cka_from_terms(hxy, hxx, hyy, const_x, const_y)
    if constant == "define":
        cx, cy = const_x.cpu().numpy(), const_y.cpu().numpy()
        vals = np.where(cx & cy, 1.0, np.where(cx | cy, 0.0, vals))
        notes = [f"{note}; defined as {1 if x and y else 0}" if x or y else note for note, x, y in zip(notes, cx, cy)]
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
