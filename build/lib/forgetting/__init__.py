"""forgetting: measure how and why language models forget during continual fine-tuning.

The companion package to *Mechanistic Analysis of Catastrophic Forgetting in Large Language Models
During Continual Fine-tuning* (arXiv 2601.18699). Every chapter of the book runs on it.

>>> from forgetting import load_model
>>> model, tokenizer = load_model("tiny")          # the embedded default (made by the package)
"""

from __future__ import annotations

from forgetting.version import __version__

__all__ = ["__version__", "load_model"]


def load_model(name_or_path: str = "tiny", **kwargs):
    """Load a causal LM and its tokenizer: ``"tiny"``/``"tiny-moe"`` or any Hugging Face id or local path.

    See :func:`forgetting.models.load_model` for the arguments.
    """
    from forgetting.models import load_model as _load_model  # deferred: `import forgetting` stays light

    return _load_model(name_or_path, **kwargs)
