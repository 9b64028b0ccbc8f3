"""Read and edit ``node_count`` in a ``.tfvars`` file, touching nothing else (pure).

The autoscaler's commits must be reviewable diffs of one line, so this is a
line editor, not an HCL parser: only a top-level ``node_count = <int>`` line is
recognised (optionally quoted, optionally with a trailing comment), and only its
digits change -- spacing, alignment, comments, line endings and every other line
stay byte for byte.
"""

from __future__ import annotations

import re

_ASSIGN = re.compile(
    r"^(?P<head>[ \t]*node_count[ \t]*=[ \t]*)(?P<quote>\"?)(?P<value>[^\s\"#]*)(?P=quote)"
    r"(?P<tail>[ \t]*(?:(?:#|//).*)?)$"
)
_NODE_COUNT = re.compile(r"^[ \t]*node_count[ \t]*=")
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|(?:#|//).*')
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)([ \t]*)=")


class TfvarsError(ValueError):
    """The file's ``node_count`` cannot be read or edited safely."""


def _split(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def _body(line: str) -> tuple[str, str]:
    """(line without its line ending, the line ending)."""
    stripped = line.rstrip("\r\n")
    return stripped, line[len(stripped) :]


def _top_level(lines: list[str]) -> list[bool]:
    """Whether each line starts outside any ``{...}`` / ``[...]`` (strings, comments skipped)."""
    depth, out = 0, []
    for line in lines:
        out.append(depth == 0)
        code = _STRING_OR_COMMENT.sub("", line)
        depth = max(
            0, depth + code.count("{") + code.count("[") - code.count("}") - code.count("]")
        )
    return out


def _find(lines: list[str]) -> int | None:
    """Index of the one top-level ``node_count`` assignment; TfvarsError if several."""
    top = _top_level(lines)
    found = [i for i, line in enumerate(lines) if top[i] and _NODE_COUNT.match(line)]
    if len(found) > 1:
        where = ", ".join(str(i + 1) for i in found)
        raise TfvarsError(f"node_count is assigned {len(found)} times (lines {where})")
    return found[0] if found else None


def _parse(line: str, number: int) -> tuple[re.Match[str], int]:
    body, _ = _body(line)
    match = _ASSIGN.match(body)
    if not match or not match.group("value").isdigit():
        raise TfvarsError(f"line {number}: node_count must be a whole number: {body.strip()!r}")
    return match, int(match.group("value"))


def get_node_count(text: str) -> int | None:
    """``node_count`` of a tfvars text, or None when the file does not set it."""
    lines = _split(text)
    index = _find(lines)
    return None if index is None else _parse(lines[index], index + 1)[1]


def _aligned_head(lines: list[str]) -> str:
    """``node_count = `` spaced like the file's other assignments when they share a column."""
    columns = set()
    for line in lines:
        match = _KEY.match(line)
        if match:
            columns.add(len(match.group(1)) + len(match.group(2)))
    column = columns.pop() if len(columns) == 1 else 0
    return "node_count".ljust(max(column, len("node_count") + 1)) + "= "


def set_node_count(text: str, n: int) -> str:
    """``text`` with ``node_count`` set to ``n``; appended as a new line when absent."""
    if n < 0:
        raise TfvarsError(f"node_count must be >= 0, not {n}")
    lines = _split(text)
    index = _find(lines)
    if index is None:
        ending = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
        if lines and not lines[-1].endswith(("\n", "\r")):
            lines[-1] += ending
        return "".join(lines) + f"{_aligned_head(lines)}{n}{ending}"
    match, _ = _parse(lines[index], index + 1)
    _, ending = _body(lines[index])
    quote = match.group("quote")
    lines[index] = f"{match.group('head')}{quote}{n}{quote}{match.group('tail')}{ending}"
    return "".join(lines)
