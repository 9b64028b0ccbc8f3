"""Prometheus text exposition -> request/error counters -> error rate and QPS.

Pure: :func:`parse_exposition` reads the text (``prometheus_client.parser`` does the
parsing), :func:`counter_totals` picks the configured counters out of it,
:func:`rates` turns two scrapes into rates.
"""

from __future__ import annotations

import io
import math
import re
from typing import NamedTuple

from prometheus_client.parser import text_fd_to_metric_families
from pydantic import Field, field_validator

from xplane.domain import StrictModel

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class PromParseError(ValueError):
    """Malformed exposition text; the message names the line."""


class Sample(NamedTuple):
    name: str
    labels: dict[str, str]
    value: float
    # The family's ``# TYPE`` ("unknown" without one): a counter also answers to its
    # name without ``_total``, as the parser names such counters with it.
    type: str = "unknown"


class _CountingLines(io.StringIO):
    """The page, counting the lines the parser has read so an error can name its line."""

    lineno = 0

    def __next__(self) -> str:  # type: ignore[override]  # typeshed: _IOBase yields bytes
        line = super().__next__()
        self.lineno += 1
        return line


def parse_exposition(text: str) -> list[Sample]:
    """Every sample of a Prometheus (or OpenMetrics) text page; comments are skipped.

    OpenMetrics exemplars (after ``#``) are dropped; a counter declared without the
    ``_total`` suffix has its samples named with it (the parser's OpenMetrics naming).
    """
    page = _CountingLines(text)
    try:
        return [
            Sample(sample.name, dict(sample.labels), float(sample.value), family.type)
            for family in text_fd_to_metric_families(page)
            for sample in family.samples
        ]
    except (ValueError, IndexError) as exc:
        lines = text.splitlines()
        raw = lines[page.lineno - 1] if 0 < page.lineno <= len(lines) else ""
        detail = f": {exc}" if str(exc) else ""
        raise PromParseError(f"line {page.lineno}: cannot parse {raw.strip()!r}{detail}") from exc


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


def _is_metric(sample: Sample, name: str) -> bool:
    """``sample`` is of metric ``name``; a counter may be named with or without ``_total``."""
    return sample.name == name or (sample.type == "counter" and sample.name == f"{name}_total")


def counter_totals(samples: list[Sample], selector: CounterSelector, at: float) -> CounterTotals:
    """Sum the selected counters over all label sets (NaN samples are ignored)."""
    pattern = re.compile(selector.error_pattern)
    requests = errors = 0.0
    for sample in samples:
        if math.isnan(sample.value):
            continue
        if _is_metric(sample, selector.requests_metric):
            requests += sample.value
            label = sample.labels.get(selector.error_label)
            if selector.errors_metric is None and label is not None and pattern.fullmatch(label):
                errors += sample.value
        elif selector.errors_metric is not None and _is_metric(sample, selector.errors_metric):
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
