"""Every chapter of the built book states its measured runtime under its title (forgetting.book.runtime)."""

from __future__ import annotations

import json
import re

import pytest

from forgetting import book, paths
from forgetting.book.runtime import NOTE_CLASS, duration_text

pytestmark = pytest.mark.browser


def test_every_chapter_page_states_the_runtime_of_its_build(served_book):
    chapters = [p for p in served_book.pages()
                if (served_book.root / p).with_suffix(".md").is_file()
                and book.is_notebook_source((served_book.root / p).with_suffix(".md"))]
    assert chapters
    for page_path in chapters:
        html = (served_book.html / page_path).read_text(encoding="utf-8")
        notes = re.findall(rf'<p class="{NOTE_CLASS}">(.*?)</p>', html, flags=re.DOTALL)
        assert len(notes) == 1, f"{page_path}: {len(notes)} runtime notes"
        stamp = json.loads((paths.REPO_ROOT / "_build" / "executed" / page_path.replace(".html", ".stamp.json"))
                           .read_text(encoding="utf-8"))
        assert f"ran in {duration_text(stamp['seconds'])}" in notes[0], (page_path, notes[0])
