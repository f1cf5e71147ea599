"""Loss surfaces between snapshots: losses on a line, on a plane, and random filter-normalised directions.

The functions here are imported, documented and used from :mod:`forgetting.mechanisms.landscape`
(:func:`forgetting.mechanisms.landscape.interpolate_1d`, :func:`forgetting.mechanisms.landscape.plane_2d`,
:func:`forgetting.mechanisms.landscape.plane_coordinates`,
:func:`forgetting.mechanisms.landscape.filter_normalized_direction`). A snapshot theta is a dict
name -> tensor over some of a model's parameters and buffers; its flat form concatenates them in the
dict's order (float64, CPU)::

    line:   theta(alpha) = (1 - alpha) theta_a + alpha theta_b
    plane:  theta(x, y)  = origin + x u + y v,    (u, v) orthonormal (Gram-Schmidt on a - o, b - o)
    Li et al. (2018) direction: D_i <- D_i ||W_i|| / ||D_i|| per row (filter) W_i of each weight

Every sweep overwrites the model's named tensors and restores them (and the train/eval mode) on exit,
also when a loss function raises.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

__all__ = ["filter_normalized_direction", "interpolate_1d", "plane_2d", "plane_coordinates"]


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by name (a parameter wins over a buffer of the same name)."""
    named = dict(model.named_parameters())
    for k, v in model.named_buffers():
        named.setdefault(k, v)
    return named


def _resolve(model: nn.Module, theta: Mapping[str, torch.Tensor], arg: str) -> dict[str, torch.Tensor]:
    """The model's own tensors named in the snapshot ``theta`` (checked: known names, equal shapes)."""
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
    """concat(theta[n].flatten() for n in names): a (sum of numels,) float64 CPU vector."""
    return torch.cat([theta[n].detach().reshape(-1).to("cpu", torch.float64) for n in names])


def _assign_flat(targets: Mapping[str, torch.Tensor], names: Sequence[str], flat: torch.Tensor) -> None:
    """Copy consecutive pieces of the flat vector into ``targets[n]`` (inverse of ``_flat``), cast to
    each target's device and dtype."""
    with torch.no_grad():
        offset = 0
        for n in names:
            t = targets[n]
            k = t.numel()
            t.copy_(flat[offset : offset + k].reshape(t.shape).to(t.device, t.dtype))
            offset += k


def _eval_losses(loss_fns: Mapping[str, Callable[[], object]]) -> dict[str, float]:
    """task -> float(loss_fns[task]()) under ``torch.no_grad()``."""
    out = {}
    with torch.no_grad():
        for task, fn in loss_fns.items():
            v = fn()
            out[task] = float(v.detach() if isinstance(v, torch.Tensor) else v)
    return out


def _check_loss_fns(loss_fns) -> None:
    """Raise ValueError unless ``loss_fns`` is a non-empty dict of callables."""
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
