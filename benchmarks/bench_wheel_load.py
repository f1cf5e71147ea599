"""How long does a user of the installed package wait for ``load_model("tiny")``? The wheel is built
from this checkout, installed into a fresh virtual environment (its dependencies are this project's
``.venv``, reached through a ``.pth`` line, so nothing is downloaded), and a new Python process in an
empty folder, with an empty cache and no ``$FORGETTING_DATA``, imports the package and loads the model.

The issue's bar: under 30 s on 2 cores. Each repeat is a new process (imports included: torch and
transformers dominate); the median is reported with the ratio to the limit, and the report records
where the model came from (the wheel's package data, so nothing is pretrained) and whether the cache
stayed empty.

Usage::

    .venv/bin/python benchmarks/bench_wheel_load.py --repeats 3 --out benchmarks/results/wheel_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from _report import emit, run_context

REPO = Path(__file__).resolve().parents[1]
LIMIT_S = 30.0
LOAD = (
    "import json, time\n"
    "start = time.perf_counter()\n"
    "from forgetting import paths\n"
    "from forgetting.models import load_model\n"
    "model, tokenizer = load_model('tiny')\n"
    "print(json.dumps({'seconds': time.perf_counter() - start, 'data_dir': str(paths.DATA_DIR),\n"
    "                  'package': __import__('forgetting').__file__}))\n"
)


def build_env(work: Path) -> Path:
    """A venv at ``work/venv`` with the wheel of this checkout installed (no dependencies) and this
    interpreter's site-packages appended for them; returns its python."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(work / "dist")], check=True)
    (wheel,) = (work / "dist").glob("forgetting-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(work / "venv")], check=True)
    python = work / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # this project's dependencies; its own editable forgetting is not importable from a plain path line
    Path(site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        python = build_env(work)
        cache, folder = work / "cache", work / "elsewhere"
        folder.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("FORGETTING_DATA", "VIRTUAL_ENV", "PYTHONPATH")}
        env.update(FORGETTING_CACHE=str(cache), FORGETTING_QUIET="1")
        inside, outside, reports = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run([str(python), "-c", LOAD], env=env, cwd=folder, capture_output=True, text=True,
                                  check=True)
            outside.append(time.perf_counter() - start)
            reports.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            inside.append(reports[-1]["seconds"])
        from_wheel = all(Path(r["package"]).resolve().is_relative_to((work / "venv").resolve()) for r in reports)
        report = {
            **run_context(args),
            "what": "load_model('tiny') from the installed wheel, new process, empty cache, outside the repository",
            "limit_s": LIMIT_S,
            "process_wall_s": [round(s, 2) for s in outside],
            "load_wall_s": [round(s, 2) for s in inside],
            "median_process_s": round(statistics.median(outside), 2),
            "ratio_to_limit": round(statistics.median(outside) / LIMIT_S, 3),
            "package_from_wheel": from_wheel,
            "model_from_package_data": all("_data" in r["data_dir"] for r in reports),
            "cache_stayed_empty": not (cache / "models").exists(),
        }
    emit(report, args.out)


if __name__ == "__main__":
    main()
