"""How big our model is next to the paper's: the words every chapter uses for scale.

The paper (arXiv 2601.18699, abstract) studies mixture-of-experts models of 109 to 400 billion total
parameters (``PAPER_PARAMETERS``). Rules:

- a count is written "about <m> <unit>" with ``m`` rounded to two significant figures (three when
  ``m >= 100``) in the largest of thousand / million / billion that keeps ``m >= 1``;
- the gap is ``k = floor(log10(109e9 / n))`` orders of magnitude, written as a word: "<k> orders of
  magnitude below the paper's smallest model"; ``k = 0`` is "less than an order of magnitude below";
  a model at least as large as 109 billion parameters is "within the paper's range" (up to 400 billion)
  or "larger than the paper's models";
- the factor ``109e9 / n`` is written with one significant figure ("about 100,000 times larger").
"""

from __future__ import annotations

import math

PAPER_PARAMETERS = (109e9, 400e9)
_UNITS = ((1e9, "billion"), (1e6, "million"), (1e3, "thousand"))
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")


def approximate_count(n: float) -> str:
    """``1_051_392 -> "about 1.1 million"``; ``135e6 -> "about 135 million"``; ``512 -> "about 512"``."""
    if not (math.isfinite(n) and n > 0):
        raise ValueError(f"a parameter count must be a positive number, got {n!r}")
    scale, unit = next(((s, u) for s, u in _UNITS if n >= s), (1.0, ""))
    m = n / scale
    digits = 3 if m >= 100 else 2
    m = float(f"{m:.{digits}g}")
    text = f"{m:.0f}" if m == int(m) else f"{m:g}"
    return f"about {text} {unit}".rstrip()


def _order_word(k: int) -> str:
    return _WORDS[k] if k < len(_WORDS) else str(k)


def scale_words(n_parameters: int, n_blocks: int | None = None) -> dict[str, str]:
    """Glue values for a model of ``n_parameters`` parameters against the paper's (module docstring).

    Keys: ``model_scale`` ("about 1.1 million parameters"), ``scale_gap`` (the orders of magnitude to the
    paper's smallest model, as a phrase), ``scale_factor`` ("about 100,000 times larger", how much larger
    the paper's smallest model is; "not larger" when ours is as large), ``paper_scale`` ("109 to 400
    billion parameters") and, given ``n_blocks``, ``n_blocks`` (the number of transformer blocks).
    """
    n = float(n_parameters)
    low, high = PAPER_PARAMETERS
    words = {"model_scale": f"{approximate_count(n)} parameters",
             "paper_scale": f"{low / 1e9:.0f} to {high / 1e9:.0f} billion parameters"}
    if n_blocks is not None:
        words["n_blocks"] = str(int(n_blocks))
    if n >= low:
        words["scale_gap"] = "within the paper's range of model sizes" if n <= high else "larger than the paper's models"
        words["scale_factor"] = "not larger"
        return words
    k = math.floor(math.log10(low / n))
    words["scale_gap"] = ("less than an order of magnitude below the paper's smallest model" if k == 0 else
                          f"{_order_word(k)} order{'s' if k > 1 else ''} of magnitude below the paper's smallest model")
    factor = float(f"{low / n:.1g}")
    words["scale_factor"] = f"about {factor:,.0f} times larger"
    return words
