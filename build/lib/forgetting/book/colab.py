"""Colab: the setup cell every chapter starts with, and links that open a chapter in Colab.

The repository URL and branch live in ONE place, the book's ``_config.yml`` (``repository.url``,
``repository.branch``), which also drives Jupyter Book's launch buttons. The setup cell is code
that runs in Colab before the package exists there, so it cannot import anything: it is generated
from ``_config.yml`` by :func:`setup_cell_source`, written into each chapter by
:func:`forgetting.book.notebooks.sync_notebooks`, and ``tests/test_notebooks_sync.py`` checks that every
chapter's copy matches.

The "Open in Colab" links (:func:`colab_url`, and the launch buttons of the book, rewritten by
:func:`retarget_launch_buttons`) open the chapter's *rendered* notebook, ``notebooks/<stem>.ipynb``
(:data:`COLAB_DIR`): the executed chapter with its glued numbers in the prose and its MyST turned into
plain Markdown (:mod:`forgetting.book.colab_render`, ``make colab-notebooks``). The paired
``chapters/<stem>.ipynb`` stay the jupytext copies of the sources.
"""

from __future__ import annotations

from pathlib import Path

from forgetting import paths
from forgetting.book.config import read_config

SETUP_TAG = "colab-setup"
COLAB = "https://colab.research.google.com"
#: The folder (from the repository root) of the rendered Colab notebooks, one ``<stem>.ipynb`` per chapter.
COLAB_DIR = "notebooks"


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
    url, branch = repo["url"], repo["branch"]
    return (
        "# Colab only: install the companion package (locally `make setup` has installed it).\n"
        "# The quick profile's tables come with the clone, so charts draw without training; a cell that needs\n"
        "# the weights trains them then (minutes). To train every run here instead, uncomment the last line.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import os\n"
        "    import subprocess\n"
        "\n"
        f'    checkout = "{COLAB_CHECKOUT}"\n'
        "    if not os.path.isdir(checkout):\n"
        f'        clone = subprocess.run(["git", "clone", "--depth", "1", "--branch", "{branch}", "{url}", checkout],\n'
        "                               capture_output=True, text=True)\n"
        "        if clone.returncode != 0:\n"
        "            raise RuntimeError(\n"
        f'                f"Could not clone {url} (branch {branch}): {{clone.stderr.strip()}}\\n"\n'
        '                "This notebook installs the companion package from that repository. If it is private or "\n'
        f'                "not published yet, upload a checkout of it to {COLAB_CHECKOUT} (Files panel) and run this "\n'
        '                "cell again.")\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", checkout], check=True)\n'
        '    os.environ["FORGETTING_DATA"] = os.path.join(checkout, "data")\n'
        '    # os.environ["FORGETTING_RETRAIN"] = "1"  # train every quick run here instead of reading its tables'
    )


def colab_path(chapter: str) -> str:
    """The repository path of a chapter's rendered Colab notebook: ``notebooks/00_introduction.ipynb``."""
    return f"{COLAB_DIR}/{Path(chapter).with_suffix('').name}.ipynb"


def colab_url(chapter: str, root: str | Path | None = None) -> str:
    """The Colab link of a chapter's rendered notebook, e.g. ``colab_url("chapters/00_introduction")``."""
    repo = repository(root)
    owner_name = repo["url"].removeprefix("https://github.com/")
    path = "/".join(p for p in (repo["path_to_book"].strip("/"), colab_path(chapter)) if p)
    return f"{COLAB}/github/{owner_name}/blob/{repo['branch']}/{path}"


def retarget_launch_buttons(app, pagename: str, templatename: str, context: dict, doctree) -> None:
    """Sphinx ``html-page-context`` handler (after sphinx-book-theme's, priority 501): a chapter's Colab
    launch button opens :func:`colab_url` (the rendered notebook), not the page's own source."""
    for group in context.get("header_buttons") or []:
        if group.get("label") != "launch-buttons":
            continue
        for button in group.get("buttons") or []:
            if str(button.get("url", "")).startswith(f"{COLAB}/"):
                button["url"] = colab_url(pagename, app.srcdir)


__all__ = ["COLAB_DIR", "SETUP_TAG", "colab_path", "colab_url", "repository", "retarget_launch_buttons",
           "setup_cell_source"]
