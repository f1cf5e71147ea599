"""Curvature at matched loss: is the old task's loss surface flatter *after forgetting* than it was at
the same loss while the task was being learned?

The top Hessian eigenvalue of cross-entropy rises with the loss itself, so comparing the old task's
minimum (low loss) with the forgotten model (high loss) confounds curvature with loss level. Two paths
through (loss, curvature) of the same task A remove that:

- the *learning path*: ``(L_A, lambda_max)`` at snapshots along A's own training (stage 1);
- the *forgetting path*: ``(L_A, lambda_max)`` of A at snapshots while B trains (stage 2).

With the learning path's points ``(l_j, log lambda_j)`` sorted by loss (points of equal loss averaged)
and ``ell(L)`` its piecewise-linear interpolation in ``log lambda`` against ``L``, each forgetting point
``(L_i, lambda_i)`` whose loss lies in the range the learning path covers, ``min_j l_j <= L_i <= max_j l_j``,
gets::

    d_i = log lambda_i - ell(L_i)

``d_i < 0``: at the same loss the forgotten model sits in a flatter region than the learning model did
("flatter at matched loss"); ``d_i > 0``: sharper. Points outside the covered range, or with
``lambda <= 0`` (no logarithm), are not matched. :func:`matched_loss_summary` averages ``d_i`` over the
matched points: ``D = (1 / |M|) sum_{i in M} d_i`` (natural log; ``exp(D)`` is the geometric-mean ratio).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["matched_loss_curvature", "matched_loss_summary"]


def _points(loss, lam, name: str) -> tuple[np.ndarray, np.ndarray]:
    loss, lam = np.asarray(loss, dtype=np.float64).reshape(-1), np.asarray(lam, dtype=np.float64).reshape(-1)
    if loss.shape != lam.shape:
        raise ValueError(f"{name}: loss and lambda need the same length, got {loss.size} and {lam.size}")
    if not (np.isfinite(loss).all() and np.isfinite(lam).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return loss, lam


def matched_loss_curvature(learning_loss, learning_lambda, forgetting_loss, forgetting_lambda) -> pd.DataFrame:
    """``d_i = log lambda_i - ell(L_i)`` for every forgetting point (module docstring).

    Args:
        learning_loss, learning_lambda: (m,) the learning path's losses and top eigenvalues (any order).
        forgetting_loss, forgetting_lambda: (k,) the forgetting path's.

    Returns:
        a frame with one row per forgetting point (in the given order) and the columns ``loss``, ``lambda_max``, ``log_lambda``,
        ``log_lambda_learning`` (``ell(L_i)``, NaN where not matched), ``difference`` (``d_i``, NaN where
        not matched), ``matched`` (bool), ``bracket`` (the loss width ``l_{j+1} - l_j`` of the learning
        path's interval that ``L_i`` is interpolated in: a wide one means a coarse learning path there).

    Raises:
        ValueError: mismatched lengths, non-finite values, or fewer than two learning points with
            ``lambda > 0`` and distinct losses.
    """
    ll, lam_l = _points(learning_loss, learning_lambda, "learning")
    fl, lam_f = _points(forgetting_loss, forgetting_lambda, "forgetting")
    keep = lam_l > 0
    grid = pd.DataFrame({"loss": ll[keep], "log": np.log(lam_l[keep])}).groupby("loss", sort=True)["log"].mean()
    if len(grid) < 2:
        raise ValueError("learning: need at least two points with lambda > 0 at distinct losses")
    x, y = grid.index.to_numpy(), grid.to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        log_f = np.where(lam_f > 0, np.log(np.where(lam_f > 0, lam_f, 1.0)), np.nan)
    matched = (fl >= x[0]) & (fl <= x[-1]) & np.isfinite(log_f)
    reference = np.where(matched, np.interp(fl, x, y), np.nan)
    right = np.clip(np.searchsorted(x, fl, side="left"), 1, len(x) - 1)
    bracket = np.where(matched, x[right] - x[right - 1], np.nan)
    return pd.DataFrame({"loss": fl, "lambda_max": lam_f, "log_lambda": log_f, "log_lambda_learning": reference,
                         "difference": log_f - reference, "matched": matched, "bracket": bracket})


def matched_loss_summary(points: pd.DataFrame) -> dict:
    """``D`` = the mean ``difference`` over the matched points of :func:`matched_loss_curvature`, with
    ``n_matched``, ``n_points``, the matched loss range ``loss_low``, ``loss_high`` and ``max_bracket``,
    the widest learning-path interval used (NaN when none)."""
    m = points[points["matched"]]
    return {"max_bracket": float(m["bracket"].max()) if len(m) else float("nan"), "value": float(m["difference"].mean()) if len(m) else float("nan"), "n_matched": len(m),
            "n_points": len(points), "loss_low": float(m["loss"].min()) if len(m) else float("nan"),
            "loss_high": float(m["loss"].max()) if len(m) else float("nan")}
