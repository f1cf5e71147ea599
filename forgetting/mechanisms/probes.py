"""Probes of one model on one set of examples, shared by the mechanism report and the dynamics:
the residual-stream hidden states, and the top Hessian eigenvalue of the mean target-token loss."""

from __future__ import annotations

import torch

from forgetting.mechanisms.landscape import hessian_eigenvalues
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
    """The top Hessian eigenvalue (Lanczos, all trainable weights) of the mean target-token loss
    ``L = (1 / N_tokens) sum -log p(y_t | y_<t)`` on ``examples``:
    ``{"loss": L, "lambda_max": lambda_1, "lambda_max_per_loss": lambda_1 / L}``."""
    n_tokens = int((examples.labels[:, 1:] != IGNORE_INDEX).sum())
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = lambda: target_loss_sum(model, examples, device) / n_tokens  # noqa: E731
    with torch.no_grad():
        loss = float(loss_fn())
    top = float(hessian_eigenvalues(loss_fn, params, k=1, max_iter=max_iter, tol=1e-3)[0])
    return {"loss": loss, "lambda_max": top, "lambda_max_per_loss": top / loss if loss > 0 else float("nan")}
