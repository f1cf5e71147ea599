"""Task similarity: how alike two fine-tuning tasks are, measured on one model before any fine-tuning.

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

The pairwise sweep that asks whether similarity predicts forgetting is :mod:`forgetting.sweep`.

Bad input (unknown task, unknown measure, fewer than two tasks, repeated tasks) raises
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

from tqdm.auto import tqdm

from forgetting import paths
from forgetting.errors import SpecError
from forgetting.mechanisms.gradients import _grad_enabled_on, _resolve_params, gradient_alignment, task_gradients
from forgetting.models import load_model
from forgetting.tasks.encoding import IGNORE_INDEX, answer_token_ids, encode_examples
from forgetting.tasks.families import make_task, task_names

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
    return [make_task(t, n_eval=n_eval, seed=data_seed) if isinstance(t, str) else t for t in tasks]


def _model_and_tokenizer(model: Any, tokenizer: Any) -> tuple[Any, Any]:
    if isinstance(model, str):
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
    return encode_examples(tokenizer, list(task.train[:n_examples]))


def gradient_similarity(model, tasks: Sequence[Any], tokenizer, *, n_examples: int | None = 64,
                        batch_size: int = 32) -> pd.DataFrame:
    """Gradient cosine between the tasks' loss gradients at ``model`` (module docstring); long format."""
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
