"""Probes of one model on one set of examples, shared by the mechanism report and the dynamics:
the residual-stream hidden states, and both ends of the Hessian spectrum of the mean target-token loss."""

from __future__ import annotations

import torch

from forgetting.mechanisms.landscape import HessianOperator, lanczos
from forgetting.tasks.encoding import IGNORE_INDEX, EncodedExamples
from forgetting.train.loop import target_loss_sum


@torch.no_grad()
def hidden_states(model, examples: EncodedExamples, batch_size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Hidden states (layers+1 tensors of (n, seq, d): the embeddings, then each block's output) and the
    attention mask (n, seq) of ``examples``, in batches of ``batch_size``."""
    chunks: list[tuple[torch.Tensor, ...]] = []
    for start in range(0, len(examples), batch_size):
        rows = slice(start, start + batch_size)
        out = model(input_ids=examples.input_ids[rows], attention_mask=examples.attention_mask[rows],
                    output_hidden_states=True)
        chunks.append(out.hidden_states)
    return [torch.cat([c[layer] for c in chunks]) for layer in range(len(chunks[0]))], examples.attention_mask


def top_eigenvalue(model, examples: EncodedExamples, max_iter: int) -> dict:
    """Both ends of the Hessian spectrum (one Lanczos run, all trainable weights) of the mean
    target-token loss ``L = (1 / N_tokens) sum -log p(y_t | y_<t)`` on ``examples``:
    ``{"loss": L, "lambda_max": lambda_1, "lambda_max_per_loss": lambda_1 / L, "lambda_min": lambda_N,
    "hessian_matvecs": m}``.

    ``lambda_1`` is the algebraically largest eigenvalue, ``lambda_N`` the smallest (most negative away
    from a minimum, where ``|lambda_N|`` can exceed ``lambda_1``); both are Ritz values of the same
    Krylov space of at most ``max_iter`` Hessian-vector products (``which="both"``: it stops when both
    ends have converged, so ``lambda_1`` is at least as converged as a run for the top end alone)."""
    n_tokens = int((examples.labels[:, 1:] != IGNORE_INDEX).sum())
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = lambda: target_loss_sum(model, examples, device) / n_tokens  # noqa: E731
    with torch.no_grad():
        loss = float(loss_fn())
    op = HessianOperator(loss_fn, params)
    res = lanczos(op.matvec_flat, op.dim, 1, which="both", max_iter=max_iter, tol=1e-3, seed=0, device=op.device)
    top, bottom = float(res.eigenvalues[0]), float(res.eigenvalues[-1])
    return {"loss": loss, "lambda_max": top, "lambda_max_per_loss": top / loss if loss > 0 else float("nan"),
            "lambda_min": bottom, "hessian_matvecs": int(res.n_matvecs)}
