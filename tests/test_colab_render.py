"""The Colab notebooks (notebooks/*.ipynb): each executed chapter rendered with its numbers in the prose,
its MyST as plain Markdown and its solutions inside <details>; the book's Colab links open them.

To fix a failure of the committed notebooks: ``make colab-notebooks`` (after ``make book``).
"""

from __future__ import annotations

import re

import jupytext
import nbformat
import pytest

from forgetting import book, paths
from forgetting.book import colab, colab_render
from forgetting.book.colab_render import (
    RenderError,
    format_glue,
    raw_myst,
    render_markdown,
    render_notebook,
)

FIX = "run `make colab-notebooks` (after `make book`) to re-render notebooks/ from the executed chapters"
CHAPTERS = [n for n in book.toc_chapters() if book.chapter(n).notebook]
BIB = {"smith2020": ("Smith and Jones", "2020"), "lee2019": ("Lee et al.", "2019")}

MYST = """\
# A chapter

The model has {glue:text}`n_params:,d` parameters and a loss of {glue:text}`loss:.2f`; it is
{glue:text}`verdict` {cite:p}`smith2020` and, as {cite:t}`lee2019` found, {cite:p}`smith2020,lee2019`.
See {mod}`forgetting.metrics`, {func}`~forgetting.metrics.summarize` and the {term}`performance matrix <R>`.

```{admonition} Learning objectives
:class: tip

- Read $R$ ({glue:text}`n_tasks` tasks).
```

```{note}
A static snapshot.
```

`quick` (default)
: one seed.

**Exercise 1.** Write `bwt(R)`.

:::{dropdown} Solution
```python
def bwt(R):  # {glue:text}`not_a_role_in_code`
    return 0.0
```
:::
"""


def _glue_output(name: str, value) -> dict:
    return nbformat.v4.new_output(
        "display_data", data={colab_render.GLUE_MIME: repr(value)},
        metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}},
    )


def _executed() -> nbformat.NotebookNode:
    setup = nbformat.v4.new_code_cell("# Colab only", metadata={"tags": [colab.SETUP_TAG]})
    params = nbformat.v4.new_code_cell('profile = "quick"', metadata={"tags": ["parameters"]})
    injected = nbformat.v4.new_code_cell('profile = "full"', metadata={"tags": ["injected-parameters", "remove-cell"]})
    compute = nbformat.v4.new_code_cell("glue(...)", execution_count=3)
    compute.outputs = [_glue_output("n_params", 879488), _glue_output("loss", 1.31784),
                       _glue_output("verdict", "holds"), _glue_output("n_tasks", 4),
                       nbformat.v4.new_output("stream", text="done\n")]
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(MYST.split("\n\n", 1)[0]), setup, params,
                                           injected, compute, nbformat.v4.new_markdown_cell(MYST)])


def test_render_replaces_glue_cite_roles_and_directives():
    nb = render_notebook(_executed(), bib=BIB, source="chapters/x.md", parameters={"profile": "quick"})
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    prose = text.split("```python")[0]
    assert "{glue" not in prose and "{cite" not in prose and ":::{" not in text and "```{" not in text
    assert raw_myst(prose) == []
    assert "The model has 879,488 parameters and a loss of 1.32;" in text
    assert "it is\nholds (Smith and Jones 2020) and, as Lee et al. (2019) found, (Smith and Jones 2020; Lee et al. 2019)." in text
    assert "See `forgetting.metrics`, `summarize()` and the performance matrix." in text
    assert "> **Learning objectives**\n>\n> - Read $R$ (4 tasks)." in text
    assert "> **Note**\n>\n> A static snapshot." in text
    assert "- `quick` (default): one seed." in text
    # the solution is hidden, its code kept verbatim (a role-like text inside code is not touched)
    details = re.search(r"<details>\n<summary>Solution</summary>\n\n(.*?)\n\n</details>", text, flags=re.DOTALL)
    assert details, text
    assert details.group(1) == "```python\ndef bwt(R):  # {glue:text}`not_a_role_in_code`\n    return 0.0\n```"
    assert text.index("**Exercise 1.**") < text.index("<details>")


def test_render_keeps_setup_and_parameters_cells_and_clears_outputs():
    nb = render_notebook(_executed(), bib=BIB, source="chapters/x.md", parameters={"profile": "quick", "seed": 0})
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.source for c in code] == ["# Colab only", 'profile = "quick"', "glue(...)"]  # injected one dropped
    assert code[0].metadata["tags"] == [colab.SETUP_TAG] and code[1].metadata["tags"] == ["parameters"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.cells[0].source == "# A chapter"
    assert "profile `quick`, seed `0`" in nb.cells[1].source and "chapters/x.md" in nb.cells[1].source
    assert "jupytext" not in nb.metadata and nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata[colab_render.META_KEY]["parameters"] == {"profile": "quick", "seed": 0}
    again = render_notebook(_executed(), bib=BIB, source="chapters/x.md", parameters={"profile": "quick", "seed": 0})
    assert nbformat.writes(again) == nbformat.writes(nb)  # deterministic ids: re-rendering gives the same file


def test_unknown_glue_key_or_citation_or_open_fence_is_named():
    with pytest.raises(RenderError, match="'missing'"):
        render_markdown("{glue:text}`missing`", {}, BIB)
    with pytest.raises(RenderError, match="'nobody2000' is not in chapters/references.bib"):
        render_markdown("{cite:p}`nobody2000`", {}, BIB)
    with pytest.raises(RenderError, match="never closed"):
        render_markdown(":::{dropdown} Solution\nx = 1\n", {}, BIB)


@pytest.mark.parametrize(("text", "spec", "expected"), [
    ("879488", ",d", "879,488"), ("1.31784", ".2f", "1.32"), ("'1.318'", "", "1.318"), ("0.237", ".0%", "24%"),
    ("'holds'", "", "holds"), ("12", "", "12"), ("-0.15", "+.2f", "-0.15"),
])
def test_format_glue_matches_myst_nb(text, spec, expected):
    from myst_nb.core.variables import format_plain_text

    assert format_glue(text, spec) == expected == format_plain_text(text, spec or "s")


def test_bibliography_gives_authors_and_years():
    bib = colab_render.bibliography()
    assert bib["mccloskey1989catastrophic"] == ("McCloskey and Cohen", "1989")
    assert bib["kirkpatrick2017overcoming"] == ("Kirkpatrick et al.", "2017")
    assert bib["ramasesh2021anatomy"][1] == "2021" and bib["ramasesh2021anatomy"][0].startswith("Ramasesh")
    assert all(authors and year.isdigit() for authors, year in bib.values())


# ----------------------------------------------------------------------------------------------
# the committed notebooks/ and the links to them
# ----------------------------------------------------------------------------------------------


def _code_sources(nb) -> list[str]:
    return [c.source.strip() for c in nb.cells
            if c.cell_type == "code" and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


@pytest.mark.parametrize("name", CHAPTERS, ids=lambda n: n.rsplit("/", 1)[-1])
def test_committed_colab_notebook_is_rendered_and_runs_the_chapters_code(name):
    path = colab_render.rendered_path(name)
    assert path.is_file(), f"{path.relative_to(paths.REPO_ROOT)} is missing: {FIX}"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert raw_myst(markdown) == [], f"{path.name}: raw MyST left: {raw_myst(markdown)[:3]}; {FIX}"
    for raw in ("{glue", "{cite", ":::{", "```{"):
        assert raw not in markdown, f"{path.name} has raw {raw!r}; {FIX}"
    source = book.chapter(name).source
    md = source.read_text(encoding="utf-8")
    assert markdown.count("<details>") == md.count(":::{dropdown}") == markdown.count("</details>")
    if md.count("{glue:text}"):
        assert re.search(r"\d", markdown), path.name
    chapter_nb = jupytext.read(source)
    assert _code_sources(nb) == _code_sources(chapter_nb), f"{path.name}: code cells differ from {source.name}; {FIX}"
    tags = [c.get("metadata", {}).get("tags", []) for c in nb.cells if c.cell_type == "code"]
    assert colab.SETUP_TAG in tags[0] and any("parameters" in t for t in tags)
    assert all(c.outputs == [] for c in nb.cells if c.cell_type == "code")


def _mask(text: str) -> str:
    return re.sub(r"\d+", "#", text)


@pytest.mark.parametrize("name", ["chapters/00_introduction", "chapters/01_measuring_forgetting"],
                         ids=lambda n: n.rsplit("/", 1)[-1])
def test_committed_notebook_matches_the_executed_build(name):
    """Where the executed build is current, the committed notebook is its rendering (digits aside: runs on
    another machine may differ in the last place), and every value the prose glues appears in it."""
    import json

    from forgetting.book.freshness import _sha

    ch = book.chapter(name)
    if not ch.executed.is_file() or not ch.stamp.is_file():
        pytest.skip(f"{name} has not been executed (make book)")
    stamp = json.loads(ch.stamp.read_text())
    if stamp["source_sha256"] != _sha(ch.source.read_bytes()):
        pytest.skip(f"the executed {name} is older than its source (make book)")
    fresh = colab_render.render_chapter(name)
    committed = nbformat.read(colab_render.rendered_path(name), as_version=4)
    if committed.metadata.get(colab_render.META_KEY, {}).get("executed_at") != stamp.get("executed_at"):
        # another execution (another machine's runs): its numbers, and the words ruled from them, may differ
        pytest.skip(f"the committed notebook was rendered from another execution of {name} (make colab-notebooks)")
    assert [_mask(c.source) for c in committed.cells] == [_mask(c.source) for c in fresh.cells], FIX
    glue = colab_render.glue_values(nbformat.read(ch.executed, as_version=4))
    md = ch.source.read_text(encoding="utf-8")
    text = "\n".join(c.source for c in fresh.cells if c.cell_type == "markdown")
    used = set(re.findall(r"\{glue:text\}`([^`:]+)(?::([^`]*))?`", md))
    assert used
    for key, spec in used:
        assert format_glue(glue[key], spec) in text, key


def test_colab_links_open_the_rendered_notebooks():
    assert colab.colab_path("chapters/00_introduction") == "notebooks/00_introduction.ipynb"
    assert colab.colab_url("chapters/01_measuring_forgetting").endswith(
        "/forgetting-companion/forgetting/blob/main/notebooks/01_measuring_forgetting.ipynb")
    for name in CHAPTERS:
        assert (paths.REPO_ROOT / colab.colab_path(name)).is_file(), f"{colab.colab_path(name)}: {FIX}"


def test_launch_button_is_retargeted_after_the_theme():
    class App:
        srcdir = paths.REPO_ROOT

    theme = f"{colab.COLAB}/github/forgetting-companion/forgetting/blob/main/chapters/02_gradient_interference.ipynb"
    context = {"header_buttons": [
        {"type": "group", "label": "launch-buttons", "buttons": [{"type": "link", "text": "Colab", "url": theme}]},
        {"type": "link", "label": "repository-button", "url": "https://github.com/forgetting-companion/forgetting"},
    ]}
    colab.retarget_launch_buttons(App(), "chapters/02_gradient_interference", "page.html", context, None)
    assert context["header_buttons"][0]["buttons"][0]["url"] == colab.colab_url("chapters/02_gradient_interference")
    assert context["header_buttons"][1]["url"] == "https://github.com/forgetting-companion/forgetting"
