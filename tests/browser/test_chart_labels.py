"""No text a chart draws in the built book is smaller than 10 px (axis labels, legends, cell values)."""

from __future__ import annotations

import pytest

from forgetting.viz.charts import MIN_FONT

pytestmark = pytest.mark.browser

FONT_SIZES = """() => Array.from(document.querySelectorAll('.forgetting-vega svg text'))
    .filter(t => (t.textContent || '').trim().length > 0)
    .map(t => [parseFloat(getComputedStyle(t).fontSize), t.textContent.trim().slice(0, 30)])"""


def test_no_chart_text_is_smaller_than_the_minimum(served_book, visit):
    checked = 0
    for page_path in served_book.pages():
        if 'class="forgetting-vega"' not in (served_book.html / page_path).read_text(encoding="utf-8"):
            continue
        v = visit(served_book, page_path)
        v.page.wait_for_function("() => document.querySelectorAll('.forgetting-vega svg').length > 0", timeout=20_000)
        sizes = v.page.evaluate(FONT_SIZES)
        small = [(size, text) for size, text in sizes if size < MIN_FONT]
        assert not small, f"{page_path}: {len(small)} texts under {MIN_FONT} px, e.g. {small[:5]}"
        checked += len(sizes)
    assert checked > 0, "no chart text found in the book"
