"""Optional metrics source: a region's window metrics from Prometheus' HTTP API.

Each number is one instant query (``GET <url>/api/v1/query?query=...&time=...``)
whose PromQL is a template with ``{service}``, ``{region}`` and ``{window}``
(a Prometheus range like ``60s``). The defaults assume node_exporter on every node,
scraped with ``service`` and ``region`` target labels:

* ``cpu``: busy fraction per instance (1 - idle rate over all CPUs), averaged
  over instances -- :data:`DEFAULT_CPU_QUERY`;
* ``nodes``: instances with CPU series -- :data:`DEFAULT_NODES_QUERY`.

node_exporter knows nothing of requests, so RTT, error rate and QPS have no
default; give them for your exporter, e.g. for a histogram in seconds::

    histogram_quantile(0.9, sum by (le) (rate(
        http_request_duration_seconds_bucket{service="{service}",region="{region}"}[{window}]
    ))) * 1000

A query may answer a scalar or a one-series vector; an empty answer (or NaN)
leaves that number unknown. When CPU is unknown the whole result is ``None``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from pydantic import BaseModel

from xplane.autoscale.metrics import RegionMetrics, as_utc

DEFAULT_CPU_QUERY = (
    'avg(1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle",'
    'service="{service}",region="{region}"}}[{window}])))'
)
DEFAULT_NODES_QUERY = (
    'count(count by (instance) (node_cpu_seconds_total{{service="{service}",region="{region}"}}))'
)


class PromQueries(BaseModel):
    """PromQL templates (``str.format`` fields: service, region, window; ``{{`` for ``{``)."""

    cpu: str = DEFAULT_CPU_QUERY
    nodes: str | None = DEFAULT_NODES_QUERY
    rtt_p50_ms: str | None = None
    rtt_p90_ms: str | None = None
    error_rate: str | None = None
    qps_total: str | None = None


class PrometheusError(Exception):
    """Prometheus could not answer a query (names the URL and the query, never credentials)."""


def prom_duration(window: timedelta) -> str:
    """``timedelta(seconds=60)`` -> ``60s`` (Prometheus accepts whole units only)."""
    return f"{max(1, round(window.total_seconds()))}s"


def _value(body: Any, query: str) -> tuple[float, float] | None:
    """(timestamp, value) of a scalar or single-series vector answer; None if empty/NaN."""
    if not isinstance(body, dict) or body.get("status") != "success":
        error = body.get("error") if isinstance(body, dict) else None
        raise PrometheusError(f"query {query!r} failed: {error or 'unexpected answer'}")
    data = body.get("data") or {}
    kind, result = data.get("resultType"), data.get("result")
    point: Any
    if kind == "scalar":
        point = result
    elif kind == "vector":
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(
                f"query {query!r} returned {len(result)} series; aggregate it to one"
            )
        point = result[0].get("value")
    else:
        raise PrometheusError(f"query {query!r} returned a {kind}, not a scalar or vector")
    try:
        at, value = float(point[0]), float(point[1])
    except (TypeError, ValueError, IndexError) as exc:
        raise PrometheusError(f"query {query!r}: malformed sample {point!r}") from exc
    return None if math.isnan(value) else (at, value)


async def prometheus_region_metrics(
    url: str,
    service: str,
    region: str,
    window: timedelta,
    *,
    queries: PromQueries | None = None,
    now: datetime | None = None,
    timeout: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> RegionMetrics | None:
    """Query ``url`` (Prometheus base URL) for one region's metrics at ``now``.

    Returns None when Prometheus has no CPU data for the region; raises
    :class:`PrometheusError` when it cannot be asked or answers an error.
    """
    queries = queries or PromQueries()
    at = as_utc(now) if now else datetime.now(UTC)
    fields = {"service": service, "region": region, "window": prom_duration(window)}
    endpoint = url.rstrip("/") + "/api/v1/query"
    base = httpx.URL(url)
    where = f"{base.scheme}://{base.host}" + (f":{base.port}" if base.port else "")

    async def ask(http: httpx.AsyncClient, template: str | None) -> tuple[float, float] | None:
        if template is None:
            return None
        query = template.format(**fields)
        params = {"query": query, "time": f"{at.timestamp():.3f}"}
        try:
            response = await http.get(endpoint, params=params)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {where}: {type(exc).__name__}: {exc}") from exc
        try:
            body = response.json()
        except ValueError as exc:
            msg = f"Prometheus at {where} answered HTTP {response.status_code}, not JSON"
            raise PrometheusError(msg) from exc
        return _value(body, query)

    async def run(http: httpx.AsyncClient) -> RegionMetrics | None:
        cpu = await ask(http, queries.cpu)
        if cpu is None:
            return None
        found = {
            name: await ask(http, getattr(queries, name))
            for name in ("nodes", "rtt_p50_ms", "rtt_p90_ms", "error_rate", "qps_total")
        }
        values = {name: point[1] if point else None for name, point in found.items()}
        nodes = int(values.pop("nodes") or 0)
        qps_total = values["qps_total"]
        newest = datetime.fromtimestamp(cpu[0], UTC)
        return RegionMetrics(
            cpu=cpu[1],
            rtt_p50_ms=values["rtt_p50_ms"],
            rtt_p90_ms=values["rtt_p90_ms"],
            error_rate=values["error_rate"],
            qps_total=qps_total,
            qps_per_node=qps_total / nodes if qps_total is not None and nodes else None,
            nodes_reporting=nodes or 1,  # CPU answered, so at least one node reported
            oldest_at=newest - window,
            newest_at=newest,
        )

    if client is not None:
        return await run(client)
    async with httpx.AsyncClient(timeout=timeout) as http:
        return await run(http)
