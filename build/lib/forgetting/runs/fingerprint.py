"""Code fingerprints: which code made a stored result, so that a result is never reused with numbers
the current code would not produce.

A fingerprint hashes the *syntax trees* of a set of package modules with their docstrings removed
(:func:`code_only`; comments are not in the tree), so editing a docstring or a comment keeps cached
runs and tables, while any change to what the code does invalidates them.

A process computes each fingerprint once, at its first use, and keeps it: the code a process runs is
the code it imported, so a package file edited while a long-lived process (a notebook kernel, a
``make results``) is running must not relabel that process's results with the new code's fingerprint.
"""

from __future__ import annotations

import ast
import functools
import hashlib

from forgetting import paths

#: The modules whose code determines a run's numbers (a change in any of them gives new run folders).
RUN_CODE = ("train", "hooks.py", "mitigations", "tasks", "evaluate.py", "spec.py", "runs/run.py", "runs/snapshots.py", "models/embedded.py",
            "models/finetune.py")


def code_only(source: str) -> str:
    """The source's syntax tree without docstrings (comments are not in it): what the code *does*."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@functools.cache
def code_fingerprint(entries: tuple[str, ...] = RUN_CODE) -> str:
    """Short sha256 (8 hex digits) of the code of the package modules or folders ``entries`` (paths
    relative to the package; default :data:`RUN_CODE`), docstrings and comments excluded."""
    digest = hashlib.sha256()
    for entry in entries:
        target = paths.PACKAGE_DIR / entry
        for file in sorted(target.rglob("*.py")) if target.is_dir() else [target]:
            digest.update(file.relative_to(paths.PACKAGE_DIR).as_posix().encode())
            digest.update(code_only(file.read_text(encoding="utf-8")).encode())
    return digest.hexdigest()[:8]
