"""Active health checks against real sockets on loopback, and the hysteresis state machine."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Generator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from xplane.config.models import HealthCheck
from xplane.gtm.health_checks import (
    CheckState,
    HealthTracker,
    ProbeResult,
    ProbeTarget,
    next_health,
    probe_port,
    probe_url,
)
from xplane.netutil import free_port
from xplane.probes.health import probe_all


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: int = socket.AF_INET) -> None:
        self.address_family = family
        super().__init__(address, _Handler)
        self.healthz_status = 200
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        srv = self.server
        if self.path == "/slow":  # holds the request so concurrent probes overlap
            with srv.lock:
                srv.in_flight += 1
                srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
            time.sleep(0.15)
            with srv.lock:
                srv.in_flight -= 1
            status = 200
        elif self.path == "/healthz":
            status = srv.healthz_status
        else:
            status = 404
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(host: str, family: int = socket.AF_INET) -> Generator[_Server, None, None]:
    server = _Server((host, 0), family)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def http_server() -> Iterator[_Server]:
    yield from _serve("127.0.0.1")


def _port(server: _Server) -> int:
    return int(server.server_address[1])


def _check(**fields: Any) -> HealthCheck:
    return HealthCheck.model_validate({"interval": "5s", "timeout": "2s"} | fields)


# -------------------------------------------------------------------- probes
async def test_http_probe_follows_the_healthz_status(http_server: _Server) -> None:
    check = _check(port=_port(http_server))
    targets = [ProbeTarget(node_id="n1", address="127.0.0.1")]
    [ok] = await probe_all(targets, check)
    assert ok.ok and ok.status_code == 200 and ok.port == _port(http_server)

    http_server.healthz_status = 500
    [bad] = await probe_all(targets, check)
    assert not bad.ok and bad.status_code == 500 and "500" in (bad.error or "")


async def test_http_probe_uses_the_node_port_and_expected_status(http_server: _Server) -> None:
    http_server.healthz_status = 204
    targets = [ProbeTarget(node_id="n1", address="127.0.0.1", port=_port(http_server))]
    [ok] = await probe_all(targets, _check())  # no check port: the node's port
    assert ok.ok
    [strict] = await probe_all(targets, _check(expected_status=[200]))
    assert not strict.ok and strict.status_code == 204


async def test_http_probe_refused_and_timeout() -> None:
    closed = free_port()
    [refused] = await probe_all(
        [ProbeTarget(node_id="n1", address="127.0.0.1", port=closed)], _check()
    )
    assert not refused.ok and refused.status_code is None and refused.error

    # A listener that accepts but never answers: the probe times out, it doesn't hang.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        target = ProbeTarget(node_id="n2", address="127.0.0.1", port=silent.getsockname()[1])
        [hung] = await probe_all([target], _check(timeout="300ms", interval="1s"))
    assert not hung.ok and "timed out" in (hung.error or "")


async def test_tcp_probe_open_and_closed_port(http_server: _Server) -> None:
    closed = free_port()
    targets = [
        ProbeTarget(node_id="open", address="127.0.0.1", port=_port(http_server)),
        ProbeTarget(node_id="closed", address="127.0.0.1", port=closed),
    ]
    results = await probe_all(targets, _check(type="tcp"))
    assert [(r.node_id, r.ok) for r in results] == [("open", True), ("closed", False)]
    assert results[1].error


async def test_ipv6_address_is_bracketed() -> None:
    try:
        servers = _serve("::1", socket.AF_INET6)
        server = next(servers)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        check = _check(port=_port(server))
        [result] = await probe_all([ProbeTarget(node_id="v6", address="::1")], check)
        assert result.ok, result.error
    finally:
        servers.close()


async def test_concurrency_bound_is_respected(http_server: _Server) -> None:
    check = _check(path="/slow", port=_port(http_server))
    targets = [ProbeTarget(node_id=f"n{i}", address="127.0.0.1") for i in range(12)]
    results = await probe_all(targets, check, concurrency=3)
    assert all(r.ok for r in results)
    assert [r.node_id for r in results] == [t.node_id for t in targets]  # input order
    assert http_server.max_in_flight == 3  # parallel, but never more than the bound


async def test_flip_healthz_and_thresholds_over_real_rounds(http_server: _Server) -> None:
    check = _check(port=_port(http_server), healthy_threshold=2, unhealthy_threshold=3)
    tracker = HealthTracker(check)
    targets = [ProbeTarget(node_id="n1", address="127.0.0.1")]

    async def round_() -> bool | None:
        tracker.observe_all(await probe_all(targets, check))
        return tracker.states["n1"].healthy

    assert await round_() is None  # unknown until healthy_threshold successes
    assert await round_() is True
    http_server.healthz_status = 500
    assert await round_() is True  # a single failure changes nothing
    assert await round_() is True
    assert await round_() is False  # the 3rd consecutive failure flips it
    http_server.healthz_status = 200
    assert await round_() is False
    assert await round_() is True  # 2 successes bring it back


# ------------------------------------------------------------- state machine
def test_next_health_hysteresis() -> None:
    state = None
    verdicts = []
    for ok in [False, False, True, False, False, False, True, True, False, True, True]:
        state = next_health(state, ok, healthy_threshold=2, unhealthy_threshold=3)
        verdicts.append(state.healthy)
    assert verdicts == [None, None, None, None, None, False, False, True, True, True, True]


def test_next_health_counters_and_threshold_one() -> None:
    state = next_health(CheckState(healthy=True, consecutive_ok=5), False, 1, 1)
    assert state == CheckState(healthy=False, consecutive_ok=0, consecutive_fail=1)
    assert next_health(state, True, 1, 1).healthy is True


def test_tracker_reports_changes_and_forgets() -> None:
    def result(node_id: str, ok: bool) -> ProbeResult:
        return ProbeResult(node_id=node_id, address="x", port=80, ok=ok, latency_ms=1)

    tracker = HealthTracker(_check(healthy_threshold=1, unhealthy_threshold=2))
    assert tracker.observe_all([result("a", True), result("b", False)]) == {"a": True}
    assert tracker.observe_all([result("a", True), result("b", False)]) == {"b": False}
    tracker.forget(["a"])
    assert set(tracker.states) == {"a"}


def test_port_and_url() -> None:
    target = ProbeTarget(node_id="n", address="2001:db8::1", port=8080)
    assert probe_port(target, _check()) == 8080
    assert probe_port(target, _check(port=9000)) == 9000
    assert probe_port(ProbeTarget(node_id="n", address="h"), _check()) == 80
    assert probe_url("2001:db8::1", 8080, "/healthz") == "http://[2001:db8::1]:8080/healthz"
    assert probe_url("[::1]", 80, "ready") == "http://[::1]:80/ready"
    assert probe_url("10.0.0.1", 80, "/healthz") == "http://10.0.0.1:80/healthz"
    assert probe_url("node-1.example", 80, "/") == "http://node-1.example:80/"
