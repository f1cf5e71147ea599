"""Checkers for chapter 06 (task similarity): the cosine of two gradient dicts, the Bhattacharyya overlap of
two token-count dicts, and why a bootstrap over pairs is too narrow for a pairwise sweep.

>>> from forgetting.exercises.similarity import check_gradient_cosine, check_bhattacharyya
>>> check_gradient_cosine(lambda grad_a, grad_b: ...)        # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping

import numpy as np
import torch

from forgetting.exercises import ExerciseFeedback, reader_number
from forgetting.mechanisms.similarity import bhattacharyya, cosine


def gradient_case() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Two gradient dicts where the usual slips give different answers from the right one: the tensors
    have different sizes and scales (so the mean of per-tensor cosines differs from the cosine of the
    concatenation), and the plain dot product is far from a cosine."""
    grad_a = {"attn.weight": torch.tensor([[3.0, 0.0], [0.0, 4.0]]), "mlp.weight": torch.tensor([0.1, -0.2, 0.3]),
              "norm.weight": torch.tensor([2.0])}
    grad_b = {"attn.weight": torch.tensor([[1.0, 2.0], [0.0, -1.0]]), "mlp.weight": torch.tensor([0.3, 0.1, -0.1]),
              "norm.weight": torch.tensor([-1.0])}
    return grad_a, grad_b


def check_gradient_cosine(fn: Callable[[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]], float]) -> str:
    """Check ``fn(grad_a, grad_b) -> float``: the cosine of two gradients given as ``{name: tensor}`` dicts,
    over ALL their entries: ``<a, b> / (||a|| ||b||)`` with sums over every tensor."""
    grad_a, grad_b = gradient_case()
    want = cosine(grad_a, grad_b)
    got = reader_number(fn({k: v.clone() for k, v in grad_a.items()}, {k: v.clone() for k, v in grad_b.items()}),
                    "the cosine")
    if np.isclose(got, want):
        same = reader_number(fn(grad_a, grad_a), "the cosine")
        if not np.isclose(same, 1.0):
            raise ExerciseFeedback(f"the cosine of a gradient with itself must be 1, your function gave {same:.4f}")
        return f"Correct: cos(g_A, g_B) = {got:.4f} over all {sum(v.numel() for v in grad_a.values())} entries."
    per_tensor = np.mean([cosine(grad_a[k], grad_b[k]) for k in grad_a])
    dot = sum(float((grad_a[k] * grad_b[k]).sum()) for k in grad_a)
    sq_a = sum(float((grad_a[k] ** 2).sum()) for k in grad_a)
    sq_b = sum(float((grad_b[k] ** 2).sum()) for k in grad_b)
    if np.isclose(got, per_tensor):
        raise ExerciseFeedback("you averaged the cosines of the tensors; the gradient is ONE vector over all "
                               "parameters: add the dot products and the squared norms over all tensors first, "
                               "then divide once")
    if np.isclose(got, dot):
        raise ExerciseFeedback("that is the dot product <a, b>; divide by ||a|| ||b|| to get a cosine in [-1, 1]")
    if np.isclose(got, dot / (sq_a * sq_b)):
        raise ExerciseFeedback("you divided by the squared norms; a norm is the square root of the sum of squares")
    if np.isclose(got, -want):
        raise ExerciseFeedback("the sign is flipped: positive cosine means the two gradients point the same way")
    raise ExerciseFeedback(f"on gradient_case() the cosine is {want:.4f}, your function gave {got:.4f}. "
                           "cos = sum over tensors of <a, b> / sqrt(sum ||a||^2 * sum ||b||^2).")


def token_case() -> tuple[Counter, Counter]:
    """Two token-count dicts of different totals with shared and unshared tokens."""
    return (Counter({"Q": 4, ":": 8, "A": 4, "oslo": 3, "lima": 1}),
            Counter({"Q": 2, ":": 4, "A": 2, "lima": 4, "7": 4}))


def check_bhattacharyya(fn: Callable[[Mapping[str, int], Mapping[str, int]], float]) -> str:
    """Check ``fn(counts_a, counts_b) -> float``: the Bhattacharyya coefficient
    ``sum_t sqrt(p_A(t) p_B(t))`` of the token distributions ``p_X = c_X / sum c_X``."""
    a, b = token_case()
    want = bhattacharyya(a, b)
    got = reader_number(fn(Counter(a), Counter(b)), "the overlap")
    if np.isclose(got, want):
        disjoint = reader_number(fn(Counter({"x": 2}), Counter({"y": 5})), "the overlap")
        if not np.isclose(disjoint, 0.0):
            raise ExerciseFeedback(f"two tasks with no token in common must overlap 0, your function gave {disjoint:.4f}")
        return f"Correct: BC = {got:.4f} (1 for identical distributions, 0 for disjoint tokens)."
    shared = [t for t in a if t in b]
    na, nb = sum(a.values()), sum(b.values())
    if np.isclose(got, sum(np.sqrt(a[t] * b[t]) for t in shared)):
        raise ExerciseFeedback("you used the raw counts; divide each task's counts by its total first so that "
                               "both are probability distributions (a task with more examples is not more similar)")
    if np.isclose(got, sum(min(a[t] / na, b[t] / nb) for t in shared)):
        raise ExerciseFeedback("that is the histogram intersection (sum of minima); Bhattacharyya sums the "
                               "square roots of the products, sqrt(p_A(t) p_B(t))")
    if np.isclose(got, sum(a[t] / na * b[t] / nb for t in shared)):
        raise ExerciseFeedback("take the square root of each product p_A(t) p_B(t) before summing; without it "
                               "identical distributions do not give 1")
    if np.isclose(got, len(shared) / len(set(a) | set(b))):
        raise ExerciseFeedback("that is the Jaccard overlap of the token SETS; Bhattacharyya weighs each token by "
                               "how often it occurs in each task")
    raise ExerciseFeedback(f"on token_case() the coefficient is {want:.4f}, your function gave {got:.4f}. "
                           "BC = sum over shared tokens of sqrt(c_A(t)/N_A * c_B(t)/N_B).")


#: The options of the multiple-choice exercise :func:`check_pair_bootstrap` (letter: statement).
PAIR_BOOTSTRAP_CHOICES = {
    "a": "A sweep has too few pairs for any bootstrap.",
    "b": "Pairs that share a task are not independent: resampling pairs treats K (K - 1) pairs as independent "
         "observations when the sweep rests on only K tasks, so the spread of r is underestimated.",
    "c": "The bootstrap over pairs is biased towards r = 0.",
    "d": "Pearson r needs normally distributed data, and the pair bootstrap assumes it.",
}
_PAIR_BOOTSTRAP_FEEDBACK = {
    "a": "a bootstrap works with few observations as long as they are independent; the problem here is "
         "that they are not. Which pairs carry task A's peculiarities?",
    "c": "a percentile bootstrap is not pulled towards 0; look at what is resampled, and whether those "
         "units are independent",
    "d": "the bootstrap makes no normality assumption; that is its point. Think about dependence between pairs.",
}


def check_pair_bootstrap(choice: str) -> str:
    """Multiple choice (``"a"`` .. ``"d"``, see :data:`PAIR_BOOTSTRAP_CHOICES`): why is a bootstrap over the
    pairs of a sweep too narrow?"""
    key = str(choice).strip().lower().rstrip(")")
    if key not in PAIR_BOOTSTRAP_CHOICES:
        raise ExerciseFeedback(f"answer with one letter of {', '.join(PAIR_BOOTSTRAP_CHOICES)}; got {choice!r}")
    if key == "b":
        return ("Correct: the independent units are the tasks. The cluster bootstrap draws tasks with replacement "
                "and keeps every pair of drawn tasks, as if the sweep had been run on the resampled task set.")
    raise ExerciseFeedback(_PAIR_BOOTSTRAP_FEEDBACK[key])


__all__ = ["PAIR_BOOTSTRAP_CHOICES", "check_bhattacharyya", "check_gradient_cosine", "check_pair_bootstrap",
           "gradient_case", "token_case"]
