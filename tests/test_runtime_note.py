"""The runtime sentence a staged chapter gets under its title (forgetting.book.runtime)."""

from __future__ import annotations

import json

import pytest

from forgetting.book.runtime import (
    NOTE_CLASS,
    add_runtime_note,
    duration_text,
    runtime_note,
)


@pytest.mark.parametrize(("seconds", "text"), [(0, "0 s"), (8.49, "8 s"), (59.6, "1 min 0 s"), (95, "1 min 35 s"),
                                               (3725, "62 min 5 s")])
def test_duration_text(seconds, text):
    assert duration_text(seconds) == text


def test_duration_text_refuses_a_bad_duration():
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError, match="non-negative"):
            duration_text(bad)


def _stamp(tmp_path, seconds=872.3):
    path = tmp_path / "ch.stamp.json"
    path.write_text(json.dumps({"seconds": seconds, "executed_at": "2026-12-03T06:59:57+0000",
                                "parameters": {"profile": "quick", "model": "tiny", "seed": 0}}))
    return path


def test_the_note_goes_right_under_the_title_once(tmp_path):
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": []},
                    {"cell_type": "markdown", "metadata": {}, "source": "# Title\n\ntext", "id": "t1"},
                    {"cell_type": "markdown", "metadata": {}, "source": "# Another"}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "ch.ipynb"
    path.write_text(json.dumps(nb))
    assert add_runtime_note(path, _stamp(tmp_path))
    cells = json.loads(path.read_text())["cells"]
    assert [c["cell_type"] for c in cells] == ["code", "markdown", "markdown", "markdown"]
    note = cells[2]["source"]
    assert NOTE_CLASS in note and "14 min 32 s" in note and "<code>quick</code>" in note and "2026-12-03" in note
    assert sum(NOTE_CLASS in "".join(c["source"]) for c in cells) == 1


def test_no_stamp_or_no_title_changes_nothing(tmp_path):
    path = tmp_path / "ch.ipynb"
    original = json.dumps({"cells": [{"cell_type": "markdown", "metadata": {}, "source": "no title"}],
                           "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    path.write_text(original)
    assert not add_runtime_note(path, tmp_path / "missing.json")
    assert not add_runtime_note(path, _stamp(tmp_path))
    assert path.read_text() == original


def test_runtime_note_counts_cores():
    stamp = {"seconds": 1, "executed_at": "2026-01-01", "parameters": {}}
    assert "1 CPU core)" in runtime_note(stamp, cpu_count=1) and "2 CPU cores)" in runtime_note(stamp, cpu_count=2)
