"""The API reference: one page per top-level module, each in the table of contents, and every public
module of the package documented on one of them (a module left out would also leave the
cross-references to it dangling, which fails the nitpicky book build)."""

from __future__ import annotations

import re

from forgetting import book, paths

API = paths.REPO_ROOT / "chapters" / "api"


def _documented() -> dict[str, str]:
    found = {}
    for page in sorted(API.glob("*.md")):
        for module in re.findall(r"^\.\. automodule:: (\S+)$", page.read_text(encoding="utf-8"), flags=re.M):
            assert module not in found, f"{module} is documented on {found[module]} and {page.name}"
            found[module] = page.name
    return found


def test_every_api_page_is_in_the_toc():
    toc = set(book.toc_chapters(paths.REPO_ROOT))
    pages = {f"chapters/api/{p.stem}" for p in API.glob("*.md")}
    assert pages and pages <= toc, sorted(pages - toc)


def test_every_public_module_is_documented_once():
    modules = set()
    for path in paths.PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(paths.PACKAGE_DIR.parent).with_suffix("").parts
        if any(p.startswith("_") and p != "__init__" for p in parts):
            continue
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    missing = sorted(modules - set(_documented()))
    assert not missing, f"modules without an API page entry: {missing}"
