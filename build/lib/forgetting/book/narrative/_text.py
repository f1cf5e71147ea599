"""Number formats shared by the chapters' narrative functions."""

from __future__ import annotations

import math


def pct(value: float) -> str:
    """``0.273 -> "27 %"``; ``"n/a"`` for a missing value."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.0f} %"


def num(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals; ``"n/a"`` for a missing value."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def listing(items, sep: str = ", ") -> str:
    """The items joined by ``sep`` (the caller says what an empty list means)."""
    return sep.join(str(i) for i in items)
