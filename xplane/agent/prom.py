"""Prometheus text exposition -> request/error counters -> error rate and QPS.

Pure: :func:`parse_exposition` reads the text, :func:`counter_totals` picks the
configured counters out of it, :func:`rates` turns two scrapes into rates.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

from pydantic import Field, field_validator

from xplane.domain import StrictModel

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


class PromParseError(ValueError):
    """Malformed exposition text; the message names the line."""


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float


def _parse_labels(line: str, pos: int, lineno: int) -> tuple[dict[str, str], int]:
    """Parse ``{a="x",b="y"}`` starting at the ``{``; return labels and the index after ``}``."""
    labels: dict[str, str] = {}
    pos += 1
    while True:
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == "}":
            return labels, pos + 1
        match = _LABEL_NAME.match(line, pos)
        if not match:
            raise PromParseError(f"line {lineno}: expected a label name at column {pos + 1}")
        key = match.group(0)
        pos = match.end()
        if line[pos : pos + 2] != '="':
            raise PromParseError(f'line {lineno}: expected =" after label {key!r}')
        pos += 2
        chars: list[str] = []
        while True:
            if pos >= len(line):
                raise PromParseError(f"line {lineno}: unterminated value of label {key!r}")
            char = line[pos]
            if char == "\\" and pos + 1 < len(line):
                chars.append(_ESCAPES.get(line[pos + 1], "\\" + line[pos + 1]))
                pos += 2
            elif char == '"':
                pos += 1
                break
            else:
                chars.append(char)
                pos += 1
        labels[key] = "".join(chars)
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        if pos < len(line) and line[pos] == ",":
            pos += 1
        elif not (pos < len(line) and line[pos] == "}"):
            raise PromParseError(f"line {lineno}: expected , or }} after label {key!r}")


def _parse_value(text: str, lineno: int) -> float:
    try:
        return float(text)  # float() accepts +Inf, -Inf and NaN as Prometheus writes them
    except ValueError as exc:
        raise PromParseError(f"line {lineno}: invalid sample value {text!r}") from exc


def parse_exposition(text: str) -> list[Sample]:
    """Every sample of a Prometheus (or OpenMetrics) text page; comments are skipped."""
    samples: list[Sample] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _NAME.match(line)
        if not match:
            raise PromParseError(f"line {lineno}: expected a metric name, got {raw!r}")
        name, pos = match.group(0), match.end()
        labels: dict[str, str] = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = _parse_labels(line, pos, lineno)
        rest = line[pos:].split("#", 1)[0].split()  # OpenMetrics exemplars follow a '#'
        if not rest or len(rest) > 2:
            raise PromParseError(f"line {lineno}: expected 'value [timestamp]' after {name!r}")
        samples.append(Sample(name, labels, _parse_value(rest[0], lineno)))
    return samples


class CounterSelector(StrictModel):
    """Which counters carry requests and errors.

    Errors are either a counter of their own (``errors_metric``) or the samples of the
    requests counter whose ``error_label`` fully matches ``error_pattern`` (``status=~"5.."``).
    """

    requests_metric: str = "http_requests_total"
    errors_metric: str | None = None
    error_label: str = "status"
    error_pattern: str = "5.."

    @field_validator("requests_metric", "errors_metric")
    @classmethod
    def _metric_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.fullmatch(value):
            raise ValueError(f"invalid metric name {value!r}")
        return value

    @field_validator("error_pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
        return value


class CounterTotals(NamedTuple):
    """Counter values of one scrape, and when (monotonic seconds) it was taken."""

    requests: float
    errors: float
    at: float


def counter_totals(samples: list[Sample], selector: CounterSelector, at: float) -> CounterTotals:
    """Sum the selected counters over all label sets (NaN samples are ignored)."""
    pattern = re.compile(selector.error_pattern)
    requests = errors = 0.0
    for sample in samples:
        if math.isnan(sample.value):
            continue
        if sample.name == selector.requests_metric:
            requests += sample.value
            label = sample.labels.get(selector.error_label)
            if selector.errors_metric is None and label is not None and pattern.fullmatch(label):
                errors += sample.value
        elif selector.errors_metric is not None and sample.name == selector.errors_metric:
            errors += sample.value
    return CounterTotals(requests=requests, errors=errors, at=at)


class LocalMetrics(StrictModel):
    """What the node's own workload says about itself."""

    error_rate: float = Field(default=0.0, ge=0, le=1)
    qps: float | None = Field(default=None, ge=0)
    # The workload's own CPU share (e.g. its cgroup's); when given it replaces /proc/stat.
    cpu: float | None = Field(default=None, ge=0, le=1)


def _increase(prev: float, cur: float) -> float:
    # A counter that went down was reset (process restart): like Prometheus' rate(),
    # count the new value as the increase since the reset.
    return cur if cur < prev else cur - prev


def rates(prev: CounterTotals, cur: CounterTotals) -> LocalMetrics | None:
    """Error rate (errors / requests) and QPS between two scrapes; None if no time passed."""
    elapsed = cur.at - prev.at
    if elapsed <= 0:
        return None
    requests = _increase(prev.requests, cur.requests)
    errors = _increase(prev.errors, cur.errors)
    error_rate = min(1.0, errors / requests) if requests > 0 else 0.0
    return LocalMetrics(error_rate=error_rate, qps=requests / elapsed)
