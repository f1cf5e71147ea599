"""Every chart in the built book is a numbered figure with a caption: "Fig. 3.2" on chapter 3's page,
numbered in order, captions not empty (the chart cells' ``mystnb.figure`` metadata)."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.browser

FIGURES = """() => Array.from(document.querySelectorAll('.forgetting-vega')).map(chart => {
    const figure = chart.closest('figure');
    const caption = figure ? figure.querySelector('figcaption') : null;
    const number = caption ? caption.querySelector('.caption-number') : null;
    return {inFigure: !!figure, id: figure ? figure.id : '',
            number: number ? number.textContent.trim() : '',
            text: caption ? caption.textContent.trim() : ''};
})"""

READY = """() => Array.from(document.querySelectorAll('.forgetting-vega')).every(chart => {
    const figure = chart.closest('figure');
    return figure && figure.querySelector('figcaption .caption-number');
})"""


def test_every_chart_is_a_numbered_figure_with_a_caption(served_book, visit):
    pages = 0
    for page_path in served_book.pages():
        if 'class="forgetting-vega"' not in (served_book.html / page_path).read_text(encoding="utf-8"):
            continue
        chapter = re.match(r"chapters/(\d+)_", page_path)
        assert chapter, f"{page_path}: a chart outside a numbered chapter"
        v = visit(served_book, page_path)
        try:  # on a loaded machine the theme's and MathJax's scripts may still be rewriting the page
            v.page.wait_for_function(READY, timeout=20_000)
        except Exception:  # noqa: BLE001 - the assertions below say what is missing
            pass
        figures = v.page.evaluate(FIGURES)
        assert figures and all(f["inFigure"] for f in figures), f"{page_path}: a chart outside a figure: {figures}"
        expected = [f"Fig. {int(chapter.group(1))}.{k}" for k in range(1, len(figures) + 1)]
        assert [f["number"].rstrip(".") for f in figures] == expected, page_path
        for f in figures:
            assert len(f["text"]) > len(f["number"]) + 20, f"{page_path}: {f['number']} has no caption"
            assert f["id"].startswith("fig-"), f"{page_path}: {f['number']} has no name to reference"
        pages += 1
    assert pages >= 7  # chapters 01-07 draw charts
