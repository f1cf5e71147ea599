"""Paired notebooks: each chapter's un-executed ``.ipynb`` (what Colab opens), written from its ``.md``.

The chapters are jupytext MyST markdown; the ``.ipynb`` beside each is generated from it, never
edited (md -> ipynb, never back). :func:`sync_notebooks` (``make sync-notebooks``, and every book
build) makes each chapter's first code cell the Colab setup cell of :mod:`forgetting.book.colab`
and rewrites the paired notebook when its cells differ; :func:`setup_cell_problem` says what is
wrong with a chapter's setup cell, :func:`paired_notebook` is the notebook it should be.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from forgetting import paths
from forgetting.book.colab import SETUP_TAG, setup_cell_source
from forgetting.book.freshness import _sha


def _read_md(path: Path):
    """The chapter's MyST source as a notebook."""
    import jupytext  # deferred: the [book] extra (importing forgetting.book needs only the core package)

    return jupytext.read(path, fmt="md:myst")


def paired_notebook(source: str | Path):
    """The un-executed notebook paired with a chapter's ``.md`` (what ``sync_notebooks`` writes)."""
    import jupytext  # deferred: the [book] extra

    nb = jupytext.read(source, fmt="md:myst")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        # deterministic ids (jupytext draws random ones), so an unchanged chapter gives an unchanged file
        cell.id = f"c{index:03d}-{_sha(cell.source.encode())[:8]}"
    return nb


def setup_cell_problem(nb) -> str | None:
    """Why the notebook's first code cell is not the Colab setup cell of ``forgetting.book.colab`` (None if it is)."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code:
        return None
    first = code[0]
    if SETUP_TAG not in first.get("metadata", {}).get("tags", []):
        return f"the first code cell is not tagged {SETUP_TAG!r} (the Colab setup cell)"
    if first.source != setup_cell_source():
        return "the Colab setup cell differs from forgetting.book.colab.setup_cell_source() (_config.yml repository)"
    return None


def _with_setup_cell(nb):
    """``nb`` with its first code cell set to (or preceded by) the Colab setup cell."""
    import nbformat  # deferred: the [book] extra

    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    if not code:
        return nb
    first = nb.cells[code[0]]
    if SETUP_TAG in first.get("metadata", {}).get("tags", []):
        first.source = setup_cell_source()
    else:
        cell = nbformat.v4.new_code_cell(setup_cell_source(), metadata={"tags": [SETUP_TAG]})
        cell.id = "colab-setup"
        nb.cells.insert(code[0], cell)
    return nb


def _notebook_key(nb) -> tuple:
    cells = tuple(
        (c.cell_type, c.source.strip(), tuple(c.get("metadata", {}).get("tags", [])),
         repr(c.get("metadata", {}).get("mystnb")),  # a chart cell's figure caption and name
         len(c.get("outputs", [])) if c.cell_type == "code" else 0)
        for c in nb.cells
    )
    meta = nb.metadata
    return cells, (meta.get("jupytext") or {}).get("formats"), (meta.get("kernelspec") or {}).get("name")


def _same_notebook(path: Path, wanted) -> bool:
    """True when the notebook at ``path`` has ``wanted``'s cells (type, source, tags, figure metadata, no outputs)."""
    import nbformat  # deferred: the [book] extra

    try:
        return _notebook_key(nbformat.read(path, as_version=4)) == _notebook_key(wanted)
    except Exception:  # unreadable: rewrite it
        return False


def sync_notebooks(root: str | Path | None = None, *, check: bool = False, sources: Iterable[Path] | None = None,
                   setup_cells: bool = True) -> list[Path]:
    """Bring every ``chapters/*.md`` (or ``sources``) and its paired ``.ipynb`` up to date (md -> ipynb, never back).

    1. With ``setup_cells``, the chapter's first code cell becomes the Colab setup cell generated from
       ``_config.yml`` (:func:`forgetting.book.colab.setup_cell_source`, tag ``colab-setup``), rewriting the
       ``.md`` if needed.
    2. The paired ``.ipynb`` is written from the ``.md`` with no outputs (deterministic cell ids).

    With ``check=True`` nothing is written; returns the files that are missing or out of sync.
    """
    import jupytext  # deferred: the [book] extra

    root = Path(root) if root is not None else paths.REPO_ROOT
    changed = []
    for md in sorted(sources if sources is not None else (root / "chapters").glob("*.md")):
        if "jupytext" not in md.read_text(encoding="utf-8")[:2000]:
            continue  # plain markdown page, not a notebook
        nb = jupytext.read(md, fmt="md:myst")
        if setup_cells and setup_cell_problem(nb):
            changed.append(md)
            if not check:
                jupytext.write(_with_setup_cell(nb), md, fmt="md:myst")
        ipynb = md.with_suffix(".ipynb")
        wanted = _with_setup_cell(paired_notebook(md)) if setup_cells else paired_notebook(md)
        if ipynb.is_file() and _same_notebook(ipynb, wanted):
            continue  # (compared by content: a notebook written by `jupytext --sync` is left alone)
        text = jupytext.writes(wanted, fmt="ipynb")
        changed.append(ipynb)
        if not check:
            ipynb.write_text(text, encoding="utf-8")
    return changed


__all__ = ["paired_notebook", "setup_cell_problem", "sync_notebooks"]
