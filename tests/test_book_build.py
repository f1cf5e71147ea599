"""The book pipeline (forgetting.book): errors name the chapter and the cell, stale chapters are
re-executed, the staged build has no CDN, the Colab links and config come from one place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from forgetting import book, paths
from forgetting.book import colab
from tests.book_fixtures import PARAMETERS, chapter_md, code, make_book

REPO = paths.REPO_ROOT


def _copy_package(dest: Path) -> Path:
    for folder in book.FINGERPRINT_DIRS:
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


# ----------------------------------------------------------------------------------------------
# freshness (no execution)
# ----------------------------------------------------------------------------------------------


def test_package_fingerprint_changes_with_any_package_file(tmp_path):
    root = _copy_package(tmp_path)
    before = book.package_fingerprint(root)
    assert book.package_fingerprint(root) == before  # deterministic

    # bytecode and caches do not count
    (root / "forgetting" / "__pycache__").mkdir(exist_ok=True)
    (root / "forgetting" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"junk")
    assert book.package_fingerprint(root) == before

    # a comment or a docstring does not change what a chapter computes ...
    target = sorted((root / "forgetting").rglob("*.py"))[-1]
    target.write_text(target.read_text() + "\n# edited\n")
    assert book.package_fingerprint(root) == before
    # ... an edit of code deep in the package counts ...
    target.write_text(target.read_text() + "\n_edited = 1\n")
    edited = book.package_fingerprint(root)
    assert edited != before
    # ... so does a new file, and an experiment spec
    (root / "forgetting" / "new_module.py").write_text("x = 1\n")
    added = book.package_fingerprint(root)
    assert added != edited
    spec = sorted((root / "data" / "specs").glob("*.yaml"))[0]
    spec.write_text(spec.read_text() + "\n# edited\n")
    assert book.package_fingerprint(root) != added


def test_chapter_hash_depends_on_source_parameters_and_package(tmp_path):
    root = make_book(tmp_path / "b", {"chapters/a": chapter_md("A", PARAMETERS, code("x = 1"))})
    ch = book.chapter("chapters/a", root)
    quick = book.chapter_parameters("quick")
    h = book.chapter_hash(ch, quick, package="p1")
    assert h == book.chapter_hash(ch, dict(quick), package="p1")
    assert h != book.chapter_hash(ch, book.chapter_parameters("full"), package="p1")
    assert h != book.chapter_hash(ch, quick, package="p2")
    ch.source.write_text(ch.source.read_text().replace("x = 1", "x = 2"))
    assert h != book.chapter_hash(ch, quick, package="p1")


def test_is_fresh_reads_the_stamp_beside_the_executed_notebook(tmp_path):
    root = make_book(tmp_path / "b", {"chapters/a": chapter_md("A", code("x = 1"))})
    ch = book.chapter("chapters/a", root)
    params = book.chapter_parameters("quick")
    assert not book.is_fresh(ch, params, package="p")
    ch.executed.parent.mkdir(parents=True)
    ch.executed.write_text("{}")
    ch.stamp.write_text(json.dumps({"hash": book.chapter_hash(ch, params, package="p")}))
    assert book.is_fresh(ch, params, package="p")
    assert not book.is_fresh(ch, params, package="changed")
    ch.stamp.write_text("not json")
    assert not book.is_fresh(ch, params, package="p")


def test_bad_profile_and_unknown_chapter_are_refused_before_any_work(tmp_path):
    from forgetting.errors import SpecError

    root = make_book(tmp_path / "b", {"chapters/a": chapter_md("A", code("x = 1"))})
    with pytest.raises(SpecError, match="profile.*allowed: quick, full, gpu"):
        book.build_book(profile="huge", root=root)
    with pytest.raises(SpecError, match="chapters.*'nope' is not in _toc.yml"):
        book.build_book(chapters=["nope"], root=root)
    assert not (root / "_build").exists()


def test_toc_lists_the_chapters_and_missing_sources_are_named(tmp_path):
    assert book.toc_chapters(REPO)[:3] == ["chapters/00_introduction", "chapters/syllabus", "chapters/01_measuring_forgetting"]
    root = make_book(tmp_path / "b", {"chapters/a": chapter_md("A", code("x = 1")), "chapters/b": "x"})
    (root / "chapters" / "b.md").unlink()
    with pytest.raises(book.BookBuildError, match=r"chapter chapters/b: .*b\.md does not exist"):
        book.build_book(root=root)


# ----------------------------------------------------------------------------------------------
# configuration in one place
# ----------------------------------------------------------------------------------------------


def test_repository_url_lives_in_config_and_drives_colab():
    config = book.read_config(REPO)
    url = config["repository"]["url"]
    assert url == "https://github.com/forgetting-companion/forgetting"
    assert config["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    assert config["execute"]["execute_notebooks"] == "off"
    assert f'"--branch", "{config["repository"]["branch"]}", "{url}"' in colab.setup_cell_source()
    assert url in colab.setup_cell_source()
    assert colab.colab_url("chapters/00_introduction") == (
        "https://colab.research.google.com/github/forgetting-companion/forgetting/blob/main/notebooks/00_introduction.ipynb"
    )
    # nothing else in the package spells the URL
    for path in (REPO / "forgetting").rglob("*.py"):
        assert "forgetting-companion" not in path.read_text(), path


def test_colab_setup_cell_says_what_to_do_when_the_clone_fails(tmp_path, monkeypatch):
    """Run the setup cell as Colab would (``google.colab`` imported), against a repository that does not
    exist: one clear error naming the URL and the way out, before anything is installed."""
    import subprocess
    import sys
    import types

    url = colab.repository(REPO)["url"]
    source = colab.setup_cell_source().replace(url, f"file://{tmp_path}/missing").replace(
        colab.COLAB_CHECKOUT, str(tmp_path / "checkout"))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    calls = []
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(args) or real_run(args, **kw))
    with pytest.raises(RuntimeError) as err:
        exec(compile(source, "setup-cell", "exec"), {})
    message = str(err.value)
    assert message.startswith(f"Could not clone file://{tmp_path}/missing (branch main): ")
    assert "upload a checkout of it to" in message and "fatal:" in message  # git's own reason
    assert [c[:2] for c in calls] == [["git", "clone"]]  # pip never ran


def test_config_serves_nothing_from_a_cdn():
    sphinx = book.read_config(REPO)["sphinx"]["config"]
    assert "://" not in sphinx["mathjax_path"]
    assert all("://" not in key for key in sphinx["nb_ipywidgets_js"])
    assert sphinx["html_extra_path"] == ["_vendor/html"]
    patterns = book.read_config(REPO)["exclude_patterns"]
    assert "chapters/*.ipynb" in patterns and "_build" in patterns and ".venv" in patterns


# ----------------------------------------------------------------------------------------------
# execution and build (a kernel per chapter: seconds each)
# ----------------------------------------------------------------------------------------------


def test_failing_chapter_stops_the_build_naming_chapter_and_cell(tmp_path):
    broken = chapter_md(
        "Broken",
        PARAMETERS,
        "Some prose.",
        code("total = 1 + 1"),
        code("ratio = total / 0  # the bug"),
        code("print('never reached')"),
    )
    root = make_book(tmp_path / "b", {
        "chapters/00_fine": chapter_md("Fine", PARAMETERS, code("x = 1")),
        "chapters/01_broken": broken,
        "chapters/02_after": chapter_md("After", PARAMETERS, code("y = 2")),
    })
    with pytest.raises(book.ChapterExecutionError) as info:
        book.build_book(root=root)
    err = info.value
    message = str(err)
    line = broken.splitlines().index("ratio = total / 0  # the bug") + 1
    assert err.chapter == "chapters/01_broken"
    assert err.cell_index == 5  # title, setup, parameters, prose, total, ratio (0-based; papermill's cell not counted)
    assert err.line == line
    assert err.ename == "ZeroDivisionError"
    assert "chapter chapters/01_broken failed in cell 5" in message
    assert f"line {line} of 01_broken.md" in message
    assert "ZeroDivisionError: division by zero" in message
    assert "ratio = total / 0" in message
    assert err.notebook is not None and err.notebook.is_file()  # kept for the traceback
    # the first chapter ran, the failing one left nothing publishable, the next one never ran
    assert book.chapter("chapters/00_fine", root).executed.is_file()
    assert not book.chapter("chapters/01_broken", root).executed.exists()
    assert not book.chapter("chapters/02_after", root).executed.exists()
    assert not (root / "_build" / "html").exists()


def test_build_executes_stale_chapters_only_and_stages_executed_notebooks(tmp_path):
    chart = code("""
        import pandas as pd
        from forgetting.viz import offline, r_matrix_heatmap
        from tests.viz_fixtures import synthetic_evals

        offline.enable()
        r_matrix_heatmap(synthetic_evals())
    """)
    glued = code("""
        from forgetting.glue import glue
        glue("answer", 6 * 7, display=False)
    """)
    text = chapter_md("Small", PARAMETERS, "The answer is {glue:text}`answer`. Math: $a^2 + b^2$.", glued, chart)
    root = make_book(tmp_path / "b", {"chapters/small": text, "chapters/notes": "# Notes\n\nA plain page.\n"})
    (root / "chapters" / "asset.txt").write_text("data")  # an asset that must be staged beside the chapter
    # the kernel runs in chapters/: make `tests` importable there for the synthetic table
    (root / "chapters" / "tests").symlink_to(REPO / "tests", target_is_directory=True)

    html = book.build_book(root=root)
    page = (html / "chapters" / "small.html").read_text()
    assert "The answer is" in page and ">42<" in page
    assert 'class="forgetting-vega"' in page and "vegaEmbed" in page
    assert "# Parameters" not in page  # the injected cell only repeated the defaults: hidden
    assert (html / "_static" / "forgetting-vega.js").is_file()
    assert (html / "vendor" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert (root / "_build" / "stage" / "chapters" / "asset.txt").read_text() == "data"
    # a .md without a jupytext header is a plain page: staged as is, never executed, no paired notebook
    notes = book.chapter("chapters/notes", root)
    assert not notes.notebook and not notes.executed.exists() and not notes.paired.exists()
    assert "A plain page." in (html / "chapters" / "notes.html").read_text()
    for path in html.rglob("*.html"):
        # no page names a CDN, the chart scripts included (their live-kernel fallback is left out of
        # charts made for the static book: forgetting.viz.offline.STATIC_ENV)
        text_html = path.read_text()
        for cdn in ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com", "googleapis.com"):
            assert cdn not in text_html, (path, cdn)
    ch = book.chapter("chapters/small", root)
    assert book.is_fresh(ch, book.chapter_parameters("quick"))
    assert book.html_is_fresh(root=root)
    assert (root / "_build" / "stage" / "chapters" / "small.ipynb").is_file()
    assert not (root / "_build" / "stage" / "chapters" / "small.md").exists()

    # a second build re-executes nothing and, the HTML being current, does not even run Sphinx
    stamp = ch.stamp.read_text()
    log = root / "_build" / "jupyter-book.log"
    log_mtime = log.stat().st_mtime_ns
    book.build_book(root=root)
    assert ch.stamp.read_text() == stamp and log.stat().st_mtime_ns == log_mtime
    # an edit to the chapter re-executes it
    ch.source.write_text(text.replace("The answer is", "The answer still is"))
    assert not book.html_is_fresh(root=root)
    html = book.build_book(root=root)
    assert ch.stamp.read_text() != stamp
    assert "The answer still is" in (html / "chapters" / "small.html").read_text()


def test_a_chapter_without_the_colab_setup_cell_is_refused(tmp_path):
    root = make_book(tmp_path / "b", {"chapters/a": chapter_md("A", PARAMETERS, code("x = 1"), setup=False)})
    with pytest.raises(book.BookBuildError, match="chapter chapters/a: the first code cell is not tagged 'colab-setup'"):
        book.build_book(root=root)


def test_a_subset_build_and_the_paired_notebooks(tmp_path):
    root = make_book(tmp_path / "b", {
        "chapters/a": chapter_md("A", PARAMETERS, code("x = 1")),
        "chapters/b": chapter_md("B", PARAMETERS, code("y = 2")),
    })
    html = book.build_book(chapters=["b"], root=root)
    assert (html / "index.html").is_file() and (html / "chapters" / "b.html").is_file()
    assert not (html / "chapters" / "a.html").exists()
    assert not book.chapter("chapters/a", root).executed.exists()
    assert not book.html_is_fresh(root=root)  # a partial book is never "the book"
    # the build wrote b's paired notebook for Colab, un-executed
    paired = json.loads((root / "chapters" / "b.ipynb").read_text())
    assert all(c.get("outputs", []) == [] for c in paired["cells"])
    assert book.sync_notebooks(root, check=True, sources=[root / "chapters" / "b.md"]) == []


def test_sphinx_warnings_fail_the_build(tmp_path):
    text = chapter_md("Warns", PARAMETERS, "A reference to {ref}`a-label-that-does-not-exist`.")
    root = make_book(tmp_path / "b", {"chapters/warns": text})
    with pytest.raises(book.BookBuildError, match="a-label-that-does-not-exist"):
        book.build_book(root=root)
    assert not book.html_is_fresh(root=root)
    html = book.build_book(root=root, strict=False)
    assert (html / "chapters" / "warns.html").is_file()
