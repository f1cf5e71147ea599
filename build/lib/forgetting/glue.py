"""``glue`` for the chapters: a value a page shows in its text (``{glue:text}`name```).

It is ``myst_nb.glue`` when myst-nb is installed (the book build); elsewhere (Colab, a plain Jupyter
kernel) it shows the value when asked to and otherwise does nothing, so a chapter runs anywhere.
No build machinery is imported here.
"""

from __future__ import annotations

from typing import Any


def glue(name: str, value: Any, display: bool = False) -> None:
    """``myst_nb.glue`` when myst-nb is installed (the book build); otherwise show the value (Colab)."""
    try:
        from myst_nb import glue as _glue  # deferred: optional ([book] extra) and heavy (Sphinx, docutils)
    except ImportError:
        if display:
            from IPython.display import display as _display  # deferred: only this fallback needs IPython

            _display(value)
        return
    _glue(name, value, display=display)


__all__ = ["glue"]
