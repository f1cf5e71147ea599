"""Task similarity: how alike two fine-tuning tasks are, measured before any fine-tuning, and the pairwise
sweep (train A, then B, measure how much of A is forgotten) that asks whether similarity predicts forgetting.

Every measure compares tasks A and B on the same (base) model and data and is symmetric in A and B. The
tasks' data are the first ``n_examples`` TRAIN examples of each task (the data fine-tuning will use).

**Gradient cosine** (``gradient``; measures ``gradient_cosine``, ``gradient_cosine_attention``,
``gradient_cosine_mlp``). With g_X = dL_X/dtheta the gradient of task X's mean target-token loss at the
base model (:func:`forgetting.mechanisms.gradients.task_gradients`)::

    gradient_cosine(A, B) = <g_A, g_B> / (||g_A|| ||g_B||)

over all parameters, and over the attention or MLP parameters only (the ``"model"`` rows of
:func:`forgetting.mechanisms.gradients.gradient_alignment`). Positive: a step on B also descends A's loss
at the start; negative: the first steps of B climb A's loss.

**Representation similarity** (``representation``; measures ``representation``, ``representation_subspace``
and per layer ``representation_layer`` / ``representation_subspace_layer`` with the ``layer`` column). For
every example x the hidden state after layer l (l = 0 is the embedding output) is mean-pooled over its
tokens (prompt, target and eos; padding masked): h_l(x) in R^d. Two views of the tasks' sets of h:

- centroid cosine: mu_X = mean_x h_l(x); with m = (1/K) sum_X mu_X the mean over the K tasks compared,
  ``representation = cos(mu_A - m, mu_B - m)``. Raw centroids of all tasks point almost the same way (the
  shared prompt format and the residual stream's common direction), so their cosine is near 1 for every
  pair; removing the across-task mean keeps the directions in which tasks differ. It is therefore a
  *relative* measure: it depends on the set of tasks (with K = 2 it is -1 by construction, so the matrix
  needs K >= 3 to say anything).
- subspace (covariance) cosine: with Sigma_X = (1/n_X) sum_x (h - mu_X)(h - mu_X)^T the within-task
  covariance, ``representation_subspace = <Sigma_A, Sigma_B>_F / (||Sigma_A||_F ||Sigma_B||_F)`` in [0, 1]
  (both are positive semi-definite). It equals (mean over all cross pairs of (h_a . h_b)^2) normalised by
  the same quantity within each task, so it needs no pairing of examples and is *absolute* (independent
  of the other tasks). It is high when the two tasks vary along the same directions.

Why not linear CKA between the tasks' samples: CKA compares two representations of the SAME inputs (row i
of X and row i of Y are one example); two tasks have different inputs, so any pairing of rows is
arbitrary and CKA would change with the order of the examples. The aggregate rows (``layer`` = <NA>)
average over the block outputs l = 1..L (the embedding layer l = 0 is covered by token overlap).

**Token overlap** (``tokens``; measures ``token_overlap``, ``token_jaccard``, ``answer_overlap``). With c_X(t)
the count of token t in task X's prompts and targets and p_X = c_X / sum c_X::

    token_overlap(A, B)  = BC(p_A, p_B) = sum_t sqrt(p_A(t) p_B(t))      (Bhattacharyya coefficient, in [0, 1])
    token_jaccard(A, B)  = |S_A & S_B| / |S_A | S_B|                      (S_X: the tokens X uses)
    answer_overlap(A, B) = |V_A & V_B| / |V_A | V_B|                      (V_X: the answer vocabulary's token ids)

BC is 1 for identical distributions and 0 for disjoint supports. All tasks here share the prompt format
("Q : ... A :"), so token overlap has a floor well above 0; answer overlap tells tasks that answer from
the same vocabulary (recall_city and update_city: the same 16 cities) from those that do not.

**Fisher task embedding** (``fisher``; measures ``fisher`` and ``fisher_distance``), in the spirit of
Task2Vec (Achille et al. 2019) for a language-model loss. The diagonal Fisher information of the model's
predictive distribution on task X::

    F_X = (1/n) sum_x E_{yhat ~ p_theta(. | x)} [ (d/dtheta sum_{t in T(x)} log p_theta(yhat_t | x, y_<t))^2 ]

with labels yhat_t SAMPLED from the model's own distribution at each target position t (teacher-forced:
the context is the true prefix), one sample per example, and the square taken per example (one backward
pass per example: the square of a batch gradient is not a Fisher). Because the yhat_t are independent
given the context and each score has mean zero, the square of the per-example sum is an unbiased estimate
of the sum of the per-position Fishers. The sampling generator of an example is seeded from ``seed`` and
the example's token ids, so the embedding does not depend on the order of the examples. Per-tensor
normalisation: each parameter tensor's diagonal is scaled to unit L2 norm and the tensors are
concatenated into e_X (so every tensor counts equally, whatever its size or gradient scale); then::

    fisher(A, B)          = cos(e_A, e_B)  (= mean over tensors of the per-tensor cosines)
    fisher_distance(A, B) = 1 - cos(e_A / (e_A + e_B), e_B / (e_A + e_B))   (Task2Vec's normalised
                            symmetric distance; elementwise division, entries with e_A + e_B = 0 dropped)

Identical tasks give ``fisher`` 1 and ``fisher_distance`` 0.

**The pairwise sweep** (:func:`pairwise_sweep`). For every ordered pair (A, B) of distinct tasks: train A,
then B (the profile's spec with ``sequence: [A, B]``, the profile's sweep step count, evaluation at the
end of each stage only, no joint reference), through :func:`forgetting.profiles.run_cached`, so every pair
is cached on disk and a killed sweep resumes where it stopped. Per pair, from the end-of-stage evaluations
(stage 1 = after A, stage 2 = after B, on the tasks' eval splits)::

    forgetting_loss   = loss_A(stage 2) - loss_A(stage 1)                  (nats/token; > 0: forgotten)
    forgetting_exact  = exact_A(stage 1) - exact_A(stage 2)
    forgetting_answer = answer_A(stage 1) - answer_A(stage 2)
    gain_loss_b       = loss_B(stage 1) - loss_B(stage 2)                  (what training B taught B)
    gain_exact_b      = exact_B(stage 2) - exact_B(stage 1)

Alignment along the sweep (:func:`sweep_alignment`): similarity at the base model says nothing about the
state B's training starts from. At theta_A (the snapshot after A) of each pair::

    alignment_at_a   = cos(g_A(theta_A), g_B(theta_A))           (old vs new task gradient, all parameters)
    update_alignment = cos(theta_A - theta_0, -g_B(theta_A))      (B's first descent direction vs what A changed)

A converged A has a small, noisy gradient (SCIENCE.md), so the second, which does not need g_A, is the
steadier one: negative means B's first steps point back against A's change.

**Similarity against forgetting** (:func:`pair_table`, :func:`similarity_correlations`,
:func:`quadratic_peak`). The pairs of a sweep share tasks, so correlations are bootstrapped over TASKS
(the cluster bootstrap of :mod:`forgetting.stats`), not over pairs. The intermediate-similarity peak
(Ramasesh et al. 2020) is tested with a quadratic ``f = b0 + b1 s + b2 s^2``: a peak inside the data needs
b2 < 0 (its interval below 0) and the vertex ``s* = -b1 / (2 b2)`` inside the observed range of s.
:func:`task_effects` says how much of the forgetting is explained by which task is A and which is B alone
(SCIENCE.md), before any similarity enters.

Bad input (unknown task, unknown measure, fewer than two tasks, repeated tasks, unknown profile) raises
:class:`forgetting.errors.SpecError` naming the field and the allowed values, before any work.
"""

from __future__ import annotations

import itertools
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from forgetting.errors import SpecError

__all__ = [
    "FORGETTING_MEASURES",
    "MEASURES",
    "PAIR_SIMILARITIES",
    "SIMILARITY_COLUMNS",
    "SWEEP_COLUMNS",
    "answer_overlap",
    "bhattacharyya",
    "cosine",
    "fisher_embedding",
    "fisher_similarity",
    "gradient_similarity",
    "jaccard",
    "leave_one_task_out",
    "pairwise_sweep",
    "representation_similarity",
    "pair_table",
    "quadratic_peak",
    "similarity_correlations",
    "task_effects",
    "similarity_matrix",
    "sweep_alignment",
    "sweep_answers",
    "sweep_spec",
    "token_counts",
    "token_similarity",
]

#: Measure families accepted by :func:`similarity_matrix` and the measure names each one writes.
MEASURES: dict[str, tuple[str, ...]] = {
    "gradient": ("gradient_cosine", "gradient_cosine_attention", "gradient_cosine_mlp"),
    "representation": ("representation", "representation_subspace", "representation_layer",
                       "representation_subspace_layer"),
    "tokens": ("token_overlap", "token_jaccard", "answer_overlap"),
    "fisher": ("fisher", "fisher_distance"),
}
#: The columns of every long similarity table (the pair, the measure, the layer or <NA>, the value).
SIMILARITY_COLUMNS = ("task_a", "task_b", "measure", "layer", "value")
#: Columns of the table of :func:`pairwise_sweep`, one row per ordered pair (see the module docstring).
SWEEP_COLUMNS = (
    "task_a", "task_b", "seed", "steps", "loss_a_before", "loss_a_after", "exact_a_before", "exact_a_after",
    "answer_a_before", "answer_a_after", "forgetting_loss", "forgetting_exact", "forgetting_answer",
    "gain_loss_b", "gain_exact_b", "exact_b_after", "run",
)


# ---------------------------------------------------------------------------------------------------
# small pieces (numpy, no model)
# ---------------------------------------------------------------------------------------------------


def cosine(a: Any, b: Any) -> float:
    """``<a, b> / (||a|| ||b||)`` of two arrays/tensors of equal size (flattened), or of two dicts of
    tensors with the same keys (all entries concatenated); NaN where a norm is 0."""
    if isinstance(a, Mapping):
        keys = [k for k in a if k in b]
        if not keys:
            raise ValueError("a, b: the dicts share no keys")
        dot = sum(float((_np(a[k]).astype(np.float64) * _np(b[k]).astype(np.float64)).sum()) for k in keys)
        na = sum(float((_np(a[k]).astype(np.float64) ** 2).sum()) for k in keys)
        nb = sum(float((_np(b[k]).astype(np.float64) ** 2).sum()) for k in keys)
    else:
        x, y = _np(a).astype(np.float64).ravel(), _np(b).astype(np.float64).ravel()
        if x.shape != y.shape:
            raise ValueError(f"a, b: sizes differ ({x.size} vs {y.size})")
        dot, na, nb = float(x @ y), float(x @ x), float(y @ y)
    if na == 0 or nb == 0:
        return float("nan")
    return dot / float(np.sqrt(na) * np.sqrt(nb))


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x)


def bhattacharyya(counts_a: Mapping[Any, float], counts_b: Mapping[Any, float]) -> float:
    """Bhattacharyya coefficient ``BC = sum_t sqrt(p_A(t) p_B(t))`` of two count dicts (token -> count),
    each normalised to a distribution ``p_X = c_X / sum c_X``. 1: identical distributions; 0: disjoint."""
    total_a, total_b = float(sum(counts_a.values())), float(sum(counts_b.values()))
    if total_a <= 0 or total_b <= 0:
        raise ValueError("counts_a, counts_b: need positive total counts")
    return float(sum(np.sqrt(counts_a[t] / total_a * counts_b[t] / total_b) for t in counts_a if t in counts_b))


def jaccard(a: Iterable[Any], b: Iterable[Any]) -> float:
    """``|A & B| / |A | B|`` of two sets (NaN when both are empty)."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else float("nan")


def token_counts(task, tokenizer=None, n_examples: int | None = None) -> Counter:
    """Counts of the tokens of ``task``'s train prompts and targets (the first ``n_examples``).

    With a tokenizer, the ids it gives for ``prompt`` and ``" " + target`` (as :mod:`forgetting.tasks.encoding`
    encodes them, without special tokens); with ``tokenizer=None``, whitespace-separated words."""
    counts: Counter = Counter()
    for ex in task.train[:n_examples]:
        for text in (ex.prompt, " " + ex.target):
            counts.update(tokenizer(text, add_special_tokens=False)["input_ids"] if tokenizer is not None else text.split())
    return counts


def answer_overlap(task_a, task_b, tokenizer=None) -> float:
    """Jaccard overlap of the answer vocabularies (token ids with a tokenizer, words without)."""
    def vocab(task) -> set:
        if tokenizer is None:
            return set(task.answer_vocab)
        from forgetting.tasks.encoding import answer_token_ids

        return set(answer_token_ids(tokenizer, task.answer_vocab).tolist())

    return jaccard(vocab(task_a), vocab(task_b))


# ---------------------------------------------------------------------------------------------------
# validation and inputs
# ---------------------------------------------------------------------------------------------------


def _check_measures(measures: str | Sequence[str]) -> list[str]:
    measures = [measures] if isinstance(measures, str) else list(measures)
    unknown = [m for m in measures if m not in MEASURES]
    if unknown or not measures:
        raise SpecError("measures", f"{', '.join(map(repr, unknown)) or 'none given'} not allowed; "
                                    f"allowed: {', '.join(MEASURES)}")
    return list(dict.fromkeys(measures))


def _check_task_names(tasks: Sequence[Any]) -> None:
    from forgetting.tasks.families import task_names

    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Sequence):
        raise SpecError("tasks", f"give a list of at least 2 tasks, got {tasks!r}")
    names = [t if isinstance(t, str) else getattr(t, "name", None) for t in tasks]
    unknown = [t for t in tasks if isinstance(t, str) and t not in task_names()]
    if unknown:
        raise SpecError("tasks", f"unknown task(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(task_names())}")
    if any(n is None for n in names):
        raise SpecError("tasks", "each task must be a task name or a forgetting.tasks.Task")
    if len(tasks) < 2:
        raise SpecError("tasks", f"need at least 2 tasks to compare, got {len(tasks)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SpecError("tasks", f"task(s) {', '.join(map(repr, repeated))} given twice; give each task once")


def _tasks(tasks: Sequence[Any], n_eval: int | None, data_seed: int) -> list:
    from forgetting.tasks.families import make_task

    return [make_task(t, n_eval=n_eval, seed=data_seed) if isinstance(t, str) else t for t in tasks]


def _model_and_tokenizer(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if isinstance(model, str):
        from forgetting.models import load_model

        return load_model(model)
    if tokenizer is None:
        raise SpecError("tokenizer", "needed with a model object (or pass the model's name, e.g. 'tiny')")
    return model, tokenizer


def _pair_rows(names: Sequence[str], matrix: np.ndarray, measure: str, layer: int | None = None) -> list[dict]:
    return [{"task_a": a, "task_b": b, "measure": measure, "layer": layer, "value": float(matrix[i, j])}
            for (i, a), (j, b) in itertools.product(enumerate(names), repeat=2)]


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=list(SIMILARITY_COLUMNS))
    df["layer"] = df["layer"].astype("Int64")
    return df


def _cosine_matrix(vectors: Sequence[np.ndarray]) -> np.ndarray:
    V = np.stack([np.asarray(v, dtype=np.float64).ravel() for v in vectors])
    norms = np.linalg.norm(V, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (V @ V.T) / np.outer(norms, norms)
    return np.clip(out, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# the measures
# ---------------------------------------------------------------------------------------------------


def token_similarity(tasks: Sequence[Any], tokenizer=None, *, n_examples: int | None = None) -> pd.DataFrame:
    """``token_overlap`` (Bhattacharyya), ``token_jaccard`` and ``answer_overlap`` for every ordered pair of
    ``tasks`` (Task objects); long format (:data:`SIMILARITY_COLUMNS`). No model needed."""
    names = [t.name for t in tasks]
    counts = [token_counts(t, tokenizer, n_examples) for t in tasks]
    k = len(tasks)
    bc = np.array([[bhattacharyya(counts[i], counts[j]) for j in range(k)] for i in range(k)])
    jac = np.array([[jaccard(counts[i], counts[j]) for j in range(k)] for i in range(k)])
    ans = np.array([[answer_overlap(tasks[i], tasks[j], tokenizer) for j in range(k)] for i in range(k)])
    return _frame(_pair_rows(names, bc, "token_overlap") + _pair_rows(names, jac, "token_jaccard")
                  + _pair_rows(names, ans, "answer_overlap"))


def _encoded(task, tokenizer, n_examples: int | None):
    from forgetting.tasks.encoding import encode_examples

    return encode_examples(tokenizer, list(task.train[:n_examples]))


def gradient_similarity(model, tasks: Sequence[Any], tokenizer, *, n_examples: int | None = 64,
                        batch_size: int = 32) -> pd.DataFrame:
    """Gradient cosine between the tasks' loss gradients at ``model`` (module docstring); long format."""
    from forgetting.mechanisms.gradients import gradient_alignment, task_gradients

    names = [t.name for t in tasks]
    grads = [task_gradients(model, _encoded(t, tokenizer, n_examples), batch_size=batch_size) for t in tasks]
    k = len(tasks)
    out = {m: np.full((k, k), np.nan) for m in MEASURES["gradient"]}
    groups = {"all": "gradient_cosine", "attention": "gradient_cosine_attention", "mlp": "gradient_cosine_mlp"}
    for i, j in itertools.combinations_with_replacement(range(k), 2):
        table = gradient_alignment(grads[i], grads[j], model=model, heads=False)
        table = table[table["unit"] == "model"].set_index("group")["cosine"]
        for group, measure in groups.items():
            out[measure][i, j] = out[measure][j, i] = float(table.get(group, np.nan))
    return _frame([row for m, mat in out.items() for row in _pair_rows(names, mat, m)])


def _pooled_states(model, examples, batch_size: int) -> list[np.ndarray]:
    """Per layer (embedding output first), the mean over each example's tokens: L+1 arrays of (n, d)."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pooled: list[list[torch.Tensor]] = []
    try:
        with torch.no_grad():
            for start in range(0, len(examples), batch_size):
                batch = examples.select(slice(start, start + batch_size))
                mask = batch.attention_mask.to(device)
                hidden = model(input_ids=batch.input_ids.to(device), attention_mask=mask, output_hidden_states=True).hidden_states
                w = mask[..., None].to(hidden[0].dtype)
                means = [((h * w).sum(dim=1) / w.sum(dim=1)).double().cpu() for h in hidden]
                pooled = [[m] for m in means] if not pooled else [p + [m] for p, m in zip(pooled, means)]
    finally:
        model.train(was_training)
    return [torch.cat(p).numpy() for p in pooled]


def representation_similarity(model, tasks: Sequence[Any], tokenizer, *, n_examples: int | None = 64,
                              batch_size: int = 64) -> pd.DataFrame:
    """Centroid cosine (after removing the across-task mean) and within-task covariance cosine per layer,
    and their averages over the block outputs (module docstring); long format with ``layer``."""
    names = [t.name for t in tasks]
    states = [_pooled_states(model, _encoded(t, tokenizer, n_examples), batch_size) for t in tasks]
    n_layers = len(states[0])
    rows: list[dict] = []
    centroid_mats, subspace_mats = [], []
    for layer in range(n_layers):
        H = [s[layer] for s in states]  # K arrays of (n_X, d)
        mu = [h.mean(axis=0) for h in H]
        m = np.mean(mu, axis=0)
        centroid = _cosine_matrix([u - m for u in mu])
        covs = [(h - u).T @ (h - u) / len(h) for h, u in zip(H, mu)]
        subspace = _cosine_matrix(covs)
        rows += _pair_rows(names, centroid, "representation_layer", layer)
        rows += _pair_rows(names, subspace, "representation_subspace_layer", layer)
        if layer >= 1 or n_layers == 1:
            centroid_mats.append(centroid)
            subspace_mats.append(subspace)
    rows = (_pair_rows(names, np.mean(centroid_mats, axis=0), "representation")
            + _pair_rows(names, np.mean(subspace_mats, axis=0), "representation_subspace") + rows)
    return _frame(rows)


def _example_seed(seed: int, ids: Sequence[int]) -> int:
    return zlib.crc32(np.asarray([seed, *ids], dtype=np.int64).tobytes())


def fisher_embedding(model, examples, *, seed: int = 0, params: Any = None) -> dict[str, Any]:
    """The per-tensor diagonal Fisher of ``model`` on ``examples`` with labels sampled from the model.

    Args:
        model: a causal LM; eval mode during the call.
        examples: :class:`~forgetting.tasks.encoding.EncodedExamples` (n, L); the target positions are
            those with a label (target tokens and eos).
        seed: the sampling seed; each example's generator is seeded from ``seed`` and its token ids, so
            the result does not depend on the order of the examples.
        params: as in :func:`forgetting.mechanisms.gradients.task_gradients` (``None``: trainable ones).

    Returns:
        ``{name: F}`` with F shaped like the parameter (float64, CPU):
        ``F = (1/n) sum_x (d/dtheta sum_t log p(yhat_t | x, y_<t))^2``, yhat_t ~ p(. | x, y_<t).
        Not normalised; :func:`fisher_similarity` normalises per tensor.
    """
    import torch

    from forgetting.mechanisms.gradients import _grad_enabled_on, _resolve_params
    from forgetting.tasks.encoding import IGNORE_INDEX

    named = _resolve_params(model, params)
    names, tensors = list(named), list(named.values())
    device = next(model.parameters()).device
    fisher = [torch.zeros(p.shape, dtype=torch.float64) for p in tensors]
    n = len(examples)
    with _grad_enabled_on(model, tensors):
        for i in range(n):
            row = examples.select(slice(i, i + 1))
            ids = row.input_ids[0][row.attention_mask[0].bool()].tolist()
            logits = model(input_ids=row.input_ids.to(device), attention_mask=row.attention_mask.to(device)).logits[0, :-1]
            positions = (row.labels[0, 1:] != IGNORE_INDEX).nonzero().squeeze(1).to(device)
            log_probs = torch.log_softmax(logits[positions].float(), dim=-1)
            gen = torch.Generator().manual_seed(_example_seed(seed, ids))
            sampled = torch.multinomial(log_probs.detach().exp().cpu(), 1, generator=gen).squeeze(1).to(device)
            score = log_probs.gather(1, sampled[:, None]).sum()
            grads = torch.autograd.grad(score, tensors, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.detach().double().cpu() ** 2)
    return {name: f / n for name, f in zip(names, fisher)}


def _normalised(embedding: Mapping[str, Any], names: Sequence[str]) -> np.ndarray:
    """Each tensor scaled to unit L2 norm (all-zero tensors stay zero), concatenated."""
    parts = []
    for name in names:
        v = _np(embedding[name]).astype(np.float64).ravel()
        norm = np.linalg.norm(v)
        parts.append(v / norm if norm > 0 else v)
    return np.concatenate(parts)


def fisher_similarity(emb_a: Mapping[str, Any], emb_b: Mapping[str, Any]) -> dict[str, float]:
    """``{"fisher": cos(e_A, e_B), "fisher_distance": Task2Vec normalised symmetric distance}`` of two
    Fisher embeddings (:func:`fisher_embedding`), per-tensor normalised (module docstring)."""
    names = [k for k in emb_a if k in emb_b]
    if not names:
        raise ValueError("emb_a, emb_b: no tensor in common")
    ea, eb = _normalised(emb_a, names), _normalised(emb_b, names)
    total = ea + eb
    keep = total > 0
    return {"fisher": cosine(ea, eb), "fisher_distance": 1.0 - cosine(ea[keep] / total[keep], eb[keep] / total[keep])}


def similarity_matrix(
    model: Any,
    tasks: Sequence[Any],
    measures: str | Sequence[str] = tuple(MEASURES),
    *,
    tokenizer: Any = None,
    n_examples: int | None = 64,
    batch_size: int = 32,
    seed: int = 0,
    data_seed: int = 0,
    progress: bool = False,
) -> pd.DataFrame:
    """Every requested similarity measure for every ordered pair of ``tasks`` (diagonal included).

    Args:
        model: a model name (``"tiny"``; loaded with ``forgetting.load_model``) or a causal LM
            (then ``tokenizer`` is required). Its current weights are "the base model".
        tasks: at least 2 distinct task names (``forgetting.tasks.task_names()``) or
            :class:`~forgetting.tasks.families.Task` objects.
        measures: families from :data:`MEASURES` (``gradient``, ``representation``, ``tokens``, ``fisher``).
        n_examples: the first ``n_examples`` train examples of each task are used (``None``: all).
        seed: sampling seed of the Fisher labels; data_seed: the tasks' example sampling seed (as
            ``data.task_seed`` in a spec).

    Returns:
        long DataFrame (:data:`SIMILARITY_COLUMNS`): ``task_a, task_b, measure, layer, value``; ``layer`` is
        <NA> except on the per-layer representation rows. Symmetric: (A, B) and (B, A) are equal.

    Raises :class:`~forgetting.errors.SpecError` for an unknown task or measure, fewer than 2 or repeated tasks, before any work.
    """
    families = _check_measures(measures)
    _check_task_names(tasks)
    task_objs = _tasks(tasks, None, data_seed)
    needs_model = [f for f in families if f != "tokens"]
    if needs_model or not isinstance(model, str):
        model, tokenizer = _model_and_tokenizer(model, tokenizer)
    from tqdm.auto import tqdm

    from forgetting import paths

    frames = []
    for family in tqdm(families, desc="similarity", disable=not progress or paths.quiet()):
        if family == "tokens":
            frames.append(token_similarity(task_objs, tokenizer, n_examples=n_examples))
        elif family == "gradient":
            frames.append(gradient_similarity(model, task_objs, tokenizer, n_examples=n_examples, batch_size=batch_size))
        elif family == "representation":
            frames.append(representation_similarity(model, task_objs, tokenizer, n_examples=n_examples,
                                                    batch_size=batch_size))
        else:
            embs = [fisher_embedding(model, _encoded(t, tokenizer, n_examples), seed=seed) for t in task_objs]
            k = len(task_objs)
            mats = {m: np.zeros((k, k)) for m in MEASURES["fisher"]}
            for i, j in itertools.combinations_with_replacement(range(k), 2):
                for m, v in fisher_similarity(embs[i], embs[j]).items():
                    mats[m][i, j] = mats[m][j, i] = v
            frames.append(_frame([r for m, mat in mats.items() for r in _pair_rows([t.name for t in task_objs], mat, m)]))
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# the pairwise sweep
# ---------------------------------------------------------------------------------------------------


def sweep_spec(task_a: str, task_b: str, *, profile: str = "quick", model: str | None = None, seed: int | None = None,
               steps: int | None = None, base: Any = None):
    """The spec of one sweep pair: ``base`` (a spec or spec dict; default the profile's spec) with
    ``sequence: [task_a, task_b]``, ``steps_per_task`` = ``steps`` (default: the profile's sweep steps),
    evaluation at the end of each stage only (``eval.every: 0``) and no joint reference. With ``base``
    given and ``steps=None``, the base's own ``steps_per_task`` is kept."""
    from forgetting.experiments import ExperimentSpec, parse_spec
    from forgetting.profiles import experiment_spec, sweep_settings

    base_given = base is not None
    if base is None:
        base = experiment_spec(profile, model=model, seed=seed)
    data = base.model_dump(mode="json") if isinstance(base, ExperimentSpec) else dict(base)
    if model is not None:
        data["model"] = model
    if seed is not None:
        data["seed"] = seed
    eval_spec = dict(data.get("eval") or {})
    eval_spec["every"] = 0
    data.update(
        name=f"{data.get('name', 'spec')}-sweep", sequence=[task_a, task_b], eval=eval_spec,
        reference={"enabled": False}, epochs_per_task=None,
        steps_per_task=steps or (data.get("steps_per_task") if base_given else None) or sweep_settings(profile)["steps"],
    )
    return parse_spec(data, source=f"sweep {task_a} -> {task_b}")


def _pair_row(folder, task_a: str, task_b: str) -> dict:
    from forgetting.profiles import load_run

    run = load_run(folder)
    ev = run.evals[run.evals["end_of_stage"]]
    value = ev.set_index(["stage", "task", "metric"])["value"]
    v = lambda stage, task, metric: float(value.get((stage, task, metric), np.nan))  # noqa: E731
    return {
        "task_a": task_a, "task_b": task_b, "seed": run.seed, "steps": int(run.manifest["spec"]["steps_per_task"]),
        "loss_a_before": v(1, task_a, "loss"), "loss_a_after": v(2, task_a, "loss"),
        "exact_a_before": v(1, task_a, "exact_match"), "exact_a_after": v(2, task_a, "exact_match"),
        "answer_a_before": v(1, task_a, "answer_match"), "answer_a_after": v(2, task_a, "answer_match"),
        "forgetting_loss": v(2, task_a, "loss") - v(1, task_a, "loss"),
        "forgetting_exact": v(1, task_a, "exact_match") - v(2, task_a, "exact_match"),
        "forgetting_answer": v(1, task_a, "answer_match") - v(2, task_a, "answer_match"),
        "gain_loss_b": v(1, task_b, "loss") - v(2, task_b, "loss"),
        "gain_exact_b": v(2, task_b, "exact_match") - v(1, task_b, "exact_match"),
        "exact_b_after": v(2, task_b, "exact_match"),
        "run": str(folder),
    }


def pairwise_sweep(
    task_names: Sequence[str] | None = None,
    *,
    profile: str = "quick",
    model: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    spec: Any = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Train A then B for every ordered pair of distinct ``task_names`` and measure the forgetting of A.

    Args:
        task_names: at least 2 distinct task names (default: the profile's sweep tasks,
            ``forgetting.profiles.PROFILES[profile]["sweep"]["tasks"]``).
        profile, model, seed: the base spec (``experiment_spec(profile, model=model, seed=seed)``);
            ``spec`` (an ExperimentSpec or a spec dict) replaces it (tests use a tiny one).
        steps: optimizer steps per task (default: the profile's sweep steps).

    Returns:
        one row per ordered pair (K (K-1) rows, in ``itertools.permutations`` order) with
        :data:`SWEEP_COLUMNS` (module docstring): the forgetting of A by loss, exact match and answer
        match, and B's gain. Every pair is a cached run (:func:`forgetting.profiles.run_cached`): a second
        call reads the results back; an interrupted sweep resumes.
    """
    from tqdm.auto import tqdm

    from forgetting import paths
    from forgetting.profiles import run_cached, sweep_settings

    settings = sweep_settings(profile)
    names = list(settings["tasks"] if task_names is None else task_names)
    _check_task_names(names)
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise SpecError("steps", f"must be an integer >= 1, got {steps!r}")
    pairs = list(itertools.permutations(names, 2))
    specs = [sweep_spec(a, b, profile=profile, model=model, seed=seed, steps=steps, base=spec) for a, b in pairs]
    rows = []
    for (a, b), pair_spec in tqdm(list(zip(pairs, specs)), desc="sweep pairs", disable=not progress or paths.quiet()):
        rows.append(_pair_row(run_cached(pair_spec, progress=False), a, b))
    return pd.DataFrame(rows, columns=list(SWEEP_COLUMNS))


#: File name (per ``n_examples``) of the cached :func:`sweep_alignment` rows in a pair's run folder.
ALIGNMENT_FILE = "similarity_alignment_n{n}.parquet"


def sweep_alignment(sweep: pd.DataFrame, *, n_examples: int = 64, batch_size: int = 32,
                    progress: bool = True) -> pd.DataFrame:
    """``alignment_at_a`` and ``update_alignment`` (module docstring) for every pair of a sweep.

    Args:
        sweep: the table of :func:`pairwise_sweep` (its ``run`` column names each pair's run folder).
        n_examples: the first ``n_examples`` train examples of A and of B give their gradients.

    Returns:
        long DataFrame (:data:`SIMILARITY_COLUMNS`) with the two measures per ordered pair. Each pair's
        rows are cached in its run folder (``similarity_alignment_n<n>.parquet``) and read back next time.
    """
    from pathlib import Path

    from tqdm.auto import tqdm

    from forgetting import paths
    from forgetting.mechanisms.gradients import task_gradients
    from forgetting.profiles import load_run
    from forgetting.results import atomic_write_table
    from forgetting.train.sequence import load_for_spec, prepare_tasks, snapshot_label
    from forgetting.train.snapshots import load_snapshot_state, restore_snapshot

    missing = [c for c in ("task_a", "task_b", "run") if c not in getattr(sweep, "columns", ())]
    if missing:
        raise SpecError("sweep", f"missing column(s) {', '.join(missing)}; pass the table of pairwise_sweep")
    frames, loaded = [], None
    for a, b, folder in tqdm(list(zip(sweep.task_a, sweep.task_b, sweep.run)), desc="alignment",
                             disable=not progress or paths.quiet()):
        cache = Path(folder) / ALIGNMENT_FILE.format(n=n_examples)
        if cache.is_file():
            frames.append(pd.read_parquet(cache))
            continue
        from forgetting.experiments import parse_spec

        spec = parse_spec(load_run(folder).manifest["spec"])
        if loaded is None or loaded[0] != spec.model:
            loaded = (spec.model, *load_for_spec(spec))
        _, model, tokenizer = loaded
        task_a, task_b = prepare_tasks(spec, tokenizer)
        snapshots = Path(folder) / "snapshots"
        restore_snapshot(model, snapshots / snapshot_label(1, a))
        g_a = task_gradients(model, task_a.train, batch_size=batch_size, max_examples=n_examples)
        g_b = task_gradients(model, task_b.train, batch_size=batch_size, max_examples=n_examples)
        theta_0, theta_a = load_snapshot_state(snapshots / snapshot_label(0, "base")), dict(model.named_parameters())
        delta = {n: theta_a[n].detach() - theta_0[n].to(theta_a[n].device) for n in g_b if n in theta_0}
        rows = [{"task_a": a, "task_b": b, "measure": "alignment_at_a", "layer": None, "value": cosine(g_a, g_b)},
                {"task_a": a, "task_b": b, "measure": "update_alignment", "layer": None,
                 "value": cosine(delta, {n: -g for n, g in g_b.items()})}]
        frame = _frame(rows)
        atomic_write_table(cache, frame)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else _frame([])


# ---------------------------------------------------------------------------------------------------
# similarity against forgetting
# ---------------------------------------------------------------------------------------------------

#: The aggregate similarity measures a pair table can carry (similarity_matrix and sweep_alignment).
PAIR_SIMILARITIES = ("gradient_cosine", "gradient_cosine_attention", "gradient_cosine_mlp", "representation",
                     "representation_subspace", "token_overlap", "token_jaccard", "answer_overlap", "fisher",
                     "fisher_distance", "alignment_at_a", "update_alignment")
#: The forgetting measures of a sweep (:data:`SWEEP_COLUMNS`).
FORGETTING_MEASURES = ("forgetting_loss", "forgetting_exact", "forgetting_answer")


def pair_table(sweep: pd.DataFrame, *similarities: pd.DataFrame) -> pd.DataFrame:
    """One row per ordered pair: the sweep's columns and one column per aggregate similarity measure.

    ``similarities`` are long tables (:data:`SIMILARITY_COLUMNS`: :func:`similarity_matrix`,
    :func:`sweep_alignment`); only their aggregate rows (``layer`` <NA>) are used, averaged over seeds
    if there are several. Pairs missing from a similarity table get NaN there. A sweep over several
    seeds (a ``seed`` column with more than one value) is first averaged per pair over the seeds (numeric
    columns; ``seed`` becomes the number of seeds, ``run`` is dropped), so that each pair is one observation.
    """
    missing = [c for c in ("task_a", "task_b") if c not in getattr(sweep, "columns", ())]
    if missing:
        raise SpecError("sweep", f"missing column(s) {', '.join(missing)}; pass the table of pairwise_sweep")
    table = sweep.copy()
    if "seed" in table.columns and table["seed"].nunique() > 1:
        numeric = [c for c in table.select_dtypes("number").columns if c != "seed"]
        grouped = table.groupby(["task_a", "task_b"], sort=False)
        table = grouped[numeric].mean().join(grouped["seed"].nunique()).reset_index()
    for sim in similarities:
        agg = sim[sim["layer"].isna()] if "layer" in sim.columns else sim
        wide = agg.pivot_table(index=["task_a", "task_b"], columns="measure", values="value", aggfunc="mean")
        wide = wide.drop(columns=[c for c in wide.columns if c in table.columns])
        table = table.merge(wide.reset_index(), on=["task_a", "task_b"], how="left")
    return table


def _groups(table: pd.DataFrame) -> np.ndarray | None:
    n_tasks = len(set(table["task_a"]) | set(table["task_b"]))
    return table[["task_a", "task_b"]].to_numpy() if n_tasks >= 3 else None


def similarity_correlations(
    table: pd.DataFrame,
    similarity: Sequence[str] | None = None,
    forgetting: Sequence[str] = FORGETTING_MEASURES,
    methods: Sequence[str] = ("pearson", "spearman"),
    *,
    cluster: bool = True,
    given: Sequence[str] | None = None,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Correlation of every similarity column with every forgetting column of a :func:`pair_table`.

    :func:`forgetting.stats.correlation` with ``groups = (task_a, task_b)`` (``cluster=True``: the cluster
    bootstrap over tasks and the Mantel label permutation; ``cluster=False``: pairs resampled as if
    independent, the too-narrow interval, for comparison). A constant column gives NaN. ``given``: column
    names to partial out (:func:`forgetting.stats.partial_correlation`), e.g. ``["answer_a_before"]``: how
    well A had been learned, which bounds how much of it can be forgotten.

    Returns:
        DataFrame with one row per similarity, forgetting measure and method, and the columns
        ``similarity, forgetting, method, given, n, n_tasks, r, ci_low, ci_high, p_value, resampling,
        n_boot_valid`` (``given``: the partialled-out columns, comma-separated, or empty).
    """
    import warnings

    from forgetting.stats import correlation, partial_correlation

    similarity = [c for c in (similarity or PAIR_SIMILARITIES) if c in table.columns]
    given = list(given or [])
    unknown = [c for c in [*forgetting, *given] if c not in table.columns]
    if unknown:
        raise SpecError("forgetting", f"column(s) {', '.join(unknown)} not in the table; allowed: "
                                      f"{', '.join(c for c in FORGETTING_MEASURES if c in table.columns)}")
    groups = _groups(table) if cluster else None
    n_tasks = len(set(table["task_a"]) | set(table["task_b"]))
    rows = []
    for sim, forg, method in itertools.product(similarity, forgetting, methods):
        data = table[list(dict.fromkeys([sim, forg, *given, "task_a", "task_b"]))].dropna()
        base = {"similarity": sim, "forgetting": forg, "method": method, "given": ", ".join(given), "n": len(data),
                "n_tasks": n_tasks}
        kwargs = dict(n_boot=n_boot, n_perm=n_perm, seed=seed, ci=ci,
                      groups=data[["task_a", "task_b"]].to_numpy() if groups is not None else None)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # few defined resamples: n_boot_valid says so
                res = (partial_correlation(data[sim], data[forg], data[given], method, **kwargs) if given
                       else correlation(data[sim], data[forg], method, **kwargs))
        except ValueError:  # a constant column or too few pairs: undefined
            rows.append({**base, "r": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
                         "resampling": "none", "n_boot_valid": 0})
            continue
        rows.append({**base, "r": res.r, "ci_low": res.ci_low, "ci_high": res.ci_high, "p_value": res.p_value,
                     "resampling": res.resampling, "n_boot_valid": res.n_boot_valid})
    return pd.DataFrame(rows)


def quadratic_peak(table: pd.DataFrame, similarity: str, forgetting: str, *, n_boot: int = 2000, seed: int = 0,
                   ci: float = 0.95) -> dict[str, Any]:
    """Fit ``forgetting = b0 + b1 s + b2 s^2`` over the pairs (cluster bootstrap over tasks) and ask whether
    forgetting peaks at an intermediate similarity.

    Returns ``{"b1", "b2", "b2_ci_low", "b2_ci_high", "vertex", "s_min", "s_max", "r2_linear", "r2_quadratic",
    "peak_inside", "verdict", "n", "n_boot_valid"}``: ``vertex = -b1 / (2 b2)``; ``peak_inside`` is True when
    b2 < 0 and the vertex lies inside [s_min, s_max]; ``verdict`` is ``"intermediate peak"`` when in
    addition the whole interval of b2 is below 0, ``"peak not resolved"`` when only the point estimate
    has one, and ``"no intermediate peak"`` otherwise.
    """
    import warnings

    from forgetting.stats import linear_model

    for column, field in ((similarity, "similarity"), (forgetting, "forgetting")):
        if column not in getattr(table, "columns", ()):
            raise SpecError(field, f"column {column!r} not in the table")
    data = table[[similarity, forgetting, "task_a", "task_b"]].dropna()
    frame = pd.DataFrame({"s": data[similarity].to_numpy(), "s2": data[similarity].to_numpy() ** 2,
                          "f": data[forgetting].to_numpy(), "task_a": data["task_a"].to_numpy(),
                          "task_b": data["task_b"].to_numpy()})
    groups = ["task_a", "task_b"] if _groups(frame) is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        quad = linear_model(frame, "f", ["s", "s2"], n_boot=n_boot, seed=seed, ci=ci, groups=groups)
        lin = linear_model(frame, "f", ["s"], n_boot=0)
    b1, b2 = quad.coef["s"], quad.coef["s2"]
    row = quad.table.set_index("term").loc["s2"]
    vertex = -b1 / (2 * b2) if b2 != 0 else float("nan")
    s_min, s_max = float(frame["s"].min()), float(frame["s"].max())
    inside = bool(b2 < 0 and s_min < vertex < s_max)
    verdict = ("intermediate peak" if inside and row["ci_high"] < 0 else
               "peak not resolved" if inside else "no intermediate peak")
    return {"similarity": similarity, "forgetting": forgetting, "b1": float(b1), "b2": float(b2),
            "b2_ci_low": float(row["ci_low"]), "b2_ci_high": float(row["ci_high"]), "vertex": float(vertex),
            "s_min": s_min, "s_max": s_max, "r2_linear": float(lin.r2), "r2_quadratic": float(quad.r2),
            "peak_inside": inside, "verdict": verdict, "n": quad.n, "n_boot_valid": quad.n_boot_valid}


def task_effects(table: pd.DataFrame, forgetting: Sequence[str] = FORGETTING_MEASURES) -> pd.DataFrame:
    """How much of the variance of each forgetting measure over the pairs the identity of A and of B explain.

    With f_AB the forgetting of pair (A, B) and fbar its mean over all pairs::

        by_a     = sum_AB (fbar_A. - fbar)^2 / sum_AB (f_AB - fbar)^2     (fbar_A.: mean over pairs with that A)
        by_b     = the same with the mean over pairs with that B
        additive = R^2 of the least-squares fit f_AB = m + alpha_A + beta_B

    ``by_a`` near 1 means forgetting is a property of the old task (how well it was learned, how fragile it
    is), whatever follows; a similarity measure can then correlate with forgetting only through A.
    Returns one row per forgetting measure: ``forgetting, by_a, by_b, additive, n``.
    """
    missing = [c for c in ("task_a", "task_b", *forgetting) if c not in getattr(table, "columns", ())]
    if missing:
        raise SpecError("table", f"missing column(s) {', '.join(missing)}; pass pair_table(...) or pairwise_sweep(...)")
    rows = []
    for f in forgetting:
        data = table[["task_a", "task_b", f]].dropna()
        y = data[f].to_numpy(dtype=np.float64)
        total = float(((y - y.mean()) ** 2).sum())
        share = lambda col: float(((data.groupby(col)[f].transform("mean") - y.mean()) ** 2).sum()) / total  # noqa: E731
        X = np.column_stack([np.ones(len(y)), pd.get_dummies(data["task_a"], drop_first=True, dtype=float),
                             pd.get_dummies(data["task_b"], drop_first=True, dtype=float)])
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        additive = 1 - float(((y - X @ beta) ** 2).sum()) / total if total > 0 else float("nan")
        rows.append({"forgetting": f, "by_a": share("task_a") if total > 0 else float("nan"),
                     "by_b": share("task_b") if total > 0 else float("nan"), "additive": additive, "n": len(y)})
    return pd.DataFrame(rows)


def leave_one_task_out(table: pd.DataFrame, similarity: str, forgetting: str, method: str = "pearson") -> pd.DataFrame:
    """The correlation of ``similarity`` with ``forgetting`` with all pairs of one task left out, for each task.

    A jackknife over tasks: a correlation that rests on the pairs of a single task (for example the two
    orders of one very similar pair) changes a lot when that task is dropped. Returns one row per task:
    ``left_out, r, n`` (``n`` pairs remain; ``r`` is NaN with fewer than 3 pairs or a constant column),
    followed by a row ``left_out = "(none)"`` with all pairs.
    """
    from forgetting.stats import pearson, spearman

    if method not in ("pearson", "spearman"):
        raise SpecError("method", f"{method!r} not allowed; allowed: pearson, spearman")
    for column, field in ((similarity, "similarity"), (forgetting, "forgetting")):
        if column not in getattr(table, "columns", ()):
            raise SpecError(field, f"column {column!r} not in the table")
    fn = pearson if method == "pearson" else spearman
    data = table[["task_a", "task_b", similarity, forgetting]].dropna()
    tasks = list(dict.fromkeys([*data["task_a"], *data["task_b"]]))
    rows = []
    for task in [*tasks, None]:
        keep = data if task is None else data[(data["task_a"] != task) & (data["task_b"] != task)]
        x, y = keep[similarity].to_numpy(dtype=float), keep[forgetting].to_numpy(dtype=float)
        defined = len(keep) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        rows.append({"left_out": task or "(none)", "r": float(fn(x, y)) if defined else float("nan"), "n": len(keep)})
    return pd.DataFrame(rows)


def sweep_answers(sweep: pd.DataFrame, task_a: str, task_b: str, *, n_examples: int = 3,
                  max_new_tokens: int = 8) -> pd.DataFrame:
    """What forgetting looks like: greedy answers to A's first ``n_examples`` held-out prompts after A and after B.

    Reads the pair's run (a row of :func:`pairwise_sweep` with these tasks) and decodes greedily from the
    snapshots after stage 1 (A) and stage 2 (B). Returns ``prompt, target, after_a, after_b`` per example.
    """
    from pathlib import Path

    import torch

    from forgetting.experiments import parse_spec
    from forgetting.profiles import load_run
    from forgetting.train.sequence import load_for_spec, snapshot_label
    from forgetting.train.snapshots import restore_snapshot

    rows = sweep[(sweep["task_a"] == task_a) & (sweep["task_b"] == task_b)] if "run" in sweep.columns else sweep.iloc[:0]
    if rows.empty:
        pairs = ", ".join(f"{a}->{b}" for a, b in zip(sweep.get("task_a", []), sweep.get("task_b", [])))
        raise SpecError("task_a, task_b", f"no run for {task_a}->{task_b} in the sweep; allowed: {pairs}")
    folder = Path(rows["run"].iloc[0])
    spec = parse_spec(load_run(folder).manifest["spec"])
    model, tokenizer = load_for_spec(spec)
    from forgetting.tasks.families import make_task

    examples = make_task(task_a, n_eval=spec.data.n_eval, seed=spec.data.task_seed).eval[:n_examples]
    answers: dict[str, list[str]] = {}
    model.eval()
    for stage, task, key in ((1, task_a, "after_a"), (2, task_b, "after_b")):
        restore_snapshot(model, folder / "snapshots" / snapshot_label(stage, task))
        answers[key] = []
        for ex in examples:
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []  # as in training
            ids = torch.tensor([bos + list(tokenizer(ex.prompt, add_special_tokens=False)["input_ids"])],
                               device=next(model.parameters()).device)
            with torch.no_grad():
                out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            answers[key].append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return pd.DataFrame({"prompt": [e.prompt for e in examples], "target": [e.target for e in examples], **answers})
