"""Durations as written in GitOps files: ``500ms``, ``5s``, ``2m``, ``1h``, ``1d``.

A bare number is read as seconds. Parsed into :class:`datetime.timedelta`, and
written back in the shortest exact unit so ``config show`` round-trips.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: Any) -> timedelta:
    """Parse ``5s``/``2m``/``1h``/a number of seconds; raise ValueError otherwise."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise ValueError("duration must be like 5s, 2m or 1h, not a boolean")
    elif isinstance(value, int | float):
        result = timedelta(seconds=float(value))
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if not match:
            raise ValueError(
                f"invalid duration {value!r}: use a number and a unit (ms, s, m, h, d), e.g. 5s"
            )
        result = timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    else:
        raise ValueError(f"invalid duration {value!r}: use a string like 5s, 2m or 1h")
    if result < timedelta(0):
        raise ValueError("duration must not be negative")
    return result


def format_duration(value: timedelta) -> str:
    """Shortest exact rendering: 90s -> ``90s``, 120s -> ``2m``, 0.5s -> ``500ms``."""
    ms = round(value.total_seconds() * 1000)
    for unit, factor in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % factor == 0:
            return f"{ms // factor}{unit}"
    return f"{ms}ms"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


def retry_delay(attempts: int, base: timedelta, cap: timedelta) -> timedelta:
    """Exponential backoff after ``attempts`` failed attempts (1, 2, ...), capped."""
    return min(cap, base * 2 ** min(max(attempts - 1, 0), 30))
