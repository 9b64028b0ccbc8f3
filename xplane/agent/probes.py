"""Blackbox probes (HTTP GET / TCP connect) and how their results are summarised."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from urllib.parse import urlsplit

import httpx
from pydantic import Field

from xplane.domain import StrictModel


class ProbeResult(StrictModel):
    """One probe, as the heartbeat carries it."""

    target: str
    ok: bool
    rtt_ms: float = Field(ge=0)


def validate_target(target: str) -> str:
    """Accept ``http(s)://...`` or ``tcp://host:port``; raise ValueError naming the target."""
    parts = urlsplit(target)
    if parts.scheme in ("http", "https") and parts.hostname:
        return target
    if parts.scheme == "tcp" and parts.hostname:
        try:
            port = parts.port
        except ValueError:
            port = None
        if port:
            return target
    raise ValueError(f"probe target {target!r}: use http://host[:port]/path or tcp://host:port")


def summarise_rtt(results: list[ProbeResult], timeout_s: float) -> float:
    """The RTT to report: median of successful probes' RTTs.

    0 when no probes are configured. When probes exist but all failed there is no
    measurement; report the probe timeout so a latency-weighted GTM treats the node as
    far away rather than (with 0) as the closest node there is.
    """
    if not results:
        return 0.0
    good = [r.rtt_ms for r in results if r.ok]
    if not good:
        return timeout_s * 1000.0
    return float(statistics.median(good))


async def probe_http(client: httpx.AsyncClient, target: str, timeout_s: float) -> ProbeResult:
    """GET the URL; ok when it answers below 400 within the timeout."""
    start = time.perf_counter()
    try:
        response = await client.get(target, timeout=timeout_s)
        ok = response.status_code < 400
    except httpx.HTTPError:
        ok = False
    return ProbeResult(target=target, ok=ok, rtt_ms=(time.perf_counter() - start) * 1000.0)


async def probe_tcp(target: str, timeout_s: float) -> ProbeResult:
    """Open (and close) a TCP connection; RTT is the connect time."""
    parts = urlsplit(target)
    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname, parts.port), timeout_s
        )
    except (OSError, TimeoutError):
        return ProbeResult(target=target, ok=False, rtt_ms=(time.perf_counter() - start) * 1000.0)
    rtt_ms = (time.perf_counter() - start) * 1000.0
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ProbeResult(target=target, ok=True, rtt_ms=rtt_ms)


async def run_probes(
    client: httpx.AsyncClient, targets: list[str], timeout_s: float
) -> list[ProbeResult]:
    """All probes concurrently, so one slow target costs one timeout, not N."""
    jobs = [
        probe_tcp(t, timeout_s) if t.startswith("tcp://") else probe_http(client, t, timeout_s)
        for t in targets
    ]
    return list(await asyncio.gather(*jobs))
