"""Config errors: what the loader reports, and how pydantic's errors become human text.

Every problem in a config tree becomes one :class:`ConfigIssue`; the loader
collects them all (across files) and raises one :class:`ConfigError`. Each
issue renders as one line::

    gtm/svc-plus.yaml:12: regions[1].weight: must be >= 0

``:line`` is left out when unknown, ``path: `` when the issue is about the
whole file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Loc = tuple[str | int, ...]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class ConfigIssue(BaseModel):
    """One problem: the file (relative to the config root, posix), field path, message."""

    file: str
    path: str = ""
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(Exception):
    """A config tree is invalid; ``issues`` holds every problem found, sorted by place."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues = sorted(issues, key=lambda i: (i.file, i.line or 0, i.path, i.message))
        super().__init__("\n".join(str(i) for i in self.issues))


class FieldErrors(ValueError):
    """Raised by model validators to point at exact sub-fields (pydantic only knows the model).

    :func:`issues_from_validation` expands it into one issue per entry, with the
    entry's location appended to the model's.
    """

    def __init__(self, errors: Sequence[tuple[Loc, str]]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{format_path(loc)}: {msg}" for loc, msg in self.errors))


def format_path(loc: Sequence[str | int]) -> str:
    """``('regions', 1, 'weight')`` -> ``regions[1].weight``; odd keys are quoted."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _IDENT.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def _fmt_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def humanize(err: ErrorDetails) -> str:
    """A short message for one pydantic error (pydantic's own text as a last resort)."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    loc = err["loc"]
    field = loc[-1] if loc else ""
    simple = {
        "missing": "is required",
        "int_from_float": f"must be a whole number, not {_fmt_value(value)}",
        "finite_number": "must be a finite number",
        "dict_type": "must be a mapping (key: value)",
        "model_type": "must be a mapping (key: value)",
        "model_attributes_type": "must be a mapping (key: value)",
        "list_type": "must be a list",
        "string_type": f"must be a string, not {_fmt_value(value)}",
        "bool_type": f"must be true or false, not {_fmt_value(value)}",
        "bool_parsing": f"must be true or false, not {_fmt_value(value)}",
    }
    if kind == "extra_forbidden":
        return f"unknown field {field!r}"
    if kind in simple:
        return simple[kind]
    if kind in ("int_type", "int_parsing"):
        return f"must be an integer, not {_fmt_value(value)}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number, not {_fmt_value(value)}"
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
        "less_than": ("<", "lt"),
    }
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {_number(ctx.get(key))}, not {_fmt_value(value)}"
    if kind == "too_short":
        n = ctx.get("min_length", 1)
        return "must not be empty" if n == 1 else f"needs at least {n} entries"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, not {_fmt_value(value)}"
    if kind == "union_tag_invalid":
        return f"unknown provider {ctx.get('tag')!r}: expected one of {ctx.get('expected_tags')}"
    if kind == "union_tag_not_found":
        return "is required"
    if kind == "string_pattern_mismatch":
        if ctx.get("pattern") == NAME_PATTERN:
            return (
                f"invalid name {_fmt_value(value)}: use lowercase letters, digits and '-' "
                "(at most 63, not starting or ending with '-')"
            )
        return f"{_fmt_value(value)} does not match {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    return err["msg"]


def _readable_loc(loc: Loc, data: Any) -> Loc:
    """Drop pydantic's internal loc parts (union tags) by following the input data.

    A discriminated union puts the tag in the loc (``dns.cloudflare.foo``); it is
    not a key of the input, so it is skipped. The last part is always kept
    (it may name a missing or an unknown field).
    """
    out: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        child = _child(current, part)
        if child is _ABSENT and not last:
            continue
        current = child
        out.append(part)
    return tuple(out)


_ABSENT = object()


def _child(container: Any, part: str | int) -> Any:
    if isinstance(container, dict):
        return container.get(part, _ABSENT)
    if isinstance(container, list) and isinstance(part, int) and 0 <= part < len(container):
        return container[part]
    return _ABSENT


def validation_errors(exc: ValidationError, data: Any) -> list[tuple[Loc, str]]:
    """(readable loc, human message) for every error in ``exc``; FieldErrors expanded."""
    result: list[tuple[Loc, str]] = []
    for err in exc.errors():
        loc = _readable_loc(tuple(err["loc"]), data)
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            # Point at the discriminator field itself (``dns.provider``), not its mapping.
            loc = (*loc, str((err.get("ctx") or {}).get("discriminator", "")).strip("'"))
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, FieldErrors):
            result.extend((loc + sub, msg) for sub, msg in error.errors)
        else:
            result.append((loc, humanize(err)))
    return result
