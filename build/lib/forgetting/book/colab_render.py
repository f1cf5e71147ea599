"""Colab notebooks that show their numbers: each chapter's *executed* notebook, rendered to plain Markdown.

A chapter's paired ``chapters/NN_*.ipynb`` is a jupytext copy of its MyST source; Colab shows its MyST
as raw text (``{glue:text}`key```, ``{cite:p}`...```, ``:::{dropdown}``), so no number appears in the
prose and the solutions are not hidden. :func:`render_notebook` turns the executed notebook of the book
build (``_build/executed/chapters/NN_*.ipynb``, where the glued values live in outputs whose metadata has
``scrapbook.name``) into a notebook Colab reads as intended:

- ``{glue:text}`name``` and ``{glue:text}`name:fmt``` become the glued value, formatted as MyST-NB does;
- ``{cite:p}`key``` becomes "(Author et al. 2017)", ``{cite:t}`key``` "Author et al. (2017)", from
  ``chapters/references.bib``; ``{mod}``/``{func}``/``{class}`` become inline code, ``{term}``/``{ref}`` text;
- ``:::{dropdown} Title`` ... ``:::`` becomes ``<details><summary>Title</summary>`` ... ``</details>`` (the
  exercises' solutions stay hidden); admonitions and ``{note}``-style directives become block quotes with a
  bold title; definition lists become bullet lists;
- code cells are kept (the ``colab-setup`` and ``parameters`` cells among them) with their outputs
  **cleared**: the executed outputs were made for the static book (their charts call the book's own
  vega bundle and would not draw in Colab; the glue records are invisible), they would make every
  rebuild a large diff, and running the notebook redraws them on the reader's versions. The numbers
  stay in the prose, and a note under the title says which build (profile, model, seed) they are from.
  Papermill's injected-parameters cell is dropped, so a reader's edit of the parameters cell counts.

Where they live: ``notebooks/NN_*.ipynb`` (:data:`forgetting.book.colab.COLAB_DIR`), committed, written
by :func:`render_colab_notebooks` (``make colab-notebooks``, after ``make book``). The book's "Open in
Colab" links point there (:func:`forgetting.book.colab.colab_url`). The paired ``chapters/*.ipynb`` stay
jupytext copies of the sources (``make sync-notebooks``; ``tests/test_notebooks_sync.py``): they are what
Jupyter and jupytext edit, and must stay MyST. Never edit ``notebooks/``: edit the chapter and re-render.
"""

from __future__ import annotations

import ast
import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from forgetting import paths
from forgetting.book.colab import COLAB_DIR
from forgetting.book.freshness import _sha

GLUE_MIME = "application/papermill.record/text/plain"
#: The notebook metadata key under which a rendered notebook records its chapter, parameters and source hash.
META_KEY = "forgetting_colab"
BIB_FILE = "chapters/references.bib"

_ROLE = re.compile(r"\{([A-Za-z][\w:+-]*)\}`([^`]+)`")
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,}|:{3,})(.*)$")
_DIRECTIVE = re.compile(r"^\{([\w-]+)\}\s*(.*)$")
_OPTION = re.compile(r"^\s*:[\w-]+:(\s.*)?$")
_CODE_ROLES = {"mod", "func", "class", "meth", "attr", "obj", "data", "exc", "py:mod", "py:func", "py:class",
               "py:meth", "py:attr", "py:obj", "py:data", "py:exc", "code", "file", "command", "envvar"}
_ADMONITIONS = {"note", "tip", "hint", "important", "warning", "caution", "attention", "danger", "error", "seealso"}


class RenderError(ValueError):
    """A chapter's MyST cannot be rendered (an unknown glue key, an unknown citation, a fence left open)."""


# ----------------------------------------------------------------------------------------------
# glue values and citations
# ----------------------------------------------------------------------------------------------


def glue_values(nb) -> dict[str, str]:
    """``{name: text/plain repr}`` of every value glued in an executed notebook (the last one wins)."""
    values = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            name = (out.get("metadata") or {}).get("scrapbook", {}).get("name")
            data = out.get("data") or {}
            if name and GLUE_MIME in data:
                values[name] = data[GLUE_MIME]
    return values


def format_glue(text: str, fmt_spec: str = "") -> str:
    """A glued ``text/plain`` repr formatted the way MyST-NB's ``{glue:text}`` role does.

    The repr is ``literal_eval``-ed (``"'1.30'"`` -> ``1.30`` as text); a format spec's type character
    picks the conversion (``d``: int, ``f``/``%``/``g``...: float, ``s``: str), e.g.
    ``format_glue("879488", ",d") == "879,488"``.
    """
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
        value = text
    if fmt_spec == "":
        return str(value)
    kind = fmt_spec[-1]
    if kind == "s":
        value = str(value)
    elif kind in "bcdoxX":
        value = int(value)
    elif kind in "eEfFgGn%":
        value = float(value)
    return format(value, fmt_spec)


def _plain(text: str) -> str:
    """A BibTeX field without braces, escapes or doubled spaces."""
    text = re.sub(r"\\[a-zA-Z]+\s*|\\.", "", text)
    return re.sub(r"\s+", " ", text.replace("{", "").replace("}", "")).strip()


def bibliography(path: str | Path | None = None) -> dict[str, tuple[str, str]]:
    """``{key: (authors, year)}`` from a BibTeX file: "McCloskey and Cohen", "Kirkpatrick et al.".

    Authors are last names (``and``-separated in BibTeX): one or two are named, three or more are the
    first one "et al."; an entry without authors uses its organization or title.
    """
    # deferred: the [book] extra (sphinxcontrib-bibtex brings pybtex)
    from pybtex.database import parse_file

    data = parse_file(str(path or paths.REPO_ROOT / BIB_FILE), bib_format="bibtex")
    out = {}
    for key, entry in data.entries.items():
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [_plain(" ".join(p.prelast_names + p.last_names)) for p in people]
        if not names:
            names = [_plain(entry.fields.get("organization") or entry.fields.get("title") or key)]
        authors = names[0] if len(names) == 1 else (" and ".join(names) if len(names) == 2 else f"{names[0]} et al.")
        out[key] = (authors, _plain(entry.fields.get("year", "n.d.")))
    return out


def cite_text(role: str, keys: str, bib: Mapping[str, tuple[str, str]]) -> str:
    """``{cite:p}`` -> "(A and B 1989; C et al. 2017)", ``{cite:t}`` -> "A and B (1989)"."""
    found = []
    for key in (k.strip() for k in keys.split(",") if k.strip()):
        if key not in bib:
            raise RenderError(f"{{{role}}}`{keys}`: {key!r} is not in {BIB_FILE}")
        found.append(bib[key])
    if role in ("cite:t", "cite:ts"):
        return "; ".join(f"{a} ({y})" for a, y in found)
    return "(" + "; ".join(f"{a} {y}" for a, y in found) + ")"


def _title_target(content: str) -> tuple[str | None, str]:
    """``"text <target>"`` -> ("text", "target"); ``"target"`` -> (None, "target")."""
    m = re.fullmatch(r"(.*?)\s*<([^<>]+)>", content.strip(), flags=re.DOTALL)
    return (m.group(1), m.group(2)) if m and m.group(1) else (None, content.strip())


def render_roles(text: str, glue: Mapping[str, str], bib: Mapping[str, tuple[str, str]]) -> str:
    """Replace every MyST role in a line of prose by plain Markdown (see the module docstring)."""

    def one(m: re.Match) -> str:
        role, content = m.group(1), m.group(2)
        if role in ("glue", "glue:text", "glue:any"):
            key, _, fmt_spec = content.partition(":")
            if key not in glue:
                raise RenderError(f"{{{role}}}`{content}`: no value glued as {key!r} in the executed notebook")
            return format_glue(glue[key], fmt_spec)
        if role.startswith("cite"):
            return cite_text(role, content, bib)
        if role == "math":
            return f"${content}$"
        title, target = _title_target(content)
        if role in _CODE_ROLES:
            if title:
                return f"`{title}`"
            short = target.lstrip("~.").rsplit(".", 1)[-1] if target.startswith("~") else target.lstrip(".")
            return f"`{short}()`" if role in ("func", "meth", "py:func", "py:meth") and not short.endswith(")") \
                else f"`{short}`"
        return title or target  # term, ref, numref, doc, abbr, and any other role: its text

    return _ROLE.sub(one, text)


# ----------------------------------------------------------------------------------------------
# directives and fences
# ----------------------------------------------------------------------------------------------


def _closes(line: str, char: str, length: int) -> bool:
    s = line.strip()
    return len(s) >= length and set(s) == {char}


def _find_close(lines: list[str], start: int, char: str, length: int) -> int:
    """Index of the line closing the fence opened at ``start - 1`` (nested fences skipped).

    A bare fence of the same character, at least as long, closes it. A fence of another character (a
    code block inside a ``:::`` dropdown) or a colon directive inside a colon directive opens a nested
    block, skipped to its own close; inside a backtick fence, other backtick lines are content.
    """
    i = start
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m:
            inner_char, inner_len, info = m.group(2)[0], len(m.group(2)), m.group(3).strip()
            if inner_char == char and inner_len >= length and not info:
                return i
            if inner_char != char or (char == ":" and info):
                i = _find_close(lines, i + 1, inner_char, inner_len) + 1
                continue
        i += 1
    raise RenderError(f"a {char * length} fence opened on line {start} is never closed")


def _strip_options(body: list[str]) -> list[str]:
    """A directive's body without its leading ``:option: value`` lines (and the blank line after them)."""
    i = 0
    while i < len(body) and _OPTION.match(body[i]):
        i += 1
    if i and i < len(body) and not body[i].strip():
        i += 1
    return body[i:]


def _quote(lines: list[str]) -> list[str]:
    return [f"> {line}" if line.strip() else ">" for line in lines]


def _deflists(lines: list[str]) -> list[str]:
    """MyST definition lists (``term`` then ``: definition``) as bullet lists: ``- term: definition``."""
    out: list[str] = []
    for line in lines:
        m = re.match(r"^:\s+(.*)$", line)
        if m and out and out[-1].strip() and not out[-1].startswith(("- ", ">", "#", "|")):
            out[-1] = f"- {out[-1].strip()}: {m.group(1)}"
        else:
            out.append(line)
    return out


def render_markdown(text: str, glue: Mapping[str, str], bib: Mapping[str, tuple[str, str]]) -> str:
    """A markdown cell's MyST source as plain (Colab) Markdown: roles, directives, definition lists."""
    rendered = _render_lines(text.split("\n"), glue, bib)
    return "\n".join(rendered).strip("\n")


def _render_lines(lines: list[str], glue, bib) -> list[str]:
    out: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        out.extend(_deflists([render_roles(line, glue, bib) for line in prose]))
        prose.clear()

    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            prose.append(lines[i])
            i += 1
            continue
        flush()
        indent, fence, info = m.group(1), m.group(2), m.group(3).strip()
        close = _find_close(lines, i + 1, fence[0], len(fence))
        body = lines[i + 1:close]
        directive = _DIRECTIVE.match(info)
        if directive is None:  # a plain code fence: verbatim
            out += lines[i:close + 1]
        else:
            out += [indent + line if line else line
                    for line in _directive(directive.group(1), directive.group(2), body, glue, bib)]
        i = close + 1
    flush()
    return out


def _directive(name: str, argument: str, body: list[str], glue, bib) -> list[str]:
    """One MyST directive as Markdown lines."""
    inner = _strip_options(body)
    title = render_roles(argument, glue, bib).strip()
    if name in ("code-cell", "code-block", "code", "sourcecode"):
        return [f"```{argument.split()[0] if argument.split() else ''}", *inner, "```"]
    if name == "math":
        return ["$$", *inner, "$$"]
    content = _render_lines(inner, glue, bib)
    if name in ("dropdown", "toggle", "solution", "hint-dropdown"):
        summary = html.escape(title or name.capitalize())
        return ["<details>", f"<summary>{summary}</summary>", "", *content, "", "</details>"]
    if name == "admonition":
        heading = title or "Note"
    elif name in _ADMONITIONS:
        heading = name.capitalize() if not title else f"{name.capitalize()}: {title}"
    else:  # figure, margin, epigraph, exercise ...: the content, quoted under the directive's name
        heading = title or name.capitalize()
    return _quote([f"**{heading}**", "", *content])


# ----------------------------------------------------------------------------------------------
# notebooks
# ----------------------------------------------------------------------------------------------


def _build_note(parameters: Mapping[str, object], source: str) -> str:
    params = ", ".join(f"{k} `{v}`" for k, v in parameters.items()) or "its defaults"
    return (
        f"> *Rendered for Colab from `{source}` and its execution in the book build ({params}): the numbers "
        "in the text are that build's. Running the cells recomputes them on this machine. Run the first "
        "cell first; it installs the package. Generated by `make colab-notebooks`: edit the chapter, not "
        "this file.*"
    )


def figure_caption(cell) -> str | None:
    """The caption of a chart cell (its ``mystnb.figure.caption`` metadata, which the book numbers as a
    figure), or ``None``."""
    figure = ((cell.get("metadata") or {}).get("mystnb") or {}).get("figure") or {}
    caption = str(figure.get("caption") or "").strip()
    return caption or None


def _chapter_number(source: str) -> int | None:
    """1 for ``chapters/01_measuring_forgetting`` (the toc numbers chapters 01-08 as 1-8); None for 00."""
    match = re.match(r"(\d+)_", Path(source).name)
    return int(match.group(1)) or None if match else None


def render_notebook(executed, *, bib: Mapping[str, tuple[str, str]] | None = None, source: str = "",
                    parameters: Mapping[str, object] | None = None):
    """The Colab notebook of a chapter, from its executed notebook ``executed`` (an nbformat node; not changed).

    Returns a new notebook: markdown cells rendered by :func:`render_markdown` with the notebook's glued
    values, code cells without outputs (the ``injected-parameters`` cell dropped), each chart cell followed
    by its caption as the book numbers it ("Figure 3.2."; :func:`figure_caption`), deterministic cell ids,
    kernelspec ``python3`` and no jupytext pairing; a note under the title names the build. Raises
    :class:`RenderError` naming the cell when a role cannot be resolved.
    """
    import nbformat  # deferred: the [book] extra

    bib = bibliography() if bib is None else bib
    glue = glue_values(executed)
    chapter = _chapter_number(source)
    cells, figures = [], 0
    for index, cell in enumerate(executed.cells):
        tags = list((cell.get("metadata") or {}).get("tags", []))
        if cell.cell_type == "code":
            if "injected-parameters" in tags:
                continue
            cells.append(nbformat.v4.new_code_cell(cell.source, metadata={"tags": tags} if tags else {}))
            caption = figure_caption(cell)
            if caption is not None:
                figures += 1
                number = f"{chapter}.{figures}" if chapter else str(figures)
                new = nbformat.v4.new_markdown_cell(f"*Figure {number}. {render_markdown(caption, glue, bib)}*")
            else:
                continue
        elif cell.cell_type == "markdown":
            try:
                new = nbformat.v4.new_markdown_cell(render_markdown(cell.source, glue, bib))
            except RenderError as err:
                raise RenderError(f"{source or 'notebook'}, cell {index}: {err}") from None
        else:
            new = nbformat.v4.new_raw_cell(cell.source)
        cells.append(new)
    first_md = next((i for i, c in enumerate(cells) if c.cell_type == "markdown"), -1)
    cells.insert(first_md + 1, nbformat.v4.new_markdown_cell(_build_note(parameters or {}, source)))
    for index, cell in enumerate(cells):
        cell.id = f"c{index:03d}-{_sha(cell.source.encode())[:8]}"
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
        META_KEY: {"source": source, "parameters": dict(parameters or {})},
    }
    return nb


def rendered_path(chapter_name: str, root: str | Path | None = None) -> Path:
    """``notebooks/00_introduction.ipynb`` for the toc name ``chapters/00_introduction``."""
    root = Path(root) if root is not None else paths.REPO_ROOT
    return root / COLAB_DIR / f"{Path(chapter_name).name}.ipynb"


def render_chapter(chapter_name: str, root: str | Path | None = None, *, bib=None):
    """The Colab notebook of one chapter (toc name), from its executed notebook in ``_build/executed``."""
    import nbformat  # deferred: the [book] extra

    from forgetting.book.config import BookBuildError, chapter  # deferred: config imports this package's siblings

    ch = chapter(chapter_name, root)
    if not ch.executed.is_file():
        raise BookBuildError(f"{ch.name}: no executed notebook at {ch.executed}; run `make book` first")
    stamp = json.loads(ch.stamp.read_text(encoding="utf-8")) if ch.stamp.is_file() else {}
    executed = nbformat.read(ch.executed, as_version=4)
    rel = ch.source.relative_to(Path(root) if root is not None else paths.REPO_ROOT).as_posix()
    nb = render_notebook(executed, bib=bib, source=rel, parameters=stamp.get("parameters") or {})
    nb.metadata[META_KEY]["source_sha256"] = stamp.get("source_sha256", "")
    # which execution the numbers come from: a build on another machine trains its own runs, whose
    # numbers (and the words chosen from them) may differ, so only the same execution is comparable
    nb.metadata[META_KEY]["executed_at"] = stamp.get("executed_at", "")
    return nb


def render_colab_notebooks(root: str | Path | None = None, *, chapters: Iterable[str] | None = None,
                           check: bool = False,
                           log: Callable[[str], None] | None = None) -> list[Path]:
    """Write ``notebooks/<stem>.ipynb`` for every notebook chapter of the toc (or ``chapters``).

    Only files whose text changed are written; returns them (with ``check=True`` nothing is written and
    the returned files are the ones that would change). Needs the executed notebooks of ``make book``.
    """
    import nbformat  # deferred: the [book] extra

    from forgetting.book.config import chapter, toc_chapters  # deferred: as in render_chapter

    root_path = Path(root) if root is not None else paths.REPO_ROOT
    names = list(chapters) if chapters is not None else [n for n in toc_chapters(root_path)
                                                          if chapter(n, root_path).notebook]
    bib = bibliography(root_path / BIB_FILE)
    changed = []
    for name in names:
        text = nbformat.writes(render_chapter(name, root_path, bib=bib)) + "\n"
        path = rendered_path(name, root_path)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        changed.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            if log:
                log(f"wrote {path.relative_to(root_path)}")
    return changed


def raw_myst(text: str) -> list[str]:
    """The raw MyST left in a rendered notebook's text (empty: clean): roles such as ``{glue:text}``, and
    directive fences (three or more colons or backticks followed by an opening brace)."""
    found = [m.group(0) for m in _ROLE.finditer(text)]
    found += [line for line in text.split("\n") if re.match(r"^\s*(:{3,}|`{3,})\{", line)]
    return found


__all__ = [
    "GLUE_MIME",
    "META_KEY",
    "RenderError",
    "bibliography",
    "cite_text",
    "figure_caption",
    "format_glue",
    "glue_values",
    "raw_myst",
    "render_chapter",
    "render_colab_notebooks",
    "render_markdown",
    "render_notebook",
    "render_roles",
    "rendered_path",
]
