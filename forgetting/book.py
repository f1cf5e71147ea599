"""Execute the chapters with papermill and build the static book with Jupyter Book 1.x.

The pipeline (``build_book``), with the repository root as the book root:

1. **Vendored JavaScript.** ``_static/forgetting-vega.js`` (vega-embed, vega-lite and vega from
   vl-convert, wrapped; generated, git-ignored) and ``_vendor/html/vendor/`` (MathJax 3, require.js
   and the ipywidgets HTML manager from npm, see :func:`vendor_assets`; served through
   ``html_extra_path``). Nothing in the built pages comes from a CDN.
2. **Execution.** Every chapter listed in ``_toc.yml`` is a jupytext MyST markdown file
   (``chapters/<name>.md``, paired with an un-executed ``chapters/<name>.ipynb`` for Colab). It is
   executed by papermill with the parameters ``profile``, ``model`` and ``seed`` injected, working
   directory = the chapter's folder, into ``_build/executed/<name>.ipynb``. The first failing chapter
   stops the build with a :class:`ChapterExecutionError` naming the chapter, the cell and its line.
3. **Freshness.** Beside each executed notebook, ``<name>.stamp.json`` records the hash of the
   chapter source, the parameters and every file of the ``forgetting`` package (plus
   ``data/specs``). A chapter is executed again when any of those changed, or with ``force=True``;
   an executed notebook is only ever moved into place after a successful run.
4. **Staging.** ``_build/stage/`` is a copy of the book in which each chapter's ``.md`` is replaced
   by its executed ``.ipynb`` (same name, so ``_toc.yml`` is unchanged; the Colab launch button
   therefore targets ``chapters/<name>.ipynb``, the paired notebook in the repository). Jupyter Book
   runs with ``execute_notebooks: off`` on the stage.
5. **HTML.** ``jupyter-book build _build/stage --path-output . --all -W -n --keep-going`` (nitpicky,
   warnings are errors) writes ``_build/html``; a stamp ``_build/html/.forgetting-book.json`` records
   what it was built from (:func:`html_is_fresh`), and a build with nothing changed returns at once.

Also: a ``.md`` in the toc without a jupytext header (the bibliography) is a plain page, staged as
is; the paired ``.ipynb`` files are regenerated from the sources on every build
(:func:`sync_notebooks`); builds of one book are serialised by a lock file. This module is also the
book's small Sphinx extension (:func:`setup`), and ``glue`` is re-exported so that chapters also
run where myst-nb is not installed (Colab).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgetting import paths
from forgetting.errors import ForgettingError, SpecError

PROFILES = ("quick", "full", "gpu")
DEFAULT_PARAMETERS = {"model": "tiny", "seed": 0}
KERNEL = "python3"
STAMP_VERSION = 1
HTML_STAMP = ".forgetting-book.json"
# npm packages vendored under _vendor/html/vendor/ (MathJax 3, not 4: Sphinx 7.4 configures v3)
VENDORED_NPM = {"mathjax": "3.2.2", "requirejs": "2.3.8", "@jupyter-widgets/html-manager": "1.0.15"}
VENDOR_LAYOUT = 4  # bump when the files written under _vendor/html/vendor/ change
# inputs of every chapter besides its own source: the package and the shipped experiment specs
FINGERPRINT_DIRS = ("forgetting", "data/specs")
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}


class BookBuildError(ForgettingError, RuntimeError):
    """The book could not be built; the message says which step failed and how to fix it."""


class ChapterExecutionError(BookBuildError):
    """A chapter raised while papermill executed it.

    Attributes: ``chapter`` (toc name, e.g. ``chapters/01_measuring_forgetting``), ``source`` (the
    ``.md``), ``cell_index`` (index among the chapter's cells, 0-based, injected parameters cell not
    counted; None if unknown), ``line`` (1-based line of the cell in the ``.md``; None if unknown),
    ``cell_source``, ``ename``, ``evalue``, ``notebook`` (the failed executed notebook, kept for
    inspection).
    """

    def __init__(self, chapter: str, source: Path, *, cell_index: int | None, line: int | None,
                 cell_source: str, ename: str, evalue: str, notebook: Path | None):
        self.chapter, self.source, self.cell_index, self.line = chapter, source, cell_index, line
        self.cell_source, self.ename, self.evalue, self.notebook = cell_source, ename, evalue, notebook
        where = f"cell {cell_index}" if cell_index is not None else "a cell"
        if line is not None:
            where += f" (line {line} of {source.name})"
        shown = "\n".join("    " + s for s in cell_source.strip().splitlines()[:12])
        message = f"chapter {chapter} failed in {where}: {ename}: {evalue}"
        if shown:
            message += f"\n  cell source:\n{shown}"
        if notebook is not None:
            message += f"\n  the executed notebook with the full traceback: {notebook}"
        super().__init__(message)


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


def book_root(root: str | Path | None = None) -> Path:
    """The book root: ``root`` or the repository root (where ``_config.yml`` and ``_toc.yml`` live)."""
    path = Path(root).resolve() if root is not None else paths.REPO_ROOT
    if not (path / "_config.yml").is_file() or not (path / "_toc.yml").is_file():
        raise BookBuildError(f"{path} is not a book root: it needs _config.yml and _toc.yml")
    return path


def read_config(root: str | Path | None = None) -> dict:
    """The book's ``_config.yml`` (safe YAML)."""
    import yaml

    path = (Path(root) if root is not None else paths.REPO_ROOT) / "_config.yml"
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def _read_toc(root: Path) -> dict:
    import yaml

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


# ----------------------------------------------------------------------------------------------
# freshness
# ----------------------------------------------------------------------------------------------


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
    from forgetting.profiles import code_only

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


def chapter_parameters(profile: str = "quick", **overrides: Any) -> dict:
    """The papermill parameters of a book build: ``profile``, ``model`` ("tiny"), ``seed`` (0)."""
    if profile not in PROFILES:
        raise SpecError("profile", f"{profile!r} not allowed; allowed: {', '.join(PROFILES)}")
    return {"profile": profile, **DEFAULT_PARAMETERS, **overrides}


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


# ----------------------------------------------------------------------------------------------
# execution
# ----------------------------------------------------------------------------------------------


def _read_md(path: Path):
    import jupytext

    return jupytext.read(path, fmt="md:myst")


def _cell_line(text: str, cell_source: str) -> int | None:
    """1-based line of ``cell_source`` in the chapter's markdown (None if not found verbatim)."""
    snippet = cell_source.strip()
    if not snippet:
        return None
    at = text.find(snippet)
    return None if at < 0 else text.count("\n", 0, at) + 1


#: Environment of the kernels that execute chapters: no progress bars (they would be frozen widgets
#: in the static page), deterministic hashing, charts for the static book (no CDN fallback:
#: :mod:`forgetting.viz.offline`).
KERNEL_ENV = {
    "FORGETTING_QUIET": "1",
    "FORGETTING_STATIC_BOOK": "1",
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONHASHSEED": "0",
}


@contextlib.contextmanager
def _kernel_env():
    saved = {k: os.environ.get(k) for k in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute_chapter(ch: Chapter, parameters: dict, *, package: str | None = None, timeout: int | None = None) -> Path:
    """Execute one chapter with papermill into ``ch.executed`` and write its freshness stamp.

    Raises :class:`ChapterExecutionError` (naming the chapter, cell and line) if a cell raises; the
    failed notebook is kept as ``<name>.failed.ipynb`` and any earlier executed notebook is removed,
    so nothing stale can be staged.
    """
    import jupytext
    import nbformat
    import papermill
    from jupyter_client.manager import KernelManager
    from papermill.exceptions import PapermillExecutionError

    start = time.perf_counter()
    text = ch.source.read_text(encoding="utf-8")
    nb = jupytext.reads(text, fmt="md:myst")
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    ch.executed.parent.mkdir(parents=True, exist_ok=True)
    failed = ch.executed.with_suffix(".failed.ipynb")
    for stale in (ch.executed, ch.stamp, failed):
        stale.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=ch.executed.parent) as tmp, \
            tempfile.TemporaryDirectory(prefix="fgk-") as sockets:
        out = Path(tmp) / ch.executed.name
        # IPC sockets (files only this user can open) rather than TCP on localhost: private on a
        # shared machine, and no "running over TCP without encryption" warning from the kernel
        km = KernelManager(kernel_name=KERNEL, transport="ipc", ip=str(Path(sockets) / "kernel"))
        try:
            with _kernel_env():
                papermill.execute_notebook(
                    nb, str(out), parameters=parameters, kernel_name=KERNEL, cwd=str(ch.source.parent), km=km,
                    progress_bar=False, log_output=False, request_save_on_cell_execute=False,
                    execution_timeout=timeout,
                )
        except PapermillExecutionError as exc:
            kept = None
            if out.is_file():
                shutil.move(out, failed)
                kept = failed
            index = _source_cell_index(nb, exc.cell_index, out_nb=kept)
            raise ChapterExecutionError(
                ch.name, ch.source, cell_index=index, line=_cell_line(text, exc.source or ""),
                cell_source=exc.source or "", ename=exc.ename, evalue=exc.evalue, notebook=kept,
            ) from None
        except Exception as exc:  # the kernel died, a timeout, a missing kernel ...
            raise ChapterExecutionError(
                ch.name, ch.source, cell_index=None, line=None, cell_source="",
                ename=type(exc).__name__, evalue=str(exc).strip().splitlines()[-1] if str(exc).strip() else "",
                notebook=None,
            ) from exc
        finally:  # nbclient leaves a kernel manager it was given running
            if km.has_kernel:
                km.shutdown_kernel(now=True)
        executed = nbformat.read(out, as_version=4)
        executed.metadata.setdefault("forgetting", {})["parameters"] = parameters
        _hide_default_injection(executed)
        nbformat.write(executed, out)
        out.replace(ch.executed)
    stamp = {
        "hash": chapter_hash(ch, parameters, package),
        "chapter": ch.name,
        "parameters": parameters,
        "package_fingerprint": package if package is not None else package_fingerprint(),
        "source_sha256": _sha(text.encode("utf-8")),
        "seconds": round(time.perf_counter() - start, 2),
        "executed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    ch.stamp.write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
    return ch.executed


def _literal_assignments(source: str) -> dict | None:
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                return None
    return values


def _hide_default_injection(nb) -> None:
    """Hide papermill's injected-parameters cell in the page when it only repeats the defaults of
    the chapter's ``parameters`` cell (the usual quick build); otherwise the reader sees it."""
    tags = lambda c: c.setdefault("metadata", {}).setdefault("tags", [])  # noqa: E731
    defaults = next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            injected = _literal_assignments(cell.source)
            base = _literal_assignments(defaults.source) if defaults is not None else None
            if injected is not None and base is not None and all(base.get(k) == v for k, v in injected.items()):
                tags(cell).append("remove-cell")


def _source_cell_index(source_nb, executed_index: int | None, out_nb: Path | None) -> int | None:
    """Map papermill's cell index (which counts its injected-parameters cell) to the chapter's cells."""
    if executed_index is None:
        return None
    if out_nb is not None:
        import nbformat

        cells = nbformat.read(out_nb, as_version=4).cells
        injected = [i for i, c in enumerate(cells) if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
        extra = sum(1 for i in injected if i < executed_index)
        return executed_index - extra
    return executed_index


# ----------------------------------------------------------------------------------------------
# vendored JavaScript
# ----------------------------------------------------------------------------------------------


def vendor_dir(root: str | Path | None = None) -> Path:
    """Where the npm assets live: ``_vendor/html`` (its content is copied to the HTML root)."""
    return (Path(root) if root is not None else paths.REPO_ROOT) / "_vendor" / "html"


def vendor_assets(root: str | Path | None = None, *, force: bool = False) -> Path:
    """Vendor MathJax 3, require.js and @jupyter-widgets/html-manager into ``_vendor/html/vendor/``.

    Uses ``npm pack`` (tarballs only, no dependency tree) for the versions in ``VENDORED_NPM``;
    a no-op when the stamp says they are there. Layout::

        _vendor/html/vendor/mathjax/tex-mml-chtml.js (+ the rest of MathJax's es5/ folder)
        _vendor/html/vendor/require.js
        _vendor/html/vendor/widgets-config.js (widget manager's font paths, MathJax 2 -> 3 shim)
        _vendor/html/vendor/html-manager/embed-amd.js (+ fonts)
    """
    target = vendor_dir(root)
    stamp = target / "vendor" / "VENDORED.json"
    wanted = {"packages": VENDORED_NPM, "layout": VENDOR_LAYOUT}
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise BookBuildError(
            "the book's JavaScript (MathJax, require.js, the widget manager) is not vendored and npm is "
            "missing: install Node.js/npm (e.g. `apt-get install -y npm`) and run `make vendor`"
        )
    packs = target.parent / "npm"
    packs.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in VENDORED_NPM.items()]
    proc = subprocess.run([npm, "pack", *specs, "--pack-destination", str(packs), "--json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookBuildError(f"npm pack {' '.join(specs)} failed:\n{proc.stderr.strip()[-2000:]}")
    files = {entry["name"]: packs / entry["filename"] for entry in json.loads(proc.stdout)}
    out = target / "vendor"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _extract(files["mathjax"], "package/es5/", out / "mathjax")
    _extract(files["requirejs"], "package/require.js", out / "require.js")
    _extract(files["@jupyter-widgets/html-manager"], "package/dist/", out / "html-manager", skip=(".map",))
    for name, tgz in files.items():
        for lic in ("package/LICENSE", "package/LICENSE.txt", "package/LICENSE.md"):
            if _extract(tgz, lic, out / "licenses" / f"{name.replace('/', '__')}-LICENSE", missing_ok=True):
                break
    (out / "widgets-config.js").write_text(_WIDGETS_CONFIG, encoding="utf-8")
    stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    return target


# Loaded between require.js and embed-amd.js (nb_ipywidgets_js in _config.yml).
_WIDGETS_CONFIG = """\
/* forgetting book: glue between the vendored @jupyter-widgets/html-manager and this page (no CDN). */
(function () {
  // the widget manager's AMD modules find their fonts relative to their require.js module URL,
  // by default beside the page ("chapters/@jupyter-widgets/..."): point them at the vendored copy
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  window.requirejs.config({paths: {"@jupyter-widgets/html-manager/dist": here + "html-manager"}});
  // ipywidgets 8 typesets descriptions with the MathJax 2 API (MathJax.Hub.Queue); the book runs
  // MathJax 3, which has typesetPromise instead: translate, or every widget throws
  function queue(job) {
    var el = Array.isArray(job) ? job[2] : null, mj = window.MathJax;
    if (!el || !mj) return;
    if (mj.typesetPromise) { mj.typesetPromise([el]); }
    else if (mj.startup && mj.startup.promise) { mj.startup.promise.then(function () { window.MathJax.typesetPromise([el]); }); }
  }
  function install() { if (window.MathJax && !window.MathJax.Hub) { window.MathJax.Hub = {Queue: queue}; } }
  install();
  document.addEventListener("DOMContentLoaded", install);  // MathJax 3 replaces its global when it loads
})();
"""


def _extract(tgz: Path, prefix: str, dest: Path, *, skip: tuple[str, ...] = (), missing_ok: bool = False) -> bool:
    """Copy the members of ``tgz`` under ``prefix`` (a folder ending in "/" or one file) to ``dest``."""
    found = False
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or member.name.endswith(skip):
                continue
            if prefix.endswith("/"):
                if not member.name.startswith(prefix):
                    continue
                rel = Path(member.name[len(prefix):])
                if ".." in rel.parts:
                    continue
                path = dest / rel
            elif member.name == prefix:
                path = dest
            else:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            found = True
    if not found and not missing_ok:
        raise BookBuildError(f"{tgz.name}: nothing under {prefix!r}")
    return found


# ----------------------------------------------------------------------------------------------
# staging and the Sphinx build
# ----------------------------------------------------------------------------------------------


def write_static(root: str | Path | None = None) -> Path:
    """Write the wrapped vega bundle into the book's ``_static/`` (generated at build time, git-ignored)."""
    from forgetting.viz.offline import write_bundle

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
    import yaml

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

    Raises :class:`ChapterExecutionError` at the first failing chapter (nothing is built) and
    :class:`BookBuildError` when Sphinx reports a warning or an error. Progress goes to a tqdm bar,
    silent with ``FORGETTING_QUIET=1``. Concurrent builds of one book wait for each other.
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
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
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
    from tqdm.auto import tqdm

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


# ----------------------------------------------------------------------------------------------
# paired notebooks
# ----------------------------------------------------------------------------------------------


def paired_notebook(source: str | Path):
    """The un-executed notebook paired with a chapter's ``.md`` (what ``sync_notebooks`` writes)."""
    import jupytext

    nb = jupytext.read(source, fmt="md:myst")
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        # deterministic ids (jupytext draws random ones), so an unchanged chapter gives an unchanged file
        cell.id = f"c{index:03d}-{_sha(cell.source.encode())[:8]}"
    return nb


def setup_cell_problem(nb) -> str | None:
    """Why the notebook's first code cell is not the Colab setup cell of ``forgetting.colab`` (None if it is)."""
    from forgetting.colab import SETUP_TAG, setup_cell_source

    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code:
        return None
    first = code[0]
    if SETUP_TAG not in first.get("metadata", {}).get("tags", []):
        return f"the first code cell is not tagged {SETUP_TAG!r} (the Colab setup cell)"
    if first.source != setup_cell_source():
        return "the Colab setup cell differs from forgetting.colab.setup_cell_source() (_config.yml repository)"
    return None


def _with_setup_cell(nb):
    """``nb`` with its first code cell set to (or preceded by) the Colab setup cell."""
    import nbformat

    from forgetting.colab import SETUP_TAG, setup_cell_source

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
         len(c.get("outputs", [])) if c.cell_type == "code" else 0)
        for c in nb.cells
    )
    meta = nb.metadata
    return cells, (meta.get("jupytext") or {}).get("formats"), (meta.get("kernelspec") or {}).get("name")


def _same_notebook(path: Path, wanted) -> bool:
    """True when the notebook at ``path`` has ``wanted``'s cells (type, source, tags, no outputs)."""
    import nbformat

    try:
        return _notebook_key(nbformat.read(path, as_version=4)) == _notebook_key(wanted)
    except Exception:  # unreadable: rewrite it
        return False


def sync_notebooks(root: str | Path | None = None, *, check: bool = False, sources: Iterable[Path] | None = None,
                   setup_cells: bool = True) -> list[Path]:
    """Bring every ``chapters/*.md`` (or ``sources``) and its paired ``.ipynb`` up to date (md -> ipynb, never back).

    1. With ``setup_cells``, the chapter's first code cell becomes the Colab setup cell generated from
       ``_config.yml`` (:func:`forgetting.colab.setup_cell_source`, tag ``colab-setup``), rewriting the
       ``.md`` if needed.
    2. The paired ``.ipynb`` is written from the ``.md`` with no outputs (deterministic cell ids).

    With ``check=True`` nothing is written; returns the files that are missing or out of sync.
    """
    import jupytext

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


# ----------------------------------------------------------------------------------------------
# Sphinx extension (``sphinx.extra_extensions: [forgetting.book]`` in _config.yml)
# ----------------------------------------------------------------------------------------------


def _drop_thebe(app) -> None:
    """Jupyter Book always loads sphinx-thebe, which adds its configuration script twice (a console
    SyntaxError on every page) and names a CDN; with the thebe launch button off it does nothing."""
    theme_options = app.config.html_theme_options or {}
    if (theme_options.get("launch_buttons") or {}).get("thebe"):
        return
    for event in ("env-before-read-docs", "doctree-resolved"):
        for listener in list(app.events.listeners.get(event, [])):
            if getattr(listener.handler, "__module__", "").startswith("sphinx_thebe"):
                app.disconnect(listener.id)


def _theme_defaults(app, config) -> None:
    # pydata-sphinx-theme logs a console error when no default colour mode is configured
    context = dict(config.html_context or {})
    context.setdefault("default_mode", "light")
    config.html_context = context


def setup(app) -> dict:
    """Sphinx extension for the book: no sphinx-thebe scripts when thebe is off; a default colour mode."""
    app.connect("config-inited", _theme_defaults)
    app.connect("builder-inited", _drop_thebe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def glue(name: str, value: Any, display: bool = False) -> None:
    """``myst_nb.glue`` when myst-nb is installed (the book build); otherwise show the value (Colab)."""
    try:
        from myst_nb import glue as _glue
    except ImportError:
        if display:
            from IPython.display import display as _display

            _display(value)
        return
    _glue(name, value, display=display)


__all__ = [
    "BookBuildError",
    "Chapter",
    "ChapterExecutionError",
    "build_book",
    "chapter",
    "chapter_hash",
    "chapter_parameters",
    "execute_chapter",
    "glue",
    "html_is_fresh",
    "is_fresh",
    "package_fingerprint",
    "paired_notebook",
    "read_config",
    "stage_book",
    "setup_cell_problem",
    "sync_notebooks",
    "toc_chapters",
    "vendor_assets",
    "write_static",
]
