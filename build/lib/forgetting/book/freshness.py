"""Freshness: what an executed chapter and the built HTML depend on, and whether they are current.

- :func:`package_fingerprint`: every file of the ``forgetting`` package and ``data/specs`` (code
  only for Python files: docstrings and comments do not change what a chapter computes).
- :func:`chapter_hash` and :func:`is_fresh`: beside each executed notebook, ``<name>.stamp.json``
  records the hash of the chapter source, its parameters and the package fingerprint; a chapter is
  executed again when any of them changed.
- :func:`html_is_fresh`: ``_build/html/.forgetting-book.json`` records what the HTML was built from
  (every chapter's hash and the book's configuration, static files and vendored JavaScript).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from forgetting import paths
from forgetting.book.config import (
    BookBuildError,
    Chapter,
    _select_chapters,
    book_root,
    chapter_parameters,
    toc_chapters,
)
from forgetting.book.vendor import vendor_dir
from forgetting.runs.fingerprint import code_only

STAMP_VERSION = 1
HTML_STAMP = ".forgetting-book.json"
# inputs of every chapter besides its own source: the package and the shipped experiment specs
FINGERPRINT_DIRS = ("forgetting", "data/specs")
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        for filename in sorted(filenames):
            if Path(filename).suffix not in _SKIP_SUFFIXES:
                out.append(Path(dirpath) / filename)
    return out


def _file_sha(path: Path) -> str:
    """sha256 of a file; of a Python file's code only (docstrings and comments do not change what a
    chapter computes, and the API page reads them afresh at every build)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # removed while we looked (someone else's editor or tool)
        return "-"
    if path.suffix == ".py":
        try:
            data = code_only(data.decode("utf-8")).encode()
        except (SyntaxError, UnicodeDecodeError):  # half-written file: its bytes decide
            pass
    return _sha(data)


def package_fingerprint(root: str | Path | None = None) -> str:
    """sha256 over the path and content (code only, for Python files) of every file of the ``forgetting``
    package and ``data/specs``.

    ``root`` is the folder holding them (default: the repository root). Caches and bytecode are skipped.
    """
    root = Path(root) if root is not None else paths.REPO_ROOT
    h = hashlib.sha256()
    for folder in FINGERPRINT_DIRS:
        for path in _tree_files(root / folder):
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            h.update(_file_sha(path).encode() + b"\n")
    return h.hexdigest()


def chapter_hash(ch: Chapter, parameters: dict, package: str | None = None) -> str:
    """What an executed chapter depends on: its source, its parameters and the package fingerprint."""
    record = {
        "version": STAMP_VERSION,
        "source": _sha(ch.source.read_bytes()),
        "parameters": parameters,
        "package": package if package is not None else package_fingerprint(),
    }
    return _sha(json.dumps(record, sort_keys=True).encode())


def is_fresh(ch: Chapter, parameters: dict, package: str | None = None) -> bool:
    """True when ``ch`` has an executed notebook made from exactly this source, parameters and package
    (always True for a plain page: there is nothing to execute)."""
    if not ch.notebook:
        return True
    if not ch.executed.is_file() or not ch.stamp.is_file():
        return False
    try:
        stamp = json.loads(ch.stamp.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return stamp.get("hash") == chapter_hash(ch, parameters, package)


def _config_fingerprint(root: Path) -> str:
    h = hashlib.sha256()
    for name in ("_config.yml", "_toc.yml"):
        h.update(_sha((root / name).read_bytes()).encode())
    for folder in ("_static", "_templates"):
        if (root / folder).is_dir():
            for path in _tree_files(root / folder):
                h.update(path.relative_to(root).as_posix().encode() + _file_sha(path).encode())
    for c in toc_chapters(root):
        folder = (root / c).parent
        for path in _tree_files(folder):
            if path.suffix not in (".md", ".ipynb"):
                h.update(path.relative_to(root).as_posix().encode() + _file_sha(path).encode())
    stamp = vendor_dir(root) / "vendor" / "VENDORED.json"
    h.update(stamp.read_bytes() if stamp.is_file() else b"-")
    return h.hexdigest()


def _expected_stamp(root: Path, chapters: list[Chapter], parameters: dict, package: str) -> dict:
    return {
        "version": STAMP_VERSION,
        "parameters": parameters,
        "chapters": {c.name: chapter_hash(c, parameters, package) for c in chapters},
        "config": _config_fingerprint(root),
    }


def _stamp_matches(html: Path, expected: dict) -> bool:
    try:
        stamp = json.loads((html / HTML_STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(stamp.get(k) == v for k, v in expected.items()) and (html / "index.html").is_file()


def html_is_fresh(profile: str = "quick", root: str | Path | None = None, *, html: str | Path | None = None) -> bool:
    """True when ``_build/html`` was built from every toc chapter, as they and the package are now."""
    root = book_root(root)
    html = Path(html) if html is not None else root / "_build" / "html"
    if not (html / HTML_STAMP).is_file():
        return False
    try:
        chapters = _select_chapters(root, None)
    except BookBuildError:
        return False
    return _stamp_matches(html, _expected_stamp(root, chapters, chapter_parameters(profile), package_fingerprint()))


__all__ = [
    "FINGERPRINT_DIRS",
    "HTML_STAMP",
    "STAMP_VERSION",
    "chapter_hash",
    "html_is_fresh",
    "is_fresh",
    "package_fingerprint",
]
