"""Checkers for chapter 04 (loss-landscape flattening): the top eigenvalue by power iteration, and
Hutchinson's trace estimator.

Each checker runs the reader's function on small symmetric matrices whose answers are known and where
the usual slips give recognisably different numbers, and raises
:class:`forgetting.exercises.ExerciseFeedback` with a message that says what went wrong.

>>> from forgetting.exercises.landscape import check_top_eigenvalue
>>> check_top_eigenvalue(lambda A, n_iter=200: ...)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from forgetting.exercises import ExerciseFeedback, reader_number


def _symmetric(eigenvalues: list[float], seed: int) -> np.ndarray:
    """Q diag(eigenvalues) Q^T with a random orthogonal Q (seeded)."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    return (Q * np.asarray(eigenvalues, dtype=float)) @ Q.T


#: Test spectra as pairs of a name and eigenvalues, a minimum-like spectrum (top one dominates) and a
#: forgetting-like one whose most negative eigenvalue is the largest in magnitude.
EIGEN_CASES = [
    ("a positive-definite matrix (like a Hessian at a minimum)", [9.0, 4.0, 2.5, 1.0, 0.5, 0.1]),
    ("a matrix whose most negative eigenvalue dominates (like a Hessian after forgetting)",
     [5.0, 2.0, 0.5, -1.0, -3.0, -8.0]),
    ("an indefinite matrix with close top eigenvalues", [6.0, 5.5, 1.0, -2.0, -5.9, 0.3]),
]


def check_top_eigenvalue(fn: Callable[..., float], *, rtol: float = 1e-3) -> str:
    """Check ``fn(A, n_iter=...) -> float``: the algebraically largest eigenvalue of a symmetric ``A``.

    The cases include a spectrum whose most negative eigenvalue is the largest in magnitude: plain power
    iteration returns that one (or its absolute value) and is told so.
    """
    for i, (name, eig) in enumerate(EIGEN_CASES):
        A = _symmetric(eig, seed=10 + i)
        want = max(eig)
        got = reader_number(fn(A.copy(), n_iter=500), "the largest eigenvalue",
                            "the eigenvalue, e.g. the Rayleigh quotient v @ A @ v of the unit vector v")
        if np.isclose(got, want, rtol=rtol, atol=1e-6):
            continue
        largest_magnitude = max(eig, key=abs)
        if np.isclose(got, largest_magnitude, rtol=1e-2) and largest_magnitude != want:
            raise ExerciseFeedback(
                f"on {name} you returned {got:.4f}, the eigenvalue of largest MAGNITUDE; the largest is {want}. "
                "Power iteration converges to max |lambda|. Shift: iterate with A + c I where c >= ||A|| "
                "(e.g. the largest absolute row sum), then report the Rayleigh quotient v @ A @ v. Lanczos "
                "(forgetting.mechanisms.landscape.lanczos) gives both ends without a shift.")
        if np.isclose(got, abs(largest_magnitude), rtol=1e-2) and abs(largest_magnitude) != want:
            raise ExerciseFeedback(
                f"on {name} you returned {got:.4f} = |{largest_magnitude}|: the norm ||A v|| gives the magnitude "
                "and loses the sign. Use the Rayleigh quotient v @ A @ v, and shift A so that the largest "
                "eigenvalue is also the largest in magnitude.")
        if np.isclose(got, want + np.abs(A).sum(axis=1).max(), rtol=1e-2):
            raise ExerciseFeedback("you returned the top eigenvalue of the SHIFTED matrix A + c I: subtract c, or "
                                   "take the Rayleigh quotient with A itself")
        raise ExerciseFeedback(f"on {name} with eigenvalues {eig} the largest is {want}; your function gave "
                               f"{got:.4f}. Normalise v after every product and return v @ A @ v.")
    return "Correct: the algebraically largest eigenvalue, also when a negative one is larger in magnitude."


def _trace_cases() -> list[tuple[str, np.ndarray]]:
    return [
        ("a matrix with a few large eigenvalues", _symmetric([50.0, 20.0, 5.0] + [0.1] * 37, seed=3)),
        ("an indefinite matrix", _symmetric(list(np.linspace(-3.0, 6.0, 30)), seed=4)),
    ]


def check_hutchinson(fn: Callable[..., float], *, m: int = 4000) -> str:
    """Check ``fn(matvec, dim, m, seed=0) -> float``: Hutchinson's estimate of ``tr(A)`` from ``m`` products.

    The estimate must land within 5 standard errors of the exact trace; the function must call
    ``matvec`` exactly ``m`` times and work with the matrix only through ``matvec``.
    """
    for name, A in _trace_cases():
        calls = [0]

        def matvec(v, A=A, calls=calls):
            calls[0] += 1
            v = np.asarray(v, dtype=float)
            if v.shape != (len(A),):
                raise ExerciseFeedback(f"matvec takes one vector of shape ({len(A)},); you passed shape {v.shape}")
            return A @ v

        got = reader_number(fn(matvec, len(A), m, seed=0), "the trace estimate",
                            "the mean of g @ matvec(g) over the m random sign vectors g")
        want = float(np.trace(A))
        # Rademacher variance: 2 (||A||_F^2 - sum_i A_ii^2)
        sd = float(np.sqrt(2 * (np.sum(A**2) - np.sum(np.diag(A) ** 2)) / m))
        if calls[0] != m:
            raise ExerciseFeedback(f"your function called matvec {calls[0]} times; use exactly m = {m} products "
                                   "(one per random vector)")
        if abs(got - want) <= 5 * sd + 1e-9:
            continue
        if abs(got / m - want) <= 5 * sd + 1e-9:
            raise ExerciseFeedback("your estimate is m times too large: average g^T A g over the m vectors, "
                                   "do not just sum them")
        if abs(got - want / len(A)) <= 5 * sd / len(A) + 1e-9:
            raise ExerciseFeedback("you divided by the dimension: E[g^T A g] is already the trace for +-1 "
                                   "vectors (E[g_i g_j] = delta_ij); average over the m vectors only")
        frob = float(np.sum(A**2))
        if abs(got - frob) <= 0.2 * frob:
            raise ExerciseFeedback("that looks like ||A||_F^2 = E[|A g|^2]: use g . (A g), not (A g) . (A g)")
        raise ExerciseFeedback(f"on {name} the trace is {want:.3f}; your estimate {got:.3f} is more than 5 "
                               f"standard errors ({sd:.3f}) away. Draw g with entries +-1 (equally likely), "
                               "and average g @ matvec(g).")
    return "Correct: E[g^T A g] = tr(A) for vectors with independent +-1 entries."


def matched_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A learning path (loss falling, in the order it was walked) and a forgetting path (loss rising), as
    ``(learning_loss, learning_lambda, forgetting_loss, forgetting_lambda)``: the learning path's losses
    are not sorted (``np.interp`` needs increasing x), its curvature varies over a factor of 10 (linear and
    log interpolation differ), and the forgetting path's last point lies beyond the learning path's loss range."""
    learning_loss = np.array([3.2, 2.6, 1.9, 1.1, 0.6, 0.3])
    learning_lambda = np.array([0.8, 1.5, 3.0, 6.0, 8.0, 9.0])
    forgetting_loss = np.array([0.5, 0.9, 1.5, 2.4, 3.6])
    forgetting_lambda = np.array([6.5, 4.0, 2.0, 1.2, 0.9])
    return learning_loss, learning_lambda, forgetting_loss, forgetting_lambda


def _ratios(fl: np.ndarray, ll: np.ndarray, lam: np.ndarray, fam: np.ndarray, *, log_loss: bool = False,
            log_lambda: bool = True, clamp: bool = False, sort: bool = True) -> np.ndarray:
    order = np.argsort(ll) if sort else np.arange(len(ll))
    x, y = ll[order], lam[order]
    tx, fx = (np.log(x), np.log(fl)) if log_loss else (x, fl)
    ref = np.exp(np.interp(fx, tx, np.log(y))) if log_lambda else np.interp(fx, tx, y)
    out = fam / ref
    if not clamp:
        out = np.where((fl >= x.min()) & (fl <= x.max()), out, np.nan)
    return out


def check_matched_ratio(fn: Callable[..., np.ndarray]) -> str:
    """Check ``fn(learning_loss, learning_lambda, forgetting_loss, forgetting_lambda) -> array``: for every
    point of the forgetting path, ``lambda_max`` divided by the learning path's ``lambda_max`` at the same
    loss, interpolated in ``log lambda`` (as
    :func:`forgetting.mechanisms.matched_loss.matched_loss_curvature`; the chapter's cell interpolates in
    log-log, which is accepted too), and NaN where the loss lies outside the learning path's range."""
    from forgetting.mechanisms.matched_loss import matched_loss_curvature  # deferred: the reference loads only when this checker runs

    ll, lam, fl, fam = matched_case()
    want = np.exp(matched_loss_curvature(ll, lam, fl, fam)["difference"].to_numpy())
    got = np.asarray(fn(ll.copy(), lam.copy(), fl.copy(), fam.copy()), dtype=float).reshape(-1)
    if got.shape != want.shape:
        raise ExerciseFeedback(f"return one ratio per forgetting point, shape {want.shape}; got shape {got.shape}")
    if np.allclose(got, want, rtol=1e-6, equal_nan=True):
        return ("Correct: the ratio at matched loss, left undefined where the forgetting path leaves the losses the "
                "learning path covers. Below 1: flatter while forgetting than while learning, at the same loss.")
    if np.allclose(got, _ratios(fl, ll, lam, fam, log_loss=True), rtol=1e-6, equal_nan=True):
        return ("Correct (log-log interpolation, as the chapter's cell): the package's matched_loss_curvature "
                "interpolates log lambda linearly in the loss, which differs little between close points.")
    if np.isfinite(got[-1]) and np.isnan(want[-1]):
        raise ExerciseFeedback(f"the forgetting path's last loss ({fl[-1]}) is above every loss of the learning path "
                               f"(at most {ll.max()}): there is no matched point, return NaN there. np.interp does not "
                               "extrapolate, it repeats the end value, which is not a measurement at that loss")
    if any(np.allclose(got, _ratios(fl, ll, lam, fam, log_loss=lg, sort=False, clamp=c), rtol=1e-6, equal_nan=True)
           for lg in (False, True) for c in (False, True)):
        raise ExerciseFeedback("np.interp needs increasing x, and the learning path's losses fall as it is walked: sort "
                               "the learning points by loss first (order = np.argsort(loss))")
    if np.allclose(got, _ratios(fl, ll, lam, fam, log_lambda=False), rtol=1e-6, equal_nan=True):
        raise ExerciseFeedback("you interpolated lambda itself; curvature changes by factors along a path, so "
                               "interpolate log lambda and take exp (np.exp(np.interp(loss, x, np.log(lam))))")
    if np.allclose(got, 1 / want, rtol=1e-6, equal_nan=True):
        raise ExerciseFeedback("the ratio is upside down: forgetting path's lambda over the learning path's")
    raise ExerciseFeedback(f"on matched_case() the ratios are {np.round(want, 4).tolist()}, yours are "
                           f"{np.round(got, 4).tolist()}. Sort the learning points by loss, interpolate log lambda "
                           "at each forgetting loss, divide, and NaN outside the learning losses.")


__all__ = ["EIGEN_CASES", "check_hutchinson", "check_matched_ratio", "check_top_eigenvalue", "matched_case"]
