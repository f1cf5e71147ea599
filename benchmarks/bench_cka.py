"""Benchmark: CKA over all layers of two snapshots, forgetting.mechanisms.drift vs torch-cka 0.21.

Models. Two copies of a tiny Llama-style model (``tests._tiny_models.tiny_llama("bench")``: 4 layers,
hidden 128, 8 heads, 4 kv heads, vocab 300, eager attention); the second one perturbed (every weight +
``--noise`` x its std x N(0, 1), standing in for a fine-tuned snapshot). Inputs: random tokens,
``--batches`` batches of ``--batch-size`` x ``--seq``.
Layers: the 5 residual-stream states of ``output_hidden_states=True`` (embedding output, outputs of
decoder layers 0-2, final-norm output) = what torch-cka's hooks on ``model.embed_tokens``,
``model.layers.0-2`` and ``model.norm`` see (checked at start).

Estimator on both sides: debiased (unbiased-HSIC) minibatch CKA of Nguyen et al. 2021 over all 5 x 5
layer pairs, which is what ``torch_cka.CKA.compare`` computes; ours is
:class:`~forgetting.mechanisms.drift.MinibatchCKA` ``(pairs="all")``, which forms the Gram matrices of
these float32 features in float32 (torch-cka does everything in float32). Scenarios (features):

- ``flat-seq/b16``: each sequence flattened to (seq*d) = 4096 features, minibatches of 16 sequences:
  torch-cka's own design point (its hooks flatten module outputs per example).
- ``last-token/n256``: the last token's state (d = 128) of all 256 sequences, one batch (the book's
  default readout; n = 256 examples).
- ``tokens/n512``, ``tokens/n2048``: every token of the first 16 or 64 sequences (d = 128), one batch.
  torch-cka's cost grows as n^3 per layer pair (it forms K @ L for tr(K L)); ours as n^2 per pair
  (inner product of U-centred Gram matrices) plus n^2 p per layer for the Gram matrices.

Timings, median of ``--repeats`` of wall time and of CPU time (``time.process_time``; the steadier
measure on a shared machine); the sides alternate, and which goes first alternates too, so that
machine load and cache state hit both alike:
"CKA only" feeds the same precomputed features to both (torch-cka through stand-in modules that replay
the cached tensors into its hooks, so its ``compare`` runs no model); "end to end" (``flat-seq/b16``
only) includes both models' forward passes (torch-cka's ``compare`` with hooks on the real models vs our
loop), next to the forward passes alone. Also timed, as a floor: the float32 products that form the
Gram matrices of all layers from centred, stacked features (torch-cka's CPU time over it bounds the
speed-up of any implementation that forms those Gram matrices). Values: both sides against the same estimator computed in
float64 (the features cast to float64). Also timed: :func:`~forgetting.mechanisms.drift.cka_by_layer`
(full batch, same-layer pairs only) for each readout on all 256 sequences.

Run: ``.venv/bin/python benchmarks/bench_cka.py --out benchmarks/results/cka.json``
(needs ``pip install -c requirements/torch.txt -c requirements/lock.txt -r requirements/bench.txt``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _report import emit, run_context  # benchmarks/_report.py (the script folder is on sys.path)
from forgetting.mechanisms.drift import MinibatchCKA, cka_by_layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for the line below
from tests._tiny_models import LLAMA_SIZES, tiny_llama  # noqa: E402  (the one tiny-model builder)

LAYERS = ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2", "model.norm"]

Features = list[list[torch.Tensor]]  # batch -> layer -> (n, p)


def build_models(seed: int, noise: float):
    """Model a: tests._tiny_models.tiny_llama("bench", seed); model b: a copy with every weight p moved
    by noise * std(p) * N(0, 1) (generator seeded seed + 1)."""
    a = tiny_llama("bench", seed)
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(noise * p.std() * torch.randn(p.shape, generator=g))
    return a, b


# ---------------------------------------------------------------------------------------------------
# the two sides
# ---------------------------------------------------------------------------------------------------


class Clock:
    """Wall time and CPU time of this process (on a shared machine CPU time is the steadier measure:
    it leaves out the time the process waited for a core)."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def ours_cached(feats_a: Features, feats_b: Features) -> tuple[np.ndarray, tuple[float, float]]:
    clock = Clock()
    acc = MinibatchCKA(pairs="all", debiased=True)
    for fa, fb in zip(feats_a, feats_b):
        acc.update(fa, fb)
    out = acc.compute()
    return out, clock.stop()


def float64_reference(feats_a: Features, feats_b: Features) -> np.ndarray:
    """The same estimator on the features cast to float64 (MinibatchCKA's float64 path)."""
    return ours_cached([[f.double() for f in fs] for fs in feats_a], [[f.double() for f in fs] for fs in feats_b])[0]


def ours_end_to_end(model_a, model_b, batches: list[torch.Tensor]) -> tuple[np.ndarray, tuple[float, float]]:
    clock = Clock()
    acc = MinibatchCKA(pairs="all", debiased=True)
    with torch.no_grad():
        for x in batches:
            ha = model_a(input_ids=x, output_hidden_states=True).hidden_states
            hb = model_b(input_ids=x, output_hidden_states=True).hidden_states
            acc.update([h.flatten(1) for h in ha], [h.flatten(1) for h in hb])
    out = acc.compute()
    return out, clock.stop()


def forward_only(model_a, model_b, batches: list[torch.Tensor]) -> tuple[None, tuple[float, float]]:
    """The forward passes both sides need (both models, every batch, hidden states kept), no CKA."""
    clock = Clock()
    with torch.no_grad():
        for x in batches:
            model_a(input_ids=x, output_hidden_states=True)
            model_b(input_ids=x, output_hidden_states=True)
    return None, clock.stop()


def _torch_cka_compare(m1, m2, loader, layers: list[str]) -> tuple[np.ndarray, tuple[float, float]]:
    from torch_cka import CKA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cka = CKA(m1, m2, model1_name="a", model2_name="b", model1_layers=layers, model2_layers=layers, device="cpu")
        clock = Clock()
        with torch.no_grad():  # torch-cka itself runs the forward passes with autograd on
            cka.compare(loader)
        seconds = clock.stop()
    assert cka.model1_info["Layers"] == layers, cka.model1_info["Layers"]
    return cka.export()["CKA"].double().numpy(), seconds


class Replay(nn.Module):
    """Replays cached features through identity submodules so torch-cka's hooks see exactly the
    given tensors without running a model (CKA-only timing). Called with a batch index."""

    def __init__(self, feats: Features):
        super().__init__()
        self.feats = feats
        self.layers = nn.ModuleList(nn.Identity() for _ in feats[0])

    def forward(self, idx: torch.Tensor) -> None:
        for layer, f in zip(self.layers, self.feats[int(idx[0])]):
            layer(f)


def torch_cka_cached(feats_a: Features, feats_b: Features) -> tuple[np.ndarray, tuple[float, float]]:
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.arange(len(feats_a))), batch_size=1, shuffle=False)
    names = [f"layers.{i}" for i in range(len(feats_a[0]))]
    return _torch_cka_compare(Replay(feats_a), Replay(feats_b), loader, names)


def torch_cka_end_to_end(model_a, model_b, batches: list[torch.Tensor]) -> tuple[np.ndarray, tuple[float, float]]:
    from torch.utils.data import DataLoader, TensorDataset

    ma, mb = copy.deepcopy(model_a), copy.deepcopy(model_b)  # torch-cka leaves hooks on the models
    loader = DataLoader(TensorDataset(torch.cat(batches)), batch_size=batches[0].shape[0], shuffle=False)
    return _torch_cka_compare(ma, mb, loader, LAYERS)


# ---------------------------------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------------------------------


def gram_products_only(feats_a: Features, feats_b: Features, repeats: int) -> dict:
    """The part no implementation of this estimator can skip: for every batch, the Gram matrices of
    the 10 layers (both sides) from features already centred and stacked, one float32 batched product
    (the same MKL kernel torch-cka's ``X @ X.t()`` calls). Median CPU time over ``repeats``."""
    stacked = [torch.stack(list(fa) + list(fb)) for fa, fb in zip(feats_a, feats_b)]
    stacked = [f - f.mean(-2, keepdim=True) for f in stacked]
    out = [torch.empty(f.shape[0], f.shape[1], f.shape[1]) for f in stacked]
    cpu = []
    for _ in range(repeats):
        c0 = time.process_time()
        for f, o in zip(stacked, out):
            torch.bmm(f, f.transpose(1, 2), out=o)
        cpu.append(time.process_time() - c0)
    return {"cpu_seconds": statistics.median(cpu)}


def compare_values(ours: np.ndarray, theirs: np.ndarray, ref: np.ndarray | None = None) -> dict:
    both = np.isfinite(ours) & np.isfinite(theirs)
    diag = np.diag(both)
    extra = {}
    if ref is not None:  # both sides against the float64 computation of the same estimator
        extra = {
            "max_abs_diff_ours_vs_float64": float(np.max(np.abs(ours - ref)[both])),
            "max_abs_diff_torch_cka_vs_float64": float(np.max(np.abs(theirs - ref)[both])),
        }
    return extra | {
        "max_abs_diff_all_pairs": float(np.max(np.abs(ours - theirs)[both])),
        "max_abs_diff_same_layer": float(np.max(np.abs(np.diag(ours) - np.diag(theirs))[diag])),
        "pairs_compared": int(both.sum()),
        "same_layer_ours": np.round(np.diag(ours), 6).tolist(),
        "same_layer_torch_cka": np.round(np.diag(theirs), 6).tolist(),
    }


def timed_pair(fn_ours, fn_theirs, repeats: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Alternate the two sides ``repeats`` times; medians of wall time and of CPU time."""
    ours_runs, theirs_runs = [], []
    for r in range(repeats):
        first, second = (fn_ours, fn_theirs) if r % 2 == 0 else (fn_theirs, fn_ours)
        a, b = first(), second()
        ours_runs.append(a if r % 2 == 0 else b)
        theirs_runs.append(b if r % 2 == 0 else a)
    t_o = statistics.median(r[1][0] for r in ours_runs)
    t_t = statistics.median(r[1][0] for r in theirs_runs)
    c_o = statistics.median(r[1][1] for r in ours_runs)
    c_t = statistics.median(r[1][1] for r in theirs_runs)
    timing = {
        "seconds_ours": t_o,
        "seconds_torch_cka": t_t,
        "speedup_ours": t_t / t_o,
        "cpu_seconds_ours": c_o,
        "cpu_seconds_torch_cka": c_t,
        "cpu_speedup_ours": c_t / c_o,
        "all_seconds_ours": [round(r[1][0], 5) for r in ours_runs],
        "all_seconds_torch_cka": [round(r[1][0], 5) for r in theirs_runs],
    }
    return timing, ours_runs[0][0], theirs_runs[0][0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="also write the measurements as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model_a, model_b = build_models(args.seed, args.noise)
    g = torch.Generator().manual_seed(args.seed + 2)
    vocab = LLAMA_SIZES["bench"]["vocab_size"]
    batches = [torch.randint(0, vocab, (args.batch_size, args.seq), generator=g) for _ in range(args.batches)]

    # hidden_states[l] is exactly what torch-cka's hook on LAYERS[l] sees
    seen: dict[str, torch.Tensor] = {}
    modules = dict(model_a.named_modules())
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o)) for n in LAYERS]
    with torch.no_grad():
        hs = model_a(input_ids=batches[0], output_hidden_states=True).hidden_states
    for h in hooks:
        h.remove()
    assert all(torch.equal(hs[i], seen[n]) for i, n in enumerate(LAYERS))

    with torch.no_grad():
        data = torch.cat(batches)
        ha = model_a(input_ids=data, output_hidden_states=True).hidden_states  # L+1 x (N, seq, d)
        hb = model_b(input_ids=data, output_hidden_states=True).hidden_states
    bs = args.batch_size
    scenarios: dict[str, tuple[Features, Features]] = {
        f"flat-seq/b{bs}": (
            [[h[s : s + bs].flatten(1) for h in ha] for s in range(0, len(data), bs)],
            [[h[s : s + bs].flatten(1) for h in hb] for s in range(0, len(data), bs)],
        ),
        f"last-token/n{len(data)}": ([[h[:, -1] for h in ha]], [[h[:, -1] for h in hb]]),
    }
    for n_seq in (16, 64):  # every token of the first n_seq sequences, one batch
        scenarios[f"tokens/n{n_seq * args.seq}"] = (
            [[h[:n_seq].reshape(-1, h.shape[-1]) for h in ha]],
            [[h[:n_seq].reshape(-1, h.shape[-1]) for h in hb]],
        )

    results: dict[str, dict] = {}
    for name, (fa, fb) in scenarios.items():
        timing, ours, theirs = timed_pair(
            lambda fa=fa, fb=fb: ours_cached(fa, fb), lambda fa=fa, fb=fb: torch_cka_cached(fa, fb), args.repeats
        )
        results[name] = {
            "n_per_batch": int(fa[0][0].shape[0]),
            "features": int(fa[0][0].shape[1]),
            "batches": len(fa),
            "cka_only": timing,
        } | compare_values(ours, theirs, float64_reference(fa, fb))
        gram = gram_products_only(fa, fb, args.repeats)
        results[name]["gram_products_only"] = gram | {
            "upper_bound_cpu_speedup": timing["cpu_seconds_torch_cka"] / gram["cpu_seconds"]
        }
        print(name, json.dumps(results[name]), flush=True)

    first = next(iter(scenarios))
    timing, ours, theirs = timed_pair(
        lambda: ours_end_to_end(model_a, model_b, batches),
        lambda: torch_cka_end_to_end(model_a, model_b, batches),
        args.repeats,
    )
    results[first]["end_to_end"] = timing
    results[first]["end_to_end_values"] = compare_values(ours, theirs)
    fwd = [forward_only(model_a, model_b, batches)[1] for _ in range(args.repeats)]
    results[first]["forward_passes_only"] = {
        "seconds": statistics.median(f[0] for f in fwd),
        "cpu_seconds": statistics.median(f[1] for f in fwd),
    }

    full = {}
    for readout in ("last", "mean", "tokens"):
        ts = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            df = cka_by_layer(ha, hb, None, readout=readout, debiased=True)
            ts.append(time.perf_counter() - t0)
        full[readout] = {"seconds": statistics.median(ts), "n": int(df["n"][0]), "cka": df["cka"].round(4).tolist()}

    report = {
        **run_context(args),
        "scenarios": results,
        "cka_by_layer_full_batch_debiased": full,
    }
    emit(report, args.out)


if __name__ == "__main__":
    main()
