"""The package version (one place; ``forgetting.__version__`` and the provenance of results read it)."""

__version__ = "0.1.0"
