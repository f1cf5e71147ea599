"""The book's configuration: its root, ``_config.yml`` and ``_toc.yml``, its chapters and the
papermill parameters of a build.

- :func:`book_root` and :func:`read_config`: where the book lives and its ``_config.yml``.
- :func:`toc_chapters`, :func:`chapter` (a :class:`Chapter`: source, paired notebook, executed
  notebook, stamp) and :func:`is_notebook_source`: the pages listed in ``_toc.yml``.
- :data:`PROFILES` (the names of ``forgetting.profiles.PROFILES``) and :func:`chapter_parameters`:
  what papermill injects into every chapter.
- :class:`BookBuildError`: the error every step of the build raises.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from forgetting import paths
from forgetting.errors import ForgettingError, SpecError
from forgetting.profiles import PROFILES as _PROFILE_SPECS

#: The profiles a book can be built with (the names of ``forgetting.profiles.PROFILES``).
PROFILES = tuple(_PROFILE_SPECS)
DEFAULT_PARAMETERS = {"model": "tiny", "seed": 0}


class BookBuildError(ForgettingError, RuntimeError):
    """The book could not be built; the message says which step failed and how to fix it."""


def book_root(root: str | Path | None = None) -> Path:
    """The book root: ``root`` or the repository root (where ``_config.yml`` and ``_toc.yml`` live)."""
    path = Path(root).resolve() if root is not None else paths.REPO_ROOT
    if not (path / "_config.yml").is_file() or not (path / "_toc.yml").is_file():
        raise BookBuildError(f"{path} is not a book root: it needs _config.yml and _toc.yml")
    return path


def read_config(root: str | Path | None = None) -> dict:
    """The book's ``_config.yml`` (safe YAML)."""
    path = (Path(root) if root is not None else paths.REPO_ROOT) / "_config.yml"
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _read_toc(root: Path) -> dict:
    with open(root / "_toc.yml", encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _toc_files(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        for key in ("root", "file"):
            if isinstance(node.get(key), str):
                yield node[key]
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key) or []:
                yield from _toc_files(child)
    elif isinstance(node, list):
        for child in node:
            yield from _toc_files(child)


def toc_chapters(root: str | Path | None = None) -> list[str]:
    """The chapters listed in ``_toc.yml``, in reading order, as toc names (``chapters/00_introduction``)."""
    root = book_root(root)
    names = [str(Path(name).with_suffix("")) if Path(name).suffix in (".md", ".ipynb") else name
             for name in _toc_files(_read_toc(root))]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Chapter:
    """One page of the book: its toc name, source, paired notebook and executed notebook.

    A *notebook* chapter has a jupytext header: it is executed and published from its executed
    notebook. Any other ``.md`` in the toc (a bibliography, a glossary) is a plain page: staged as is.
    """

    name: str          # toc name, e.g. "chapters/00_introduction"
    source: Path       # chapters/00_introduction.md (jupytext MyST)
    paired: Path       # chapters/00_introduction.ipynb (un-executed, for Colab)
    executed: Path     # _build/executed/chapters/00_introduction.ipynb
    stamp: Path        # _build/executed/chapters/00_introduction.stamp.json
    notebook: bool = True


def chapter(name: str, root: str | Path | None = None) -> Chapter:
    """Resolve a toc name to a :class:`Chapter` (the ``.md`` must exist)."""
    root = book_root(root)
    name = str(Path(name).with_suffix("")) if Path(name).suffix in (".md", ".ipynb") else name
    source = root / f"{name}.md"
    if not source.is_file():
        raise BookBuildError(f"chapter {name}: {source} does not exist (listed in {root / '_toc.yml'})")
    executed = root / "_build" / "executed" / f"{name}.ipynb"
    return Chapter(name, source, source.with_suffix(".ipynb"), executed, executed.with_suffix(".stamp.json"),
                   notebook=is_notebook_source(source))


def is_notebook_source(path: Path) -> bool:
    """True for a jupytext MyST notebook (a ``jupytext`` or ``kernelspec`` key in its front matter)."""
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return False
    front = text[3:].split("\n---", 1)[0]
    return "jupytext:" in front or "kernelspec:" in front


def _select_chapters(root: Path, wanted: Sequence[str] | None) -> list[Chapter]:
    """The chapters of ``_toc.yml`` named by ``wanted`` (toc names or stems; None: all), in toc order."""
    names = toc_chapters(root)
    if wanted is None:
        return [chapter(n, root) for n in names]
    if isinstance(wanted, str):
        wanted = [wanted]
    chosen = []
    for item in wanted:
        stem = Path(item).with_suffix("").name if Path(item).suffix in (".md", ".ipynb") else Path(item).name
        hits = [n for n in names if n == item or n == str(Path(item).with_suffix("")) or Path(n).name == stem]
        if not hits:
            raise SpecError("chapters", f"{item!r} is not in _toc.yml; allowed: {', '.join(names)}")
        chosen += [h for h in hits if h not in chosen]
    return [chapter(n, root) for n in names if n in chosen]  # toc order


def chapter_parameters(profile: str = "quick", **overrides: Any) -> dict:
    """The papermill parameters of a book build: ``profile``, ``model`` ("tiny"), ``seed`` (0)."""
    if profile not in PROFILES:
        raise SpecError("profile", f"{profile!r} not allowed; allowed: {', '.join(PROFILES)}")
    return {"profile": profile, **DEFAULT_PARAMETERS, **overrides}


__all__ = [
    "DEFAULT_PARAMETERS",
    "PROFILES",
    "BookBuildError",
    "Chapter",
    "book_root",
    "chapter",
    "chapter_parameters",
    "is_notebook_source",
    "read_config",
    "toc_chapters",
]
