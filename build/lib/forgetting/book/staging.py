"""Staging and the Sphinx build: :func:`build_book`, the whole pipeline, with the repository root as
the book root.

1. The vendored JavaScript (:func:`forgetting.book.vendor.vendor_assets`) and the vega bundle
   (:func:`write_static`); every chapter must start with the Colab setup cell.
2. Every stale chapter is executed (:func:`forgetting.book.execute.execute_chapter`,
   :func:`forgetting.book.freshness.is_fresh`); the first failing chapter stops the build.
3. The paired notebooks are regenerated from the sources
   (:func:`forgetting.book.notebooks.sync_notebooks`).
4. :func:`stage_book` makes ``_build/stage/``, a copy of the book in which each chapter's ``.md``
   is replaced by its executed ``.ipynb`` (same name, so ``_toc.yml`` is unchanged; the Colab
   launch button therefore targets ``chapters/<name>.ipynb``, the paired notebook in the repository)
   and under each title a sentence with the chapter's measured runtime
   (:func:`forgetting.book.runtime.add_runtime_note`).
5. :func:`run_jupyter_book`: ``jupyter-book build _build/stage --path-output . --all -W -n
   --keep-going`` (nitpicky, warnings are errors, ``execute_notebooks: off``) writes ``_build/html``
   and its stamp (:func:`forgetting.book.freshness.html_is_fresh`); a build with nothing changed
   returns at once. Builds of one book are serialised by a lock file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from forgetting import paths
from forgetting.book.config import BookBuildError, Chapter, _select_chapters, book_root, chapter_parameters, read_config
from forgetting.book.execute import execute_chapter
from forgetting.book.freshness import (
    _SKIP_DIRS,
    HTML_STAMP,
    _expected_stamp,
    _stamp_matches,
    _tree_files,
    is_fresh,
    package_fingerprint,
)
from forgetting.book.notebooks import _read_md, setup_cell_problem, sync_notebooks
from forgetting.book.runtime import add_runtime_note
from forgetting.book.vendor import vendor_assets
from forgetting.viz.offline import write_bundle

try:
    import fcntl
except ImportError:  # not POSIX: builds are not serialised
    fcntl = None


def write_static(root: str | Path | None = None) -> Path:
    """Write the wrapped vega bundle into the book's ``_static/`` (generated at build time, git-ignored)."""
    return write_bundle(book_root(root) / "_static")


def _copy_assets(src_dir: Path, dst_dir: Path) -> None:
    """Copy a chapter folder's non-notebook files (images, bib files, data) into the stage."""
    for path in _tree_files(src_dir):
        if path.suffix in (".md", ".ipynb"):
            continue
        target = dst_dir / path.relative_to(src_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(path, target)
        except FileNotFoundError:  # removed while we copied
            pass


def stage_book(root: Path, chapters: list[Chapter], *, subset: bool) -> Path:
    """Make ``_build/stage``: the book with each chapter's ``.md`` replaced by its executed ``.ipynb``."""
    stage = root / "_build" / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    # the committed config excludes chapters/*.ipynb (the Colab siblings of the .md sources); on the
    # stage the executed .ipynb ARE the sources, so those patterns go
    config = read_config(root)
    config["exclude_patterns"] = [p for p in config.get("exclude_patterns") or [] if not str(p).endswith(".ipynb")]
    (stage / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    if subset:  # a build of some chapters: a toc of just those, the first one as the root page
        toc = {"format": "jb-book", "root": chapters[0].name}
        if len(chapters) > 1:
            toc["chapters"] = [{"file": c.name} for c in chapters[1:]]
        (stage / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False), encoding="utf-8")
    else:
        shutil.copy2(root / "_toc.yml", stage / "_toc.yml")
    for folder in sorted({c.source.parent for c in chapters}):
        _copy_assets(folder, stage / folder.relative_to(root))
    for c in chapters:
        target = stage / f"{c.name}.ipynb" if c.notebook else stage / f"{c.name}.md"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(c.executed if c.notebook else c.source, target)
        if c.notebook:
            add_runtime_note(target, c.stamp)
    for extra in ("_static", "_templates"):
        if (root / extra).is_dir():
            shutil.copytree(root / extra, stage / extra, ignore=shutil.ignore_patterns(*_SKIP_DIRS))
    for bib in (read_config(root).get("bibtex_bibfiles") or []):
        if (root / bib).is_file() and not (stage / bib).exists():
            (stage / bib).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / bib, stage / bib)
    vendored = root / "_vendor"
    if vendored.is_dir():
        try:
            (stage / "_vendor").symlink_to(vendored, target_is_directory=True)
        except OSError:
            shutil.copytree(vendored / "html", stage / "_vendor" / "html")
    return stage


def _jupyter_book_command() -> list[str]:
    return [sys.executable, "-c", "import sys; from jupyter_book.cli.main import main; sys.exit(main())"]


def run_jupyter_book(stage: Path, out_root: Path, *, strict: bool = True) -> Path:
    """``jupyter-book build`` of the stage into ``out_root/_build/html`` (fresh environment)."""
    html = out_root / "_build" / "html"
    (html / HTML_STAMP).unlink(missing_ok=True)
    cmd = [*_jupyter_book_command(), "build", str(stage), "--path-output", str(out_root), "--builder", "html", "--all"]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(stage))
    log = proc.stdout + proc.stderr
    (out_root / "_build" / "jupyter-book.log").write_text(log, encoding="utf-8")
    if proc.returncode != 0 or not (html / "index.html").is_file():
        problems = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line or "Error" in line]
        shown = "\n".join(problems[-30:]) or log.strip()[-3000:]
        raise BookBuildError(
            f"jupyter-book build failed (exit {proc.returncode}; warnings are errors):\n{shown}\n"
            f"full log: {out_root / '_build' / 'jupyter-book.log'}"
        )
    return html


def build_book(
    profile: str = "quick",
    chapters: Sequence[str] | None = None,
    force: bool = False,
    strict: bool = True,
    *,
    root: str | Path | None = None,
    timeout: int | None = None,
) -> Path:
    """Execute the chapters (those that are stale) and build the HTML book; returns ``_build/html``.

    - ``profile``: ``quick`` (CI, CPU), ``full`` (published numbers) or ``gpu`` (Colab GPU).
    - ``chapters``: toc names or stems to build (default: every chapter in ``_toc.yml``); a subset
      builds a smaller book with just those pages.
    - ``force``: execute every selected chapter even when its stamp is fresh (and rebuild the HTML;
      without it, a build whose HTML stamp matches returns at once).
    - ``strict``: Jupyter Book in nitpicky mode with warnings as errors (``-W -n --keep-going``).
    - ``root``: the book root (default: the repository); ``timeout``: seconds per cell (default none).

    Raises :class:`~forgetting.book.execute.ChapterExecutionError` at the first failing chapter (nothing
    is built) and :class:`~forgetting.book.config.BookBuildError` when Sphinx reports a warning or an
    error. Progress goes to a tqdm bar, silent with ``FORGETTING_QUIET=1``. Concurrent builds of one
    book wait for each other.
    """
    parameters = chapter_parameters(profile)
    root = book_root(root)
    selected = _select_chapters(root, chapters)
    if not selected:
        raise BookBuildError(f"{root / '_toc.yml'} lists no chapters")
    with _build_lock(root):
        return _build(root, selected, parameters, subset=chapters is not None, force=force, strict=strict,
                      timeout=timeout)


@contextlib.contextmanager
def _build_lock(root: Path):
    """One build of a book at a time (colleagues share a checkout): later builds wait their turn."""
    lock = root / "_build" / ".book.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        if fcntl is None:  # not POSIX: no lock
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another build of {root} to finish ...", file=sys.stderr)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(root: Path, selected: list[Chapter], parameters: dict, *, subset: bool, force: bool, strict: bool,
           timeout: int | None) -> Path:
    start = time.perf_counter()
    html = root / "_build" / "html"
    for ch in [c for c in selected if c.notebook]:  # Colab runs the paired notebook: its first cell installs
        problem = setup_cell_problem(_read_md(ch.source))
        if problem:
            raise BookBuildError(f"chapter {ch.name}: {problem}; run `make sync-notebooks` to fix it")
    vendor_assets(root)
    write_static(root)
    package = package_fingerprint()
    quiet = paths.quiet()
    if not subset and not force and _stamp_matches(html, _expected_stamp(root, selected, parameters, package)):
        return html  # built from exactly these chapters, parameters, package and configuration
    (html / HTML_STAMP).unlink(missing_ok=True)  # whatever happens next, the old HTML is no longer current
    with tqdm(total=len(selected) + 1, desc="book", unit="step", disable=quiet, leave=not quiet) as bar:
        for ch in selected:
            if not ch.notebook:
                bar.set_postfix_str(f"{ch.name} is a page")
            elif force or not is_fresh(ch, parameters, package):
                bar.set_postfix_str(f"executing {ch.name}")
                execute_chapter(ch, parameters, package=package, timeout=timeout)
            else:
                bar.set_postfix_str(f"{ch.name} is fresh")
            bar.update(1)
        bar.set_postfix_str("jupyter-book build")
        # the paired notebooks Colab opens are regenerated from the sources (un-executed)
        for path in sync_notebooks(root, sources=[c.source for c in selected if c.notebook], setup_cells=False):
            if not quiet:
                bar.write(f"updated {path.relative_to(root)} from its .md")
        stage = stage_book(root, selected, subset=subset)
        html = run_jupyter_book(stage, root, strict=strict)
        bar.update(1)
    if not subset:
        stamp = _expected_stamp(root, selected, parameters, package)
        stamp["built_seconds"] = round(time.perf_counter() - start, 1)
        stamp["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        (html / HTML_STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return html


__all__ = ["build_book", "run_jupyter_book", "stage_book", "write_static"]
