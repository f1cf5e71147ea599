"""Browser fixtures: build the book if stale, serve it on 127.0.0.1, drive Debian's Chromium.

- ``FORGETTING_BOOK_ROOT`` points the book fixture at another book root (default: the repository).
- Without /usr/bin/chromium (``make test`` installs it when run as root) or the playwright package,
  every browser test is skipped with the reason.
"""

from __future__ import annotations

import functools
import http.server
import os
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forgetting import book, paths

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
SCREENSHOTS = paths.REPO_ROOT / "_build" / "screenshots"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@dataclass
class Served:
    """A built book served over HTTP on 127.0.0.1."""

    root: Path
    html: Path
    url: str
    _server: socketserver.TCPServer | None = field(default=None, repr=False)

    def pages(self) -> list[str]:
        """Every page of the book relative to the HTML root (theme assets and vendored files excluded)."""
        skip = {"_static", "_sources", "vendor", "_images"}
        return sorted(
            p.relative_to(self.html).as_posix() for p in self.html.rglob("*.html")
            if not skip & set(p.relative_to(self.html).parts)
        )


def _serve(root: Path, html: Path) -> Served:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Served(root, html, f"http://127.0.0.1:{server.server_address[1]}", server)


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: run `make test` as root (it apt-get installs chromium) or "
                    "`apt-get install -y chromium`")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def served_book(chromium_path) -> Iterator[Served]:
    """The real book (quick profile), rebuilt first when ``_build/html`` is missing or stale."""
    root = Path(os.environ.get("FORGETTING_BOOK_ROOT") or paths.REPO_ROOT).resolve()
    html = root / "_build" / "html"
    if not book.html_is_fresh("quick", root):
        html = book.build_book("quick", root=root)
    served = _serve(root, html)
    yield served
    served._server.shutdown()


@pytest.fixture(scope="session")
def chart_book(chromium_path, tmp_path_factory) -> Iterator[Served]:
    """A one-chapter book of the viz charts on the synthetic evaluation table (tests only), built by
    the same pipeline: it exercises selects and sliders whatever the real chapters contain."""
    from tests.book_fixtures import PARAMETERS, chapter_md, code, make_book

    cells = code("""
        import sys
        sys.path.insert(0, REPO)  # the synthetic table lives in tests/
        import numpy as np
        import pandas as pd
        from forgetting.viz import offline, forgetting_curves, layer_head_heatmap, r_matrix_heatmap
        from tests.viz_fixtures import synthetic_evals

        offline.enable()
        evals = synthetic_evals()
    """.replace("REPO", repr(str(paths.REPO_ROOT))))
    heads = code("""
        rng = np.random.default_rng(0)
        heads = pd.DataFrame([{"layer": l, "head": h, "step": s, "disruption": rng.random(), "alignment": rng.normal(0, .3)}
                              for s in (0, 20, 40) for l in range(4) for h in range(8)])
        layer_head_heatmap(heads, ["disruption", "alignment"], signed=["alignment"])
    """)
    widget = code("""
        import ipywidgets as widgets
        widgets.IntSlider(value=3, min=0, max=10, description="static")
    """)
    text = chapter_md(
        "Charts", PARAMETERS, cells,
        "The matrix $R$:", code("r_matrix_heatmap(evals)"),
        "Curves:", code("forgetting_curves(evals)"),
        "Heads:", heads,
        "A widget, shown as its saved state by the vendored widget manager:", widget,
    )
    root = make_book(tmp_path_factory.mktemp("chart_book"), {"chapters/charts": text})
    html = book.build_book("quick", root=root)
    served = _serve(root, html)
    yield served
    served._server.shutdown()


@dataclass
class Visit:
    """What happened while a page loaded: console errors, page errors, requests that left 127.0.0.1."""

    page: object
    errors: list[str]
    external: list[str]


@pytest.fixture
def visit(browser):
    """``visit(served, "chapters/x.html")`` -> :class:`Visit`; requests outside 127.0.0.1 are blocked and recorded."""
    contexts = []

    def _visit(served: Served, page_path: str, *, width: int = 1280) -> Visit:
        context = browser.new_context(viewport={"width": width, "height": 900}, service_workers="block")
        contexts.append(context)
        errors: list[str] = []
        external: list[str] = []

        def route(r):
            if r.request.url.startswith(served.url + "/") or r.request.url.startswith("data:"):
                r.continue_()
            else:
                external.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page = context.new_page()
        page.on("console", lambda m: m.type == "error" and errors.append(f"console: {m.text} ({m.location.get('url')})"))
        page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        page.on("requestfailed", lambda r: not r.url.startswith(served.url) or errors.append(f"failed: {r.url}"))
        page.goto(f"{served.url}/{page_path}", wait_until="networkidle")
        return Visit(page, errors, external)

    yield _visit
    for context in contexts:
        context.close()
