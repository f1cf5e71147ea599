"""Benchmark: Hessian top eigenvalue and trace, forgetting.mechanisms.landscape vs PyHessian 0.1.

Model. A tiny Llama-style causal LM (``tests._tiny_models.tiny_llama("bench")``, transformers
``LlamaConfig``: 4 layers, hidden 128, intermediate 256, 8 heads, 4 key/value heads, vocab 300, eager
attention; 667,776 parameters), one fixed batch of
random tokens (16 x 32), next-token cross-entropy. Two points: ``init`` (random initialisation) and
``trained`` (after ``--train-steps`` Adam steps on that batch). Hessian over all parameters.

Top eigenvalue. Ours: :func:`~forgetting.mechanisms.landscape.lanczos` (``which="LA"``) on a
:class:`~forgetting.mechanisms.landscape.HessianOperator`; PyHessian: ``hessian(model, criterion,
data=(inputs, targets)).eigenvalues(top_n=1)`` (power iteration) through a small adapter module
(``model(inputs)`` -> logits flattened to (batch*(seq-1), vocab), ``criterion`` = cross-entropy on the
shifted targets; its loss equals ours). Both at the same relative tolerance ``--tol`` (PyHessian: the
change between consecutive power-iteration estimates; ours: see ``lanczos``) and ``--max-iter``. Wall
time includes building the gradient graph; Hessian-vector products (HVPs) are counted on both sides
(PyHessian's by wrapping its ``hessian_vector_product``); wall time and CPU time (``time.process_time``,
the steadier measure on a shared machine) are both recorded, and the sides alternate (so does which
goes first). Reference: Lanczos ``which="both"`` at tol
1e-10; its residual norms bound the error of the reference itself. A sweep over tolerances (one seed,
``--sweep-tols``) shows HVPs against the error actually achieved.

Trace. On two parameter blocks with an exact reference: the output projection ``lm_head.weight``
(38,400 entries; logits are linear in it, so its Hessian block has a closed form, checked against a
real HVP) and the RMSNorm gains (9 tensors, 1,152 entries; exact from the dense block, 1,152 HVPs).
Hutch++ vs Hutchinson at equal matvecs (``--trace-matvecs``) over ``--trace-seeds`` seeds: mean relative
error |estimate - exact| / |exact|. The estimators are run on the exact operator (closed form / dense
block): the same linear map as the HVPs, checked on one seed, so that many seeds are affordable.
Over all parameters there is no exact trace; both estimators are unbiased, so the spread (standard
deviation) of ``--full-trace-seeds`` estimates at the first budget measures their error there.

Run: ``.venv/bin/python benchmarks/bench_hessian.py --out benchmarks/results/hessian.json``
(needs ``pip install -c requirements/torch.txt -c requirements/lock.txt -r requirements/bench.txt``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _report import emit, run_context  # benchmarks/_report.py (the script folder is on sys.path)
from forgetting.mechanisms.landscape import HessianOperator, hutchinson, hutchpp, lanczos, select_parameters

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for the line below
from tests._tiny_models import LLAMA_SIZES, tiny_llama  # noqa: E402  (the one tiny-model builder)

VOCAB = LLAMA_SIZES["bench"]["vocab_size"]


def build(seed: int):
    """The benchmark model (tests._tiny_models.tiny_llama, size "bench", initialised after
    torch.manual_seed(seed)) and one fixed batch of random ids (16, 32)."""
    model = tiny_llama("bench", seed)
    ids = torch.randint(0, VOCAB, (16, 32), generator=torch.Generator().manual_seed(seed + 1))
    return model, ids


class LogitsAdapter(nn.Module):
    """PyHessian calls ``criterion(model(inputs), targets)``: return next-token logits, flattened."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=ids).logits[:, :-1]
        return logits.reshape(-1, logits.shape[-1])


def make_loss_fn(model, ids):
    targets = ids[:, 1:].reshape(-1)

    def loss_fn() -> torch.Tensor:
        logits = model(input_ids=ids).logits[:, :-1]
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets)

    return loss_fn, targets


def train(model, ids, steps: int, lr: float) -> list[float]:
    loss_fn, _ = make_loss_fn(model, ids)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    model.zero_grad(set_to_none=True)
    return losses


# ---------------------------------------------------------------------------------------------------
# top eigenvalue
# ---------------------------------------------------------------------------------------------------


def ours_top(model, ids, tol: float, max_iter: int, seed: int) -> dict:
    loss_fn, _ = make_loss_fn(model, ids)
    params = [p for p in model.parameters() if p.requires_grad]
    t0, c0 = time.perf_counter(), time.process_time()
    op = HessianOperator(loss_fn, params)
    res = lanczos(op.matvec_flat, op.dim, 1, which="LA", tol=tol, max_iter=max_iter, seed=seed)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    op.release()
    return {
        "value": float(res.eigenvalues[0]),
        "hvps": op.n_matvecs,
        "seconds": seconds,
        "cpu_seconds": cpu,
        "converged": res.converged,
    }


def pyhessian_top(model, ids, tol: float, max_iter: int, seed: int) -> dict:
    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the module (the package re-exports a class by that name)

    _, targets = make_loss_fn(model, ids)
    count = {"n": 0}
    original = ph.hessian_vector_product

    def counting(gradsH, params, v):
        count["n"] += 1
        return original(gradsH, params, v)

    ph.hessian_vector_product = counting
    try:
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)  # PyHessian draws its start vector from the global generator
        t0, c0 = time.perf_counter(), time.process_time()
        hess = ph.hessian(LogitsAdapter(model), nn.functional.cross_entropy, data=(ids, targets), cuda=False)
        values, _ = hess.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        ph.hessian_vector_product = original
        model.zero_grad(set_to_none=True)  # PyHessian leaves .grad holding the double-backward graph
    return {
        "value": float(values[0]),
        "hvps": count["n"],
        "seconds": seconds,
        "cpu_seconds": cpu,
        "converged": count["n"] < max_iter,
    }


def reference(model, ids, max_iter: int) -> dict:
    loss_fn, _ = make_loss_fn(model, ids)
    op = HessianOperator(loss_fn, list(model.parameters()))
    t0 = time.perf_counter()
    res = lanczos(op.matvec_flat, op.dim, 1, which="both", tol=1e-10, max_iter=max_iter, seed=12345)
    return {
        "loss": op.loss,
        "top": float(res.eigenvalues[0]),
        "bottom": float(res.eigenvalues[-1]),
        "residual_top": float(res.residuals[0]),
        "residual_bottom": float(res.residuals[-1]),
        "hvps": res.n_matvecs,
        "converged": res.converged,
        "seconds": time.perf_counter() - t0,
        "ritz_top5": [float(x) for x in res.ritz_values[:5]],
    }


def summarize(runs: list[dict], ref_top: float) -> dict:
    return {
        "seconds_median": statistics.median(r["seconds"] for r in runs),
        "cpu_seconds_median": statistics.median(r["cpu_seconds"] for r in runs),
        "hvps_median": statistics.median(r["hvps"] for r in runs),
        "values": [r["value"] for r in runs],
        "max_rel_error_vs_reference": max(abs(r["value"] - ref_top) / abs(ref_top) for r in runs),
        "all_converged": all(r["converged"] for r in runs),
        "all_seconds": [round(r["seconds"], 3) for r in runs],
        "all_hvps": [r["hvps"] for r in runs],
    }


# ---------------------------------------------------------------------------------------------------
# trace
# ---------------------------------------------------------------------------------------------------


def estimator_errors(matmat, dim: int, exact: float, matvecs: list[int], seeds: int) -> dict:
    """Mean relative error of Hutch++ and Hutchinson over ``seeds`` seeds at each budget of matvecs."""
    out = {}
    for m in matvecs:
        pp = [hutchpp(matmat, dim, m, seed=s) for s in range(seeds)]
        hu = [hutchinson(matmat, dim, m, seed=s) for s in range(seeds)]
        e_pp = float(np.mean([abs(x - exact) for x in pp]) / abs(exact))
        e_hu = float(np.mean([abs(x - exact) for x in hu]) / abs(exact))
        out[str(m)] = {
            "hutchpp_mean_rel_error": e_pp,
            "hutchinson_mean_rel_error": e_hu,
            "error_ratio_hutchpp_over_hutchinson": e_pp / e_hu,
        }
    return out


def trace_norms(model, ids, matvecs: list[int], seeds: int) -> dict:
    """RMSNorm gains (1,152 entries): exact trace from the dense block (1,152 HVPs)."""
    loss_fn, _ = make_loss_fn(model, ids)
    sub = select_parameters(model, "norm")
    op = HessianOperator(loss_fn, list(sub.values()))
    t0 = time.perf_counter()
    H = op.dense()
    dense_seconds = time.perf_counter() - t0
    exact = float(torch.trace(H))
    evals = torch.linalg.eigvalsh(0.5 * (H + H.T))
    mm = lambda V: H @ V  # noqa: E731 - the same operator applied densely: same numbers, faster
    out = {
        "params": "all RMSNorm gains",
        "dim": op.dim,
        "exact_trace": exact,
        "exact_from": f"dense block, {op.dim} HVPs, {dense_seconds:.0f} s",
        "top10_share_of_sum_abs_eigenvalues": float(
            evals.abs().sort(descending=True).values[:10].sum() / evals.abs().sum()
        ),
        "by_matvecs": estimator_errors(mm, op.dim, exact, matvecs, seeds),
    }
    m0 = matvecs[0]  # the estimators through real HVPs give the same numbers (one seed)
    via_hvp = hutchpp(op.matmat_flat, op.dim, m0, seed=0)
    out["hvp_vs_dense_rel_diff"] = abs(via_hvp - hutchpp(mm, op.dim, m0, seed=0)) / abs(exact)
    return out


def trace_lm_head(model, ids, matvecs: list[int], seeds: int) -> dict:
    """lm_head weight W (vocab x d = 38,400 entries): logits are linear in W, so its Hessian block is
    exactly H = (1/N) sum_t (diag p_t - p_t p_t^T) (x) h_t h_t^T and tr H = (1/N) sum_t (1 - |p_t|^2) |h_t|^2
    (h_t: final hidden state, p_t: softmax, N target tokens). H V is applied in closed form; one real
    HVP checks the formula."""
    loss_fn, _ = make_loss_fn(model, ids)
    W = model.lm_head.weight
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, W.shape[1]).double()  # (N, d)
        p = torch.softmax(h @ W.double().T, dim=-1)  # (N, vocab)
    n = h.shape[0]
    exact = float(((1 - p.square().sum(-1)) * h.square().sum(-1)).sum() / n)

    def mm(V: torch.Tensor) -> torch.Tensor:  # V: (vocab*d, b) -> H V
        b = V.shape[1]
        Vm = V.T.reshape(b, W.shape[0], W.shape[1])  # (b, vocab, d)
        U = torch.einsum("nd,bvd->bnv", h, Vm)  # u_t = V h_t
        A = p * U - p * (p * U).sum(-1, keepdim=True)  # (diag p - p p^T) u_t
        return (torch.einsum("bnv,nd->bvd", A, h) / n).reshape(b, -1).T

    op = HessianOperator(loss_fn, [W])
    v = torch.randn(op.dim, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    formula_check = float((op.matmat_flat(v) - mm(v)).norm() / mm(v).norm())
    return {
        "params": "lm_head.weight",
        "dim": op.dim,
        "exact_trace": exact,
        "exact_from": "closed form (logits linear in W)",
        "closed_form_vs_hvp_rel_diff": formula_check,
        "by_matvecs": estimator_errors(mm, op.dim, exact, matvecs, seeds),
    }


def trace_full_model(model, ids, m: int, seeds: int) -> dict:
    """All 667,776 parameters: no exact trace, but both estimators are unbiased, so their spread over
    seeds measures their error (mean |error| = sqrt(2/pi) std for a Gaussian-like estimate). Reference:
    the mean of every estimate made here (2 * seeds * m HVPs)."""
    loss_fn, _ = make_loss_fn(model, ids)
    op = HessianOperator(loss_fn, list(model.parameters()))
    t0 = time.perf_counter()
    pp = [hutchpp(op.matmat_flat, op.dim, m, seed=s) for s in range(seeds)]
    hu = [hutchinson(op.matmat_flat, op.dim, m, seed=1000 + s) for s in range(seeds)]
    ref = float(np.mean(pp + hu))
    return {
        "dim": op.dim,
        "matvecs_each": m,
        "seeds": seeds,
        "pooled_mean_trace": ref,
        "hutchpp_std": float(np.std(pp, ddof=1)),
        "hutchinson_std": float(np.std(hu, ddof=1)),
        "std_ratio_hutchpp_over_hutchinson": float(np.std(pp, ddof=1) / np.std(hu, ddof=1)),
        "hutchpp_estimates": [round(x, 3) for x in pp],
        "hutchinson_estimates": [round(x, 3) for x in hu],
        "hvps": op.n_matvecs,
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tol", type=float, default=1e-3, help="relative tolerance, both sides (PyHessian default)")
    ap.add_argument("--max-iter", type=int, default=100, help="HVP budget, both sides (PyHessian default)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--reference-max-iter", type=int, default=150)
    ap.add_argument("--trace-matvecs", type=int, nargs="+", default=[30, 99])
    ap.add_argument("--trace-seeds", type=int, default=50)
    ap.add_argument("--full-trace-seeds", type=int, default=10, help="0 skips the full-model trace spread")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-trace", action="store_true", help="skip the trace comparison")
    ap.add_argument("--sweep-tols", type=float, nargs="*", default=[1e-2, 1e-3, 1e-4, 1e-5])
    ap.add_argument("--sweep-max-iter", type=int, default=200)
    ap.add_argument("--points", nargs="+", default=["init", "trained"], choices=["init", "trained"])
    ap.add_argument("--out", type=Path, default=None, help="also write the measurements as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, ids = build(args.seed)
    results: dict[str, dict] = {}
    for point in args.points:
        info: dict = {}
        if point == "trained":
            losses = train(model, ids, args.train_steps, args.lr)
            info["train_loss_first_last"] = [losses[0], losses[-1]]
        ref = reference(model, ids, args.reference_max_iter)
        print(point, "reference", json.dumps(ref), flush=True)
        ours_runs, theirs_runs = [], []
        for r in range(args.repeats):  # alternate (and alternate who goes first) so that load hits both alike
            if r % 2 == 0:
                ours_runs.append(ours_top(model, ids, args.tol, args.max_iter, seed=r))
                theirs_runs.append(pyhessian_top(model, ids, args.tol, args.max_iter, seed=r))
            else:
                theirs_runs.append(pyhessian_top(model, ids, args.tol, args.max_iter, seed=r))
                ours_runs.append(ours_top(model, ids, args.tol, args.max_iter, seed=r))
            print(point, r, ours_runs[-1], theirs_runs[-1], flush=True)
        ours, theirs = summarize(ours_runs, ref["top"]), summarize(theirs_runs, ref["top"])
        info |= {
            "reference": ref,
            "ours": ours,
            "pyhessian": theirs,
            "wall_ratio_ours_over_pyhessian": ours["seconds_median"] / theirs["seconds_median"],
            "cpu_ratio_ours_over_pyhessian": ours["cpu_seconds_median"] / theirs["cpu_seconds_median"],
            "hvp_ratio_ours_over_pyhessian": ours["hvps_median"] / theirs["hvps_median"],
        }
        sweep = []
        for tol in args.sweep_tols:  # HVPs against achieved accuracy, one seed
            row = {"tol": tol}
            for side, fn in (("ours", ours_top), ("pyhessian", pyhessian_top)):
                r = fn(model, ids, tol, args.sweep_max_iter, seed=0)
                row[side] = {
                    "hvps": r["hvps"],
                    "seconds": round(r["seconds"], 3),
                    "rel_error": abs(r["value"] - ref["top"]) / abs(ref["top"]),
                    "converged": r["converged"],
                }
            print(point, "sweep", json.dumps(row), flush=True)
            sweep.append(row)
        info["tol_sweep"] = sweep
        if not args.no_trace:
            info["trace"] = {
                "lm_head": trace_lm_head(model, ids, args.trace_matvecs, args.trace_seeds),
                "norms": trace_norms(model, ids, args.trace_matvecs, args.trace_seeds),
            }
            for k, v in info["trace"].items():
                print(point, "trace", k, json.dumps(v["by_matvecs"]), flush=True)
            if args.full_trace_seeds:
                full = trace_full_model(model, ids, args.trace_matvecs[0], args.full_trace_seeds)
                info["trace"]["full_model_spread"] = full
                print(point, "trace full", json.dumps(full), flush=True)
        results[point] = info

    report = {
        **run_context(args),
        "n_params": sum(p.numel() for p in model.parameters()),
        "points": results,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
