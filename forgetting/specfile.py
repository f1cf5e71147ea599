"""Reading a spec file the way the command line does: bounded, fast, and every problem named at once.

:func:`load_spec_file` is :func:`forgetting.spec.load_spec` with four more guarantees, checked in this
order before any work starts:

1. a file larger than :data:`MAX_SPEC_BYTES` is refused before it is parsed (a spec is a few hundred
   bytes; a large file is a mistake, or an attack on the parser);
2. YAML is read with the C safe loader where PyYAML has it (``yaml.CSafeLoader``, about 10x faster),
   else the Python one; both build plain data only (no tags that run code);
3. a document with more than :data:`MAX_ALIASES` aliases (``*name``) is refused: an "alias bomb" of a
   few lines (each anchor listing the previous one ten times) is a graph that validation would walk
   as billions of nodes;
4. **every** validation problem is listed, one per field, each as ``field: what is wrong; what is
   allowed``, unknown keys first (a typo is the likelier mistake, and it often explains the others)
   and with the nearest allowed name: ``modle: unknown key; did you mean model? allowed here: ...``.

The checks :func:`forgetting.spec.parse_spec` makes after the fields validate (the model exists) then
run as before. ``parse_spec`` itself still names the first problem only (with a count of the rest).
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml
from pydantic import ValidationError

from forgetting.errors import SpecError
from forgetting.spec import ExperimentSpec, _allowed, parse_spec

MAX_SPEC_BYTES = 256 * 1024
MAX_ALIASES = 32  # a spec needs none; a few anchors for shared options are fine
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # PyYAML built without libyaml has no C loader


def _problem(err: dict) -> tuple[str, str]:
    """``(field path, what is wrong and what is allowed)`` of one pydantic error."""
    loc = tuple(err["loc"])
    field = ".".join(str(p) for p in loc) or "spec"
    if err["type"] == "extra_forbidden":
        allowed = [name.strip() for name in _allowed(ExperimentSpec, loc).split(",") if name.strip()]
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        hint = f" did you mean {near[0]}?" if near else ""
        return field, f"unknown key;{hint} allowed here: {', '.join(allowed)}"
    if err["type"] == "missing":
        return field, "required, and missing"
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        message = message.replace("Input should be", "allowed:")
    return field, message


def spec_problems(data: object) -> list[tuple[str, str]]:
    """Every validation problem of spec ``data`` as ``(field path, message)``, unknown keys first;
    ``[]`` when the fields validate (the checks after validation are :func:`~forgetting.spec.parse_spec`'s)."""
    if not isinstance(data, dict):
        return [("spec", f"must be a mapping of keys to values, got {type(data).__name__}")]
    try:
        ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        return sorted(problems, key=lambda p: not p[1].startswith("unknown key"))  # stable: otherwise in order
    return []


def _read_yaml(path: Path) -> object:
    text = path.read_text(encoding="utf-8")
    try:
        aliases = sum(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=_LOADER))
        if aliases > MAX_ALIASES:
            raise SpecError("SPEC", f"{path} uses {aliases} YAML aliases; allowed: at most {MAX_ALIASES} "
                                    "(a spec needs none; many aliases expand into a huge document)")
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader: plain data only
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError("SPEC", f"{path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def load_spec_file(path: str | Path) -> ExperimentSpec:
    """Read, bound and validate a YAML spec file (module docstring); raises one
    :class:`~forgetting.errors.SpecError` naming every problem: ``field: message`` for one problem,
    ``3 problems: a: ...; b: ...; c: ...`` for several."""
    path = Path(path)
    if not path.is_file():
        raise SpecError("SPEC", f"no such file: {path}")
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError("SPEC", f"{path} has {size} bytes; allowed: at most {MAX_SPEC_BYTES} (a spec is a few hundred)")
    data = _read_yaml(path)
    problems = spec_problems(data)
    if len(problems) == 1:
        raise SpecError(*problems[0])
    if problems:
        listed = "; ".join(f"{field}: {message}" for field, message in problems)
        raise SpecError(f"{path}", f"{len(problems)} problems: {listed}")
    return parse_spec(data, source=str(path))
