"""Benchmark: how many Hessian-vector products Lanczos needs from a random start vector and from a
Fisher-sampled one, at the ``trained`` point of ``bench_hessian.py``.

Why. At that point PyHessian's power iteration stops after 17 to 28 HVPs (tolerance 1e-3) and Lanczos
after 8 to 13. The bar of "at most a third of PyHessian's HVPs" would need 6 to 9, and from a random
start Lanczos is not yet within the tolerance there. The start vector is the only lever left for a
Krylov method, so this script measures the one cheap, principled candidate.

Fisher-sampled start: the gradient of the cross-entropy with targets drawn from the model's own
predictive distribution, g = J^T (p - e_y) / N with y ~ p. Its covariance is the Fisher matrix (the
Gauss-Newton part of the Hessian for cross-entropy), so its component along eigenvector i scales
with sqrt(lambda_i) instead of being uniform. It costs one forward and backward pass, which is not an
HVP.

For each start vector (``--starts`` seeds), the script records the relative error of the top Ritz
value after every HVP against a converged reference (Lanczos at tol 1e-10), and the first HVP count at
which that error is at most ``--tol``. That is the fewest HVPs any stopping rule could use.

Run: ``.venv/bin/python benchmarks/bench_lanczos_start.py --out benchmarks/results/lanczos_start.json``
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch import nn

from _report import emit, run_context  # benchmarks/_report.py (the script folder is on sys.path)
from bench_hessian import LogitsAdapter, build, make_loss_fn, train
from forgetting.mechanisms.landscape import HessianOperator, lanczos


def fisher_sampled_gradient(model, ids, params, seed: int) -> torch.Tensor:
    """Gradient of the cross-entropy against targets sampled from the model's softmax: (dim,) float64."""
    g = torch.Generator().manual_seed(seed)
    logits = LogitsAdapter(model)(ids)
    with torch.no_grad():
        sampled = torch.multinomial(torch.softmax(logits.double(), -1), 1, generator=g).squeeze(-1)
    grads = torch.autograd.grad(nn.functional.cross_entropy(logits, sampled), params)
    return torch.cat([x.reshape(-1) for x in grads]).double()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, ids = build(args.seed)
    train(model, ids, args.train_steps, args.lr)
    loss_fn, _ = make_loss_fn(model, ids)
    params = list(model.parameters())
    op = HessianOperator(loss_fn, params)
    ref = lanczos(op.matvec_flat, op.dim, 1, which="LA", tol=1e-10, max_iter=150, seed=12345)
    top = float(ref.eigenvalues[0])

    results: dict[str, list[dict]] = {"random": [], "fisher": []}
    for kind in results:
        for s in range(args.starts):
            v0 = fisher_sampled_gradient(model, ids, params, s) if kind == "fisher" else None
            res = lanczos(op.matvec_flat, op.dim, 1, which="LA", tol=args.tol, max_iter=args.max_iter, seed=s, v0=v0)
            errors = [abs(float(h[0]) - top) / abs(top) for h in res.history]
            within = next((i + 1 for i, e in enumerate(errors) if e <= args.tol), None)
            results[kind].append(
                {"seed": s, "hvps_to_stop": res.n_matvecs, "hvps_until_within_tol": within, "errors": errors}
            )
            print(kind, s, res.n_matvecs, within, flush=True)
    summary = {
        kind: {
            "median_hvps_to_stop": statistics.median(r["hvps_to_stop"] for r in runs),
            "median_hvps_until_within_tol": statistics.median(r["hvps_until_within_tol"] or args.max_iter for r in runs),
            "hvps_until_within_tol": [r["hvps_until_within_tol"] for r in runs],
        }
        for kind, runs in results.items()
    }
    emit(
        {
            **run_context(args),
            "reference_top": top,
            "reference_top_ritz": [float(x) for x in ref.ritz_values[:8]],
            "summary": summary,
            "runs": results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
