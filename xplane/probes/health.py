"""Probing nodes for the active health checks: HTTP GETs (httpx) or TCP connects (asyncio),
at most ``concurrency`` at a time, each bounded by the check's timeout. Where each probe
goes and how its answers are judged over time: :mod:`xplane.gtm.health_checks`."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time

import httpx

from xplane.config.models import HealthCheck
from xplane.gtm.health_checks import ProbeResult, ProbeTarget, probe_port, probe_url

DEFAULT_CONCURRENCY = 100


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verification, built once: a client per tick otherwise loads the CA
    bundle each time (20-70 ms of a GTM tick, though probes are plain HTTP)."""
    return httpx.create_ssl_context()


async def probe_all(
    targets: list[ProbeTarget],
    check: HealthCheck,
    concurrency: int = DEFAULT_CONCURRENCY,
    host_header: str | None = None,
    budget_s: float | None = None,
) -> list[ProbeResult]:
    """Probe every target once, at most ``concurrency`` at a time; results in target order.

    A probe fails on a timeout (``check.timeout``), a refused connection or (http) a
    status not in ``check.expected_status``. It never raises.

    ``budget_s``: start no probe after that many seconds; the targets not started are
    left out of the results (the rest of the round waits for the next call). A probe
    once started runs to its answer or its timeout, so a slow node is never cut short
    into no result at all: the call takes at most ``budget_s`` + ``check.timeout``.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    stop_at = None if budget_s is None else time.monotonic() + budget_s
    timeout = check.timeout.total_seconds()
    headers = {"Host": host_header} if host_header else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    results: list[ProbeResult | None] = [None] * len(targets)
    started = 0  # targets[:started] were started, in order
    # trust_env=False: a proxy from the environment must never sit between XPlane and nodes.
    async with httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        trust_env=False,
        follow_redirects=False,
        verify=_tls_context(),
    ) as client:
        # ``concurrency`` workers take the targets in order: a task per worker, not per
        # target (10,000 tasks queued on a semaphore cost more than the probes that fit
        # in a tick's budget, and left the rest of the round to be skipped one by one).
        async def worker() -> None:
            nonlocal started
            while started < len(targets):
                # The first probe always starts: a budget smaller than one wave still
                # moves the round on.
                if stop_at is not None and started and time.monotonic() > stop_at:
                    return
                index, started = started, started + 1
                target = targets[index]
                if check.type == "tcp":
                    results[index] = await _probe_tcp(target, check, timeout)
                else:
                    results[index] = await _probe_http(client, target, check, headers)

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(targets)))))
    return [r for r in results[:started] if r is not None]


async def _probe_http(
    client: httpx.AsyncClient,
    target: ProbeTarget,
    check: HealthCheck,
    headers: dict[str, str],
) -> ProbeResult:
    port = probe_port(target, check)
    started = time.perf_counter()
    status: int | None = None
    error: str | None = None
    try:
        response = await client.get(probe_url(target.address, port, check.path), headers=headers)
        status = response.status_code
        if status not in check.expected_status:
            error = f"unexpected status {status}"
    except httpx.HTTPError as exc:
        error = _describe(exc)
    return ProbeResult(
        node_id=target.node_id,
        address=target.address,
        port=port,
        ok=error is None,
        status_code=status,
        error=error,
        latency_ms=(time.perf_counter() - started) * 1000,
    )


async def _probe_tcp(target: ProbeTarget, check: HealthCheck, timeout: float) -> ProbeResult:
    port = probe_port(target, check)
    started = time.perf_counter()
    error: str | None = None
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(target.address.strip("[]"), port), timeout
        )
        writer.close()
        with contextlib.suppress(OSError):  # a reset on close still means it was open
            await writer.wait_closed()
    except TimeoutError:
        error = f"timed out after {timeout:g}s"
    except OSError as exc:
        error = exc.strerror or type(exc).__name__
    return ProbeResult(
        node_id=target.node_id,
        address=target.address,
        port=port,
        ok=error is None,
        error=error,
        latency_ms=(time.perf_counter() - started) * 1000,
    )


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
