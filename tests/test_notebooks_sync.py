"""Every chapter's jupytext .md has a paired, un-executed .ipynb with the same cells (the notebook
Colab opens), a Colab setup cell generated from _config.yml, and a papermill parameters cell.

To fix a failure: ``make sync-notebooks`` (rewrites the .ipynb and the setup cell from the .md).
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

from forgetting import book, paths
from forgetting.book.execute import _literal_assignments

CHAPTERS = sorted(
    p for p in (paths.REPO_ROOT / "chapters").glob("*.md") if "jupytext:" in p.read_text(encoding="utf-8")[:2000]
)
FIX = "run `make sync-notebooks` to regenerate the .ipynb from the .md"


def _cells(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.get("metadata", {}).get("tags", []))) for c in nb.cells]


def test_there_are_chapters():
    assert [p.stem for p in CHAPTERS][:1] == ["00_introduction"]


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_paired_notebook_matches_its_markdown(md: Path):
    ipynb = md.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} is missing: {FIX}"
    text_nb = jupytext.read(md)
    assert text_nb.metadata.get("jupytext", {}).get("formats") == "md:myst,ipynb", (
        f"{md.name}: the jupytext header must pair it with its notebook (formats: md:myst,ipynb)"
    )
    paired = nbformat.read(ipynb, as_version=4)
    nbformat.validate(paired)
    assert paired.metadata.get("jupytext", {}).get("formats") == "md:myst,ipynb"
    assert paired.metadata.get("kernelspec", {}).get("name") == "python3"
    assert _cells(paired) == _cells(text_nb), f"{ipynb.name} is out of sync with {md.name}: {FIX}"
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{ipynb.name} must be committed un-executed"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_starts_with_the_colab_setup_cell_and_has_parameters(md: Path):
    nb = jupytext.read(md)
    problem = book.setup_cell_problem(nb)
    assert problem is None, f"{md.name}: {problem}; {FIX}"
    params = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, f"{md.name}: needs exactly one cell tagged `parameters` (papermill)"
    names = set(_literal_assignments(params[0].source) or {})
    assert {"profile", "model", "seed"} <= names, f"{md.name}: the parameters cell must set profile, model and seed"


def test_sync_writes_and_checks(tmp_path):
    chapters = tmp_path / "chapters"
    chapters.mkdir()
    (tmp_path / "_config.yml").write_text((paths.REPO_ROOT / "_config.yml").read_text())
    md = chapters / "x.md"
    md.write_text(
        "---\njupytext:\n  formats: md:myst,ipynb\n  text_representation:\n    extension: .md\n"
        "    format_name: myst\nkernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n"
        "# X\n\n```{code-cell} ipython3\n:tags: [parameters]\n\nprofile = \"quick\"\n```\n"
    )
    assert book.sync_notebooks(tmp_path, check=True) == [md, md.with_suffix(".ipynb")]
    assert not md.with_suffix(".ipynb").exists()  # check writes nothing
    book.sync_notebooks(tmp_path)
    assert book.sync_notebooks(tmp_path, check=True) == []  # stable: ids are deterministic
    nb = jupytext.read(md)
    assert book.setup_cell_problem(nb) is None  # the setup cell was inserted before the first code cell
    assert _cells(nbformat.read(md.with_suffix(".ipynb"), as_version=4)) == _cells(nb)
