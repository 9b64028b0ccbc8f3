"""Where the node's error rate and QPS come from: nothing, a JSON file, or a /metrics page."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

import httpx
from pydantic import ValidationError

from xplane.agent.prom import (
    CounterSelector,
    CounterTotals,
    LocalMetrics,
    PromParseError,
    counter_totals,
    parse_exposition,
    rates,
)


class MetricsUnavailable(Exception):
    """The local source could not be read this time; the message says why."""


class LocalSource(Protocol):
    async def read(self) -> LocalMetrics: ...


class NoSource:
    """No local source configured: error rate 0, QPS unknown."""

    async def read(self) -> LocalMetrics:
        return LocalMetrics()


class FileSource:
    """A small JSON file ``{"error_rate": 0.01, "qps": 12.5}`` the workload keeps current."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def read(self) -> LocalMetrics:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise MetricsUnavailable(f"metrics file {self.path}: {exc}") from exc
        try:
            return LocalMetrics.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'document'}: {e['msg']}"
                for e in exc.errors()
            )
            raise MetricsUnavailable(f"metrics file {self.path}: {problems}") from exc


class PrometheusSource:
    """Scrapes a Prometheus text page and reports rates between consecutive scrapes."""

    def __init__(self, client: httpx.AsyncClient, url: str, selector: CounterSelector) -> None:
        self.client = client
        self.url = url
        self.selector = selector
        self._prev: CounterTotals | None = None
        self._last = LocalMetrics()

    async def _scrape(self) -> CounterTotals:
        try:
            response = await self.client.get(self.url, timeout=5.0)
            response.raise_for_status()
            samples = parse_exposition(response.text)
        except (httpx.HTTPError, PromParseError) as exc:
            raise MetricsUnavailable(f"metrics url {self.url}: {exc}") from exc
        return counter_totals(samples, self.selector, at=time.monotonic())

    async def read(self) -> LocalMetrics:
        cur = await self._scrape()
        prev, self._prev = self._prev, cur
        if prev is None:
            return self._last  # first scrape: no rate yet
        computed = rates(prev, cur)
        if computed is not None:
            self._last = computed
        return self._last
