"""Active health checks: XPlane probes every registered node itself (the policy's ``health``).

Two parts:

* :func:`next_health` / :class:`HealthTracker`, a pure state machine with hysteresis:
  a node's health flips only after ``healthy_threshold`` consecutive successes or
  ``unhealthy_threshold`` consecutive failures, so one lost probe doesn't flap DNS;
* :func:`probe_all`, the I/O: HTTP GETs (httpx) or TCP connects (asyncio), all
  concurrent under a semaphore, each bounded by the check's timeout.

The GTM loop's activity persists the tracker's verdicts as ``health_check_ok``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Iterable, Mapping

import httpx
from pydantic import BaseModel, Field

from xplane.config.models import HealthCheck

DEFAULT_PORT = 80
DEFAULT_CONCURRENCY = 100


# ------------------------------------------------------------------ state machine
class CheckState(BaseModel):
    """One node's check history: ``healthy`` is None until a threshold is first reached."""

    healthy: bool | None = None
    consecutive_ok: int = Field(default=0, ge=0)
    consecutive_fail: int = Field(default=0, ge=0)


def next_health(
    prev: CheckState | None, ok: bool, healthy_threshold: int, unhealthy_threshold: int
) -> CheckState:
    """The state after one more probe result (pure)."""
    prev = prev or CheckState()
    if ok:
        oks, fails = prev.consecutive_ok + 1, 0
        healthy = True if oks >= healthy_threshold else prev.healthy
    else:
        oks, fails = 0, prev.consecutive_fail + 1
        healthy = False if fails >= unhealthy_threshold else prev.healthy
    return CheckState(healthy=healthy, consecutive_ok=oks, consecutive_fail=fails)


class HealthTracker:
    """:func:`next_health` for many nodes, with the thresholds of one check."""

    def __init__(self, check: HealthCheck, states: Mapping[str, CheckState] | None = None) -> None:
        self.check = check
        self.states: dict[str, CheckState] = dict(states or {})

    def observe(self, node_id: str, ok: bool) -> CheckState:
        state = next_health(
            self.states.get(node_id),
            ok,
            self.check.healthy_threshold,
            self.check.unhealthy_threshold,
        )
        self.states[node_id] = state
        return state

    def observe_all(self, results: Iterable[ProbeResult]) -> dict[str, bool | None]:
        """Feed a round of probes; return node id -> verdict for nodes whose verdict changed."""
        changed: dict[str, bool | None] = {}
        for result in results:
            before = self.states.get(result.node_id, CheckState()).healthy
            after = self.observe(result.node_id, result.ok).healthy
            if after != before:
                changed[result.node_id] = after
        return changed

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the state of nodes no longer registered."""
        wanted = set(keep)
        self.states = {k: v for k, v in self.states.items() if k in wanted}


# ------------------------------------------------------------------------ probes
class ProbeTarget(BaseModel):
    """A node to probe: its address (IPv4, IPv6 or a host name) and advertised port."""

    node_id: str
    address: str
    port: int | None = Field(default=None, ge=1, le=65535)


class ProbeResult(BaseModel):
    node_id: str
    address: str
    port: int
    ok: bool
    status_code: int | None = None  # http only
    error: str | None = None
    latency_ms: float


def probe_port(target: ProbeTarget, check: HealthCheck) -> int:
    """The check's port, else the node's advertised port, else 80."""
    return check.port or target.port or DEFAULT_PORT


def probe_url(host: str, port: int, path: str) -> str:
    """``http://host:port/path`` with an IPv6 address bracketed."""
    host = host.strip("[]")
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}/{path.lstrip('/')}"


async def probe_all(
    targets: list[ProbeTarget],
    check: HealthCheck,
    concurrency: int = DEFAULT_CONCURRENCY,
    host_header: str | None = None,
) -> list[ProbeResult]:
    """Probe every target once, at most ``concurrency`` at a time; results in target order.

    A probe fails on a timeout (``check.timeout``), a refused connection or (http) a
    status not in ``check.expected_status``. It never raises.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    gate = asyncio.Semaphore(concurrency)
    timeout = check.timeout.total_seconds()
    headers = {"Host": host_header} if host_header else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=0)
    # trust_env=False: a proxy from the environment must never sit between XPlane and nodes.
    async with httpx.AsyncClient(
        timeout=timeout, limits=limits, trust_env=False, follow_redirects=False
    ) as client:

        async def one(target: ProbeTarget) -> ProbeResult:
            async with gate:
                if check.type == "tcp":
                    return await _probe_tcp(target, check, timeout)
                return await _probe_http(client, target, check, headers)

        return list(await asyncio.gather(*(one(t) for t in targets)))


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
