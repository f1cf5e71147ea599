"""Each chapter's measured runtime, stated on its page.

The execution stamp of a chapter (``_build/executed/<name>.stamp.json``, written by
:func:`forgetting.book.execute.execute_chapter`) records how long papermill took to run it
(``seconds``), with which parameters and when. When the book is staged, :func:`add_runtime_note`
puts one sentence with those numbers right under the chapter's title, so a teacher sees what a
chapter costs on the machine that built the book, not a guess.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: The class of the note's ``<p>``, for the browser tests and the stylesheet.
NOTE_CLASS = "forgetting-runtime"


def duration_text(seconds: float) -> str:
    """``8.49 -> "8 s"``, ``95 -> "1 min 35 s"``, ``3725 -> "62 min 5 s"``."""
    if not seconds >= 0:
        raise ValueError(f"a duration must be a non-negative number of seconds, got {seconds!r}")
    total = round(seconds)
    minutes, rest = divmod(total, 60)
    return f"{total} s" if minutes == 0 else f"{minutes} min {rest} s"


def runtime_note(stamp: dict, cpu_count: int | None = None) -> str:
    """The sentence (HTML, one paragraph) for a chapter's execution ``stamp``."""
    p = stamp.get("parameters") or {}
    cores = cpu_count or os.cpu_count() or 1
    day = str(stamp.get("executed_at", ""))[:10]
    return (f'<p class="{NOTE_CLASS}"><strong>Runtime:</strong> this page\'s code ran in '
            f"{duration_text(float(stamp['seconds']))} when the book was built on {day} "
            f"(profile <code>{p.get('profile', '?')}</code>, model <code>{p.get('model', '?')}</code>, "
            f"{cores} CPU core{'s' if cores != 1 else ''}). Its runs' tables are read from the published or "
            "cached ones; on a fresh machine the first cell that needs a run's weights trains it first "
            "(minutes).</p>")


def add_runtime_note(notebook_path: str | Path, stamp_path: str | Path) -> bool:
    """Insert :func:`runtime_note` after the first markdown cell that holds the title (``# ...``).

    Rewrites ``notebook_path`` in place (a staged copy); returns ``False`` and changes nothing when
    there is no stamp or no title cell.
    """
    notebook_path, stamp_path = Path(notebook_path), Path(stamp_path)
    if not stamp_path.is_file():
        return False
    stamp = json.loads(stamp_path.read_text(encoding="utf-8"))
    nb = json.loads(notebook_path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown" and source.lstrip().startswith("# "):
            note = {"cell_type": "markdown", "metadata": {}, "source": runtime_note(stamp)}
            if "id" in cell:
                note["id"] = f"runtime-{cell['id']}"[:64]
            nb["cells"].insert(i + 1, note)
            notebook_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False), encoding="utf-8")
            return True
    return False
