"""Execute the chapters with papermill and build the static book with Jupyter Book 1.x.

The pipeline (:func:`~forgetting.book.staging.build_book`), with the repository root as the book
root, one module per job:

- :mod:`forgetting.book.config`: the book root, ``_config.yml`` and ``_toc.yml``, the chapters
  (:class:`~forgetting.book.config.Chapter`) and the papermill parameters of a profile.
- :mod:`forgetting.book.vendor`: the vendored JavaScript. ``_static/forgetting-vega.js`` (vega-embed,
  vega-lite and vega from vl-convert, wrapped; generated, git-ignored) and ``_vendor/html/vendor/``
  (MathJax 3, require.js and the ipywidgets HTML manager from npm; served through
  ``html_extra_path``). Nothing in the built pages comes from a CDN.
- :mod:`forgetting.book.execute`: every chapter listed in ``_toc.yml`` is a jupytext MyST markdown
  file (``chapters/<name>.md``, paired with an un-executed ``chapters/<name>.ipynb`` for Colab). It
  is executed by papermill with the parameters ``profile``, ``model`` and ``seed`` injected, working
  directory = the chapter's folder, into ``_build/executed/<name>.ipynb``. The first failing chapter
  stops the build with a :class:`~forgetting.book.execute.ChapterExecutionError` naming the
  chapter, the cell and its line.
- :mod:`forgetting.book.freshness`: beside each executed notebook, ``<name>.stamp.json`` records
  the hash of the chapter source, the parameters and every file of the ``forgetting`` package (plus
  ``data/specs``). A chapter is executed again when any of those changed, or with ``force=True``;
  an executed notebook is only ever moved into place after a successful run. The HTML has a stamp
  too, and a build with nothing changed returns at once.
- :mod:`forgetting.book.staging`: ``_build/stage/`` is a copy of the book in which each chapter's
  ``.md`` is replaced by its executed ``.ipynb``; ``jupyter-book build`` (nitpicky, warnings are
  errors) writes ``_build/html`` from it. Builds of one book are serialised by a lock file.
- :mod:`forgetting.book.notebooks`: the paired ``.ipynb`` files, regenerated from the sources on
  every build, and each chapter's first cell, the Colab setup cell of :mod:`forgetting.book.colab`.
- :mod:`forgetting.book.colab_render`: the notebooks the Colab links open, ``notebooks/<stem>.ipynb``:
  each executed chapter with its glued numbers written into the prose and its MyST turned into plain
  Markdown (``make colab-notebooks``).
- :mod:`forgetting.book.sphinx_ext`: the book's small Sphinx extension; its ``setup`` is
  re-exported here, so ``_config.yml`` names ``forgetting.book`` as an extension.

A ``.md`` in the toc without a jupytext header (the bibliography) is a plain page, staged as is.
This package re-exports the names the CLI, the Makefile and the tests use. The chapters import
``glue`` from :mod:`forgetting.glue`, which needs none of this.
"""

from __future__ import annotations

from forgetting.book.config import (
    DEFAULT_PARAMETERS,
    PROFILES,
    BookBuildError,
    Chapter,
    book_root,
    chapter,
    chapter_parameters,
    is_notebook_source,
    read_config,
    toc_chapters,
)
from forgetting.book.vendor import VENDORED_NPM, vendor_assets, vendor_dir
from forgetting.book.freshness import (
    FINGERPRINT_DIRS,
    HTML_STAMP,
    STAMP_VERSION,
    chapter_hash,
    html_is_fresh,
    is_fresh,
    package_fingerprint,
)
from forgetting.book.execute import KERNEL, KERNEL_ENV, ChapterExecutionError, execute_chapter
from forgetting.book.notebooks import paired_notebook, setup_cell_problem, sync_notebooks
from forgetting.book.colab_render import render_colab_notebooks
from forgetting.book.staging import build_book, run_jupyter_book, stage_book, write_static
from forgetting.book.sphinx_ext import setup

__all__ = [
    "DEFAULT_PARAMETERS",
    "FINGERPRINT_DIRS",
    "HTML_STAMP",
    "KERNEL",
    "KERNEL_ENV",
    "PROFILES",
    "STAMP_VERSION",
    "VENDORED_NPM",
    "BookBuildError",
    "Chapter",
    "ChapterExecutionError",
    "book_root",
    "build_book",
    "chapter",
    "chapter_hash",
    "chapter_parameters",
    "execute_chapter",
    "html_is_fresh",
    "is_fresh",
    "is_notebook_source",
    "package_fingerprint",
    "paired_notebook",
    "read_config",
    "render_colab_notebooks",
    "run_jupyter_book",
    "setup",
    "setup_cell_problem",
    "stage_book",
    "sync_notebooks",
    "toc_chapters",
    "vendor_assets",
    "vendor_dir",
    "write_static",
]
