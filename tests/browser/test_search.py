"""Search in the built book: served over HTTP it finds pages with excerpts and adds no note; opened
from disk (file://, where the browser forbids reading other files, so Sphinx shows no excerpts) it
still lists the pages and says why the excerpts are missing and how to get them."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser

NOTE = ".forgetting-search-note"
QUERY = "search.html?q=forgetting"


def _results(page) -> None:
    page.wait_for_function("() => document.querySelectorAll('#search-results li').length > 0", timeout=30_000)


def test_search_served_has_excerpts_and_no_note(served_book, visit):
    v = visit(served_book, QUERY)
    _results(v.page)
    assert v.page.locator(NOTE).count() == 0
    v.page.wait_for_function("() => document.querySelectorAll('#search-results p.context').length > 0", timeout=30_000)
    assert v.external == []


def test_search_from_disk_lists_pages_and_says_why_it_has_no_excerpts(served_book, browser):
    context = browser.new_context(service_workers="block")
    try:
        page = context.new_page()
        page.goto((served_book.html / "search.html").as_uri() + "?q=forgetting", wait_until="load")
        _results(page)
        note = page.locator(NOTE)
        assert note.count() == 1
        text = note.inner_text()
        assert "without excerpts" in text and "python -m http.server" in text
    finally:
        context.close()
