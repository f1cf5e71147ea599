"""The built book in a real browser, with no network: every page loads without console errors and
without a request leaving 127.0.0.1, the mathematics is typeset, every Altair chart draws marks,
operating a chart's select (or slider) changes what it draws, and Colab links open notebooks.

Screenshots of the real book's pages land in _build/screenshots/ for a human to look at.
"""

from __future__ import annotations

import re

import pytest

from forgetting import book, paths
from forgetting.book import colab

pytestmark = pytest.mark.browser

CHARTS_DRAWN = """() => Array.from(document.querySelectorAll('.forgetting-vega')).every(
    d => d.querySelector('.forgetting-vega-error') || d.querySelectorAll('svg .role-mark path, svg .role-mark text').length > 0)"""
# what a chart draws: each mark's fill, geometry and text
SIGNATURE = """(d) => Array.from(d.querySelectorAll('svg .role-mark path, svg .role-mark text')).map(
    n => [n.getAttribute('fill') || '', (n.getAttribute('d') || '').slice(0, 60), n.textContent || '',
          n.getAttribute('transform') || ''].join('|')).join(';')"""


def _chart_count(page) -> int:
    return page.locator(".forgetting-vega").count()


def _wait_for_charts(page) -> None:
    if _chart_count(page):
        page.wait_for_function(CHARTS_DRAWN, timeout=20_000)


def _check_charts_draw(page, where: str) -> int:
    _wait_for_charts(page)
    charts = page.locator(".forgetting-vega")
    for i in range(charts.count()):
        chart = charts.nth(i)
        assert chart.locator(".forgetting-vega-error").count() == 0, f"{where}: chart {i}: {chart.inner_text()}"
        assert chart.locator("svg .role-mark path").count() + chart.locator("svg .role-mark text").count() > 0, (
            f"{where}: chart {i} drew no marks"
        )
    return charts.count()


def _operate_selects(page, where: str) -> int:
    """Choose every other option of every chart's select; the chart must redraw differently each time."""
    operated = 0
    charts = page.locator(".forgetting-vega")
    for i in range(charts.count()):
        chart = charts.nth(i)
        selects = chart.locator(".vega-bindings select")
        for s in range(selects.count()):
            select = selects.nth(s)
            options = select.locator("option").evaluate_all("os => os.map(o => o.value)")
            current = select.input_value()
            for option in [o for o in options if o != current]:
                before = chart.evaluate(SIGNATURE)
                select.select_option(option)
                page.wait_for_function(f"(args) => ({SIGNATURE})(args[0]) !== args[1]",
                                       arg=[chart.element_handle(), before], timeout=10_000)
                assert chart.evaluate(SIGNATURE) != before, f"{where}: chart {i}: choosing {option!r} changed nothing"
                operated += 1
    return operated


def _operate_sliders(page, where: str) -> int:
    operated = 0
    charts = page.locator(".forgetting-vega")
    for i in range(charts.count()):
        chart = charts.nth(i)
        sliders = chart.locator(".vega-bindings input[type=range]")
        for s in range(sliders.count()):
            slider = sliders.nth(s)
            before = chart.evaluate(SIGNATURE)
            # to the other end from where it opens (charts open at the first step, some at the last)
            slider.evaluate("el => { el.value = (el.value === el.min ? el.max : el.min); "
                            "el.dispatchEvent(new Event('input', {bubbles: true})); }")
            page.wait_for_function(f"(args) => ({SIGNATURE})(args[0]) !== args[1]",
                                   arg=[chart.element_handle(), before], timeout=10_000)
            operated += 1
    return operated


# ----------------------------------------------------------------------------------------------
# the real book
# ----------------------------------------------------------------------------------------------


def test_every_page_loads_offline_without_errors(served_book, visit):
    pages = served_book.pages()
    assert "index.html" in pages and any(p.startswith("chapters/") for p in pages)
    paths.REPO_ROOT.joinpath("_build", "screenshots").mkdir(parents=True, exist_ok=True)
    for page_path in pages:
        v = visit(served_book, page_path)
        _wait_for_charts(v.page)
        v.page.wait_for_timeout(300)  # late console errors (MathJax, widgets)
        assert v.external == [], f"{page_path} asked for {v.external}"
        assert v.errors == [], f"{page_path}: {v.errors}"
        if page_path.startswith("chapters/"):
            shot = paths.REPO_ROOT / "_build" / "screenshots" / (page_path.replace("/", "__")[:-5] + ".png")
            v.page.screenshot(path=str(shot), full_page=True)


def test_mathematics_is_typeset_from_the_vendored_mathjax(served_book, visit):
    typeset = 0
    for page_path in served_book.pages():
        html = (served_book.html / page_path).read_text(encoding="utf-8")
        if 'class="math' not in html:
            continue
        v = visit(served_book, page_path)
        v.page.wait_for_function("() => document.querySelectorAll('mjx-container').length > 0", timeout=20_000)
        assert v.page.locator("script[src*='vendor/mathjax/']").count() == 1
        typeset += 1
    assert typeset >= 1, "the introduction has mathematics: it must be typeset"


def test_every_chart_draws_and_its_selects_change_it(served_book, visit):
    charts = operated = 0
    for page_path in served_book.pages():
        if 'class="forgetting-vega"' not in (served_book.html / page_path).read_text(encoding="utf-8"):
            continue
        v = visit(served_book, page_path)
        charts += _check_charts_draw(v.page, page_path)
        operated += _operate_selects(v.page, page_path)
        assert v.errors == [] and v.external == [], (page_path, v.errors, v.external)
    if charts == 0:
        pytest.skip("the book has no Altair chart yet (the synthetic chart book below still tests them)")
    assert operated > 0, "no chart in the book has a select to operate"


def test_colab_links_open_the_rendered_notebooks(served_book, visit):
    pages = [p for p in served_book.pages() if (served_book.root / p).with_suffix(".md").is_file()]
    chapters = [p for p in pages if book.is_notebook_source((served_book.root / p).with_suffix(".md"))]
    assert chapters, "no notebook chapter in the book"
    for page_path in pages:
        if page_path not in chapters:  # a plain page (the bibliography) has no notebook to open
            v = visit(served_book, page_path)
            assert v.page.locator("a[href*='colab.research.google.com']").count() == 0, page_path
    for page_path in chapters:
        v = visit(served_book, page_path)
        links = v.page.locator("a[href*='colab.research.google.com']").evaluate_all("as => as.map(a => a.href)")
        assert links, f"{page_path} has no Colab launch link"
        for href in links:
            m = re.fullmatch(r"https://colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/([^/]+)/(.+)", href)
            assert m, href
            assert m.group(3).endswith(".ipynb"), f"{page_path}: Colab link {href} is not a notebook"
            assert (paths.REPO_ROOT / m.group(3)).is_file(), f"{href}: {m.group(3)} is not in the repository"
            # the rendered notebook (numbers in the prose, plain Markdown), not the jupytext pair
            assert m.group(3) == colab.colab_path(page_path[: -len(".html")]), href
            assert m.group(3).startswith(f"{colab.COLAB_DIR}/"), href


# ----------------------------------------------------------------------------------------------
# the synthetic chart book: every chart type, operated
# ----------------------------------------------------------------------------------------------


def test_chart_book_selects_and_sliders_redraw_offline(chart_book, visit):
    v = visit(chart_book, "chapters/charts.html")
    assert _check_charts_draw(v.page, "charts") == 3
    heatmap = v.page.locator(".forgetting-vega").nth(0)
    texts = heatmap.locator("svg g.mark-text.role-mark text").evaluate_all("ts => ts.map(t => t.textContent)")
    assert len(texts) == 5 * 4 and "0.96" in texts  # (T + 1) x T labelled cells: exact match after recall_city
    assert _operate_selects(v.page, "charts") == 3 + 3 + 1  # 4 metrics (R, curves), 2 measurements (heads)
    assert _operate_sliders(v.page, "charts") == 1
    # the ipywidget is drawn from its saved state by the vendored require.js + html-manager
    v.page.wait_for_selector(".widget-slider, .jupyter-widget-slider, .widget-hslider", timeout=15_000)
    assert v.page.locator("script[src*='vendor/html-manager/embed-amd.js']").count() == 1
    assert v.errors == [] and v.external == [], (v.errors, v.external)
    v.page.screenshot(path=str(chart_book.root / "charts.png"), full_page=True)
