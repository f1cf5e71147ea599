"""References for the CKA tests, written out from the definitions with explicit n x n Gram matrices,
and the inputs they are compared on (shared by test_drift, test_hsic and test_cka_minibatch)."""

from __future__ import annotations

import numpy as np
import torch

from forgetting.mechanisms.drift import u_centered_gram


def ref_hsic0(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_0 = tr(K H L H) / (n - 1)^2, H = I - 11^T / n (Gretton et al. 2005)."""
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def ref_hsic1(K: np.ndarray, L: np.ndarray) -> float:
    """Unbiased HSIC (Song et al. 2012), with K~, L~ the Gram matrices with zeroed diagonals:

    [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1] / (n (n-3))
    """
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    return float(
        (
            np.trace(Kt @ Lt)
            + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
        )
        / (n * (n - 3))
    )


def ref_cka(X: np.ndarray, Y: np.ndarray, debiased: bool) -> float:
    """CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K = X X^T, L = Y Y^T."""
    K, L = X @ X.T, Y @ Y.T
    h = ref_hsic1 if debiased else ref_hsic0
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def related_pair(rng: np.random.Generator, n: int, p1: int, p2: int) -> tuple[np.ndarray, np.ndarray]:
    """X (n, p1) and a noisy nonlinear function of it Y (n, p2), neither centred."""
    X = rng.normal(size=(n, p1)) + 3.0  # not centred on purpose
    Y = np.tanh(X @ rng.normal(size=(p1, p2)) / np.sqrt(p1)) + 0.5 * rng.normal(size=(n, p2)) - 1.0
    return X, Y


def reference_minibatch_cka(batches_x, batches_y, pairs: str, debiased: bool) -> np.ndarray:
    """The straightforward algorithm (as MinibatchCKA was first written): per batch and layer, the
    float64 Gram matrix of the centred features, U-centred (debiased) or double-centred (biased), and
    every HSIC term as a Frobenius inner product, summed over batches."""
    lx, ly = len(batches_x[0]), len(batches_y[0])
    hxy, hxx, hyy = np.zeros((lx, ly)), np.zeros(lx), np.zeros(ly)
    for xs, ys in zip(batches_x, batches_y):
        n = xs[0].shape[0]

        def centred(f):
            f = np.asarray(f, dtype=np.float64).reshape(n, -1)
            fc = f - f.mean(0)
            K = torch.tensor(fc @ fc.T)
            if debiased:
                return u_centered_gram(K).numpy(), n * (n - 3)
            H = np.eye(n) - 1.0 / n
            return H @ K.numpy() @ H, (n - 1) ** 2

        Ks = [centred(x) for x in xs]
        Ls = [centred(y) for y in ys]
        for i, (K, c) in enumerate(Ks):
            hxx[i] += (K * K).sum() / c
            for j, (L, _) in enumerate(Ls):
                hxy[i, j] += (K * L).sum() / c
        for j, (L, c) in enumerate(Ls):
            hyy[j] += (L * L).sum() / c
    out = hxy / np.sqrt(hxx[:, None] * hyy[None, :])
    return out if pairs == "all" else np.diag(out)


def hidden_like_batches(seed: int, sizes, widths, dtype=torch.float32, offset: float = 4.0):
    """Batches of layer features that look like residual-stream states: a shared random stream plus
    per-layer drift, a large common offset (the mean across examples is far from zero), float32."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for n in sizes:
        base = torch.randn(n, max(widths), generator=g, dtype=torch.float64)
        bx, by = [], []
        for p in widths:
            h = base[:, :p] + 0.3 * torch.randn(n, p, generator=g, dtype=torch.float64)
            h = h + offset * torch.randn(1, p, generator=g, dtype=torch.float64)
            bx.append(h.to(dtype))
            by.append((h + 0.5 * torch.randn(n, p, generator=g, dtype=torch.float64)).to(dtype))
            base = torch.tanh(base)
        xs.append(bx)
        ys.append(by)
    return xs, ys
