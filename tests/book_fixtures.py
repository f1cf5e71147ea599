"""Temporary books for the build and browser tests: the repository's configuration with chapters
written by the test (so a test never depends on what the real chapters contain)."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import yaml

from forgetting import paths

HEADER = """\
---
jupytext:
  formats: md:myst,ipynb
  text_representation:
    extension: .md
    format_name: myst
    format_version: 0.13
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def code(source: str, tags: list[str] | None = None) -> str:
    """A MyST code cell."""
    meta = f":tags: [{', '.join(tags)}]\n\n" if tags else ""
    return f"```{{code-cell}} ipython3\n{meta}{textwrap.dedent(source).strip()}\n```\n"


def setup_cell() -> str:
    """The Colab setup cell every chapter starts with (generated from _config.yml)."""
    from forgetting.book.colab import SETUP_TAG, setup_cell_source

    return code(setup_cell_source(), tags=[SETUP_TAG])


def chapter_md(title: str, *blocks: str, setup: bool = True) -> str:
    """A jupytext MyST chapter: a title, the Colab setup cell, then markdown paragraphs and code
    cells (see :func:`code`)."""
    blocks = ((setup_cell(),) if setup else ()) + blocks
    body = "\n".join(textwrap.dedent(b).strip() + "\n" for b in blocks)
    return f"{HEADER}\n# {title}\n\n{body}"


PARAMETERS = code('profile = "quick"\nmodel = "tiny"\nseed = 0', tags=["parameters"])


def make_book(dest: Path, chapters: dict[str, str]) -> Path:
    """Write a book at ``dest``: the repository's ``_config.yml``, ``_static`` (committed files),
    ``chapters/references.bib``, a ``_toc.yml`` listing ``chapters`` (toc name -> markdown) in order,
    and a link to the vendored JavaScript."""
    repo = paths.REPO_ROOT
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo / "_config.yml", dest / "_config.yml")
    (dest / "_static").mkdir(exist_ok=True)
    for path in (repo / "_static").glob("*"):
        if path.is_file() and path.name != "forgetting-vega.js":
            shutil.copy2(path, dest / "_static" / path.name)
    (dest / "chapters").mkdir(exist_ok=True)
    shutil.copy2(repo / "chapters" / "references.bib", dest / "chapters" / "references.bib")
    names = list(chapters)
    for name, text in chapters.items():
        (dest / f"{name}.md").parent.mkdir(parents=True, exist_ok=True)
        (dest / f"{name}.md").write_text(text, encoding="utf-8")
    toc = {"format": "jb-book", "root": names[0]}
    if len(names) > 1:
        toc["chapters"] = [{"file": n} for n in names[1:]]
    (dest / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")
    if (repo / "_vendor").is_dir() and not (dest / "_vendor").exists():
        (dest / "_vendor").symlink_to(repo / "_vendor", target_is_directory=True)
    return dest
