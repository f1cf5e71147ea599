"""What every benchmark script records next to its numbers, and how it writes them."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch


def run_context(args) -> dict:
    """Date, machine (cores, torch threads, load at the end), torch version and the script's arguments."""
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), "
        f"load average at end {os.getloadavg()[0]:.1f}",
        "torch": torch.__version__,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


def emit(report: dict, out: Path | None) -> None:
    """Print the report as JSON and, when ``out`` is given, also write it there."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
