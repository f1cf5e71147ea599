"""Colab: the setup cell every chapter starts with, and links that open a chapter in Colab.

The repository URL and branch live in ONE place, the book's ``_config.yml`` (``repository.url``,
``repository.branch``), which also drives Jupyter Book's launch buttons. The setup cell is code
that runs in Colab before the package exists there, so it cannot import anything: it is generated
from ``_config.yml`` by :func:`setup_cell_source`, written into each chapter by
:func:`forgetting.book.notebooks.sync_notebooks`, and ``tests/test_notebooks_sync.py`` checks that every
chapter's copy matches.
"""

from __future__ import annotations

from pathlib import Path

from forgetting import paths
from forgetting.book.config import read_config

SETUP_TAG = "colab-setup"
COLAB = "https://colab.research.google.com"


def repository(root: str | Path | None = None) -> dict:
    """``{"url": ..., "branch": ..., "path_to_book": ...}`` from the book's ``_config.yml``."""
    config_path = (Path(root) if root is not None else paths.REPO_ROOT) / "_config.yml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path}: the book configuration (repository.url) is needed; use a git checkout")
    repo = read_config(root).get("repository") or {}
    url = str(repo.get("url") or "").rstrip("/")
    if not url.startswith("https://github.com/"):
        raise ValueError(f"{config_path}: repository.url must be a https://github.com/ URL, got {url!r}")
    return {"url": url, "branch": str(repo.get("branch") or "main"), "path_to_book": str(repo.get("path_to_book") or "")}


COLAB_CHECKOUT = "/content/forgetting"


def setup_cell_source(root: str | Path | None = None) -> str:
    """The first code cell of every chapter: installs the package, only when running in Colab.

    It clones the repository (not ``pip install git+...``) because the package reads shipped data
    from the checkout's ``data/`` (the pretrained embedded models, the specs), then installs the clone
    (a regular install: importable in the running kernel without a restart) and points
    ``FORGETTING_DATA`` at the clone's ``data/``.
    """
    repo = repository(root)
    return (
        "# Colab only: install the companion package (locally `make setup` has installed it).\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import os\n"
        "    import subprocess\n"
        "\n"
        f'    checkout = "{COLAB_CHECKOUT}"\n'
        "    if not os.path.isdir(checkout):\n"
        f'        subprocess.run(["git", "clone", "--depth", "1", "--branch", "{repo["branch"]}", "{repo["url"]}", checkout], check=True)\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", checkout], check=True)\n'
        '    os.environ["FORGETTING_DATA"] = os.path.join(checkout, "data")'
    )


def colab_url(chapter: str, root: str | Path | None = None) -> str:
    """The Colab link of a chapter's paired notebook, e.g. ``colab_url("chapters/00_introduction")``."""
    repo = repository(root)
    owner_name = repo["url"].removeprefix("https://github.com/")
    path = "/".join(p for p in (repo["path_to_book"].strip("/"), f"{Path(chapter).with_suffix('')}.ipynb") if p)
    return f"{COLAB}/github/{owner_name}/blob/{repo['branch']}/{path}"


__all__ = ["SETUP_TAG", "colab_url", "repository", "setup_cell_source"]
