"""The agent's I/O loop in-process against a scripted loopback control plane.

The real API is exercised in test_agent_integration.py; this stub makes the rare answers
(5xx, 401 mid-life, deregister) and local metric sources cheap to test.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from xplane.agent.config import AgentConfig
from xplane.agent.log import NodeIdHolder, agent_formatter
from xplane.agent.runner import Agent
from xplane.agent.state import AgentState, load_state, save_state
from xplane.netutil import free_port

BOOTSTRAP = "boot-secret-123"
NODE_TOKEN = "node-secret-456"

Reply = tuple[int, dict[str, Any]]


class Stub:
    """Records every request; ``script(path, body, auth)`` decides each answer."""

    def __init__(self, port: int, script: Callable[[str, dict[str, Any], str], Reply]) -> None:
        self.requests: list[tuple[str, dict[str, Any], str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization", "")
                stub.requests.append((self.path, body, auth))
                status, payload = script(self.path, body, auth)
                self._send(status, json.dumps(payload), "application/json")

            def do_GET(self) -> None:  # a workload's /metrics page
                stub.scrapes += 1
                n = stub.scrapes
                page = (
                    f'http_requests_total{{status="200"}} {95 * n}\n'
                    f'http_requests_total{{status="503"}} {5 * n}\n'
                )
                self._send(200, page, "text/plain")

            def _send(self, status: int, text: str, kind: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.scrapes = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stubs() -> Iterator[list[Stub]]:
    started: list[Stub] = []
    yield started
    for stub in started:
        stub.close()


def _agent(tmp_path: Path, port: int, **overrides: Any) -> tuple[Agent, io.StringIO]:
    token_file = tmp_path / "token"
    token_file.write_text(BOOTSTRAP + "\n")
    values: dict[str, Any] = {
        "server": f"http://127.0.0.1:{port}",
        "service": "svc-plus",
        "region": "jp",
        "token_file": token_file,
        "state_file": tmp_path / "state.json",
        "backoff": {"base": 0.02, "cap": 0.1},
    }
    config = AgentConfig.model_validate(values | overrides)
    out = io.StringIO()
    node = NodeIdHolder()
    handler = logging.StreamHandler(out)
    handler.setFormatter(agent_formatter(node))
    log = logging.getLogger(f"test-agent-{id(out)}")
    log.handlers[:] = [handler]
    log.setLevel(logging.DEBUG)
    log.propagate = False
    return Agent(config, log, node), out


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _register_ok(node_id: str = "jp-1") -> Reply:
    return 200, {
        "node_id": node_id,
        "token": NODE_TOKEN,
        "heartbeat_interval_seconds": 0.05,
        "state": "active",
    }


def _beat(action: str = "none", state: str = "active") -> Reply:
    return 200, {
        "state": state,
        "status": "up",
        "action": action,
        "heartbeat_interval_seconds": 0.05,
    }


async def test_lifecycle_outage_reregistration_drain_and_deregister(
    tmp_path: Path, stubs: list[Stub]
) -> None:
    port = free_port()
    beats: list[dict[str, Any]] = []
    phase = {"name": "flaky"}

    def script(path: str, body: dict[str, Any], auth: str) -> Reply:
        if path == "/nodes/register":
            assert auth == f"Bearer {BOOTSTRAP}"
            return _register_ok()
        assert auth == f"Bearer {NODE_TOKEN}"
        beats.append(body)
        name = phase["name"]
        if name == "flaky":  # one 503, then one 401: back off, then register again
            phase["name"] = "forget"
            return 503, {"error": "db down"}
        if name == "forget":
            phase["name"] = "up"
            return 401, {"error": "unknown token"}
        if name == "drain":
            return _beat("drain", "drain")
        if name == "undrained":  # an operator's undrain: no longer asked to drain
            return _beat("none", "idle")
        if name == "deregister":
            return _beat("deregister", "delete")
        return _beat()

    health_port = free_port()
    agent, out = _agent(tmp_path, port, serve_health=f"127.0.0.1:{health_port}")
    task = asyncio.create_task(agent.run())
    # The control plane is down: the agent keeps trying instead of exiting.
    await _until(lambda: out.getvalue().count('"control plane unavailable') >= 3)
    assert not task.done()
    stubs.append(Stub(port, script))

    await _until(lambda: len(beats) >= 4)
    assert stubs[0].paths()[:4] == [
        "/nodes/register",
        "/nodes/heartbeat",
        "/nodes/heartbeat",
        "/nodes/register",
    ]
    # The re-registration keeps the identity the control plane gave.
    assert stubs[0].requests[3][1]["node_id"] == "jp-1"
    assert stubs[0].requests[0][1]["port"] == health_port
    state = load_state(tmp_path / "state.json")
    assert state is not None
    assert (state.node_id, state.token) == ("jp-1", NODE_TOKEN)
    assert all(0 <= b["cpu"] <= 1 and b["status"] == "up" for b in beats)

    async with httpx.AsyncClient() as client:
        health = f"http://127.0.0.1:{health_port}"
        assert (await client.get(f"{health}/healthz")).text == "ok\n"
        assert (await client.get(f"{health}/")).text == "jp-1\n"
        phase["name"] = "drain"
        await _until(lambda: beats[-1]["status"] == "drain")
        reply = await client.get(f"{health}/healthz")
        assert (reply.status_code, reply.text) == (503, "draining\n")
        phase["name"] = "undrained"
        await _until(lambda: beats[-1]["status"] == "up")
        assert (await client.get(f"{health}/healthz")).text == "ok\n"

    phase["name"] = "deregister"
    await asyncio.wait_for(task, 5)  # run() returns: the process exits 0
    assert not (tmp_path / "state.json").exists()
    assert BOOTSTRAP not in out.getvalue() and NODE_TOKEN not in out.getvalue()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {"registered", "deregistered by the control plane; exiting"} <= {x["msg"] for x in lines}
    assert lines[-1]["node_id"] == "jp-1"


async def test_restart_reuses_persisted_token_and_reports_prometheus_rates(
    tmp_path: Path, stubs: list[Stub]
) -> None:
    port = free_port()
    beats: list[dict[str, Any]] = []

    def script(path: str, body: dict[str, Any], auth: str) -> Reply:
        if path == "/nodes/register":
            return _register_ok("jp-7")
        beats.append(body)
        return _beat()

    stubs.append(Stub(port, script))
    metrics = f"http://127.0.0.1:{port}/metrics"
    first, _ = _agent(tmp_path, port, metrics_url=metrics)
    task = asyncio.create_task(first.run())
    await _until(lambda: len(beats) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Each scrape adds 100 requests, 5 of them 5xx: 5 % errors once a rate exists.
    assert beats[0]["error_rate"] == 0 and "qps" not in beats[0]
    assert beats[-1]["error_rate"] == pytest.approx(0.05)
    assert beats[-1]["qps"] > 0

    registrations = stubs[0].paths().count("/nodes/register")
    second, _ = _agent(tmp_path, port)
    task = asyncio.create_task(second.run())
    await _until(lambda: len(beats) >= 6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stubs[0].paths().count("/nodes/register") == registrations  # token reused
    assert beats[-1]["node_id"] == "jp-7"


@pytest.mark.parametrize("other", [{"region": "sg"}, {"service": "api"}])
async def test_a_state_file_for_another_service_or_region_is_ignored(
    tmp_path: Path, stubs: list[Stub], other: dict[str, str]
) -> None:
    """The agent never presents a node id (or token) saved for another service or region."""
    port = free_port()
    foreign = AgentState(
        node_id="sg-9",
        token="foreign-token",
        server=f"http://127.0.0.1:{port}",
        service="svc-plus",
        region="jp",
        address="127.0.0.1",
    ).model_copy(update=other)
    save_state(tmp_path / "state.json", foreign)
    beats: list[dict[str, Any]] = []

    def script(path: str, body: dict[str, Any], auth: str) -> Reply:
        if path == "/nodes/register":
            return _register_ok("jp-new")
        beats.append(body)
        return _beat()

    stubs.append(Stub(port, script))
    agent, out = _agent(tmp_path, port, address="127.0.0.1")
    task = asyncio.create_task(agent.run())
    await _until(lambda: len(beats) >= 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    path, body, auth = stubs[0].requests[0]
    assert (path, body.get("node_id"), auth) == ("/nodes/register", None, f"Bearer {BOOTSTRAP}")
    assert all("foreign-token" not in a and "sg-9" not in str(b) for _, b, a in stubs[0].requests)
    assert "state file is for another service or region" in out.getvalue()
    state = load_state(tmp_path / "state.json")
    assert state is not None and (state.node_id, state.region) == ("jp-new", "jp")


async def test_metrics_file_and_rejected_registration_keep_retrying(
    tmp_path: Path, stubs: list[Stub]
) -> None:
    port = free_port()
    beats: list[dict[str, Any]] = []
    registrations = {"n": 0}

    def script(path: str, body: dict[str, Any], auth: str) -> Reply:
        if path == "/nodes/register":
            registrations["n"] += 1
            if registrations["n"] < 3:  # config not synced yet
                return 422, {
                    "error": "unknown region",
                    "detail": [{"field": "region", "message": "region 'jp' is not configured"}],
                }
            return _register_ok()
        beats.append(body)
        return _beat()

    stubs.append(Stub(port, script))
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text('{"error_rate": 0.25, "qps": 40}')
    agent, out = _agent(tmp_path, port, metrics_file=metrics_file, state_file=None)
    task = asyncio.create_task(agent.run())
    await _until(lambda: len(beats) >= 1)
    metrics_file.write_text('{"error_rate": 7}')  # invalid: reported as unknown, not a crash
    await _until(lambda: len(beats) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (beats[0]["error_rate"], beats[0]["qps"]) == (0.25, 40)
    assert beats[-1]["error_rate"] == 0 and "qps" not in beats[-1]
    log = out.getvalue()
    assert "region: region 'jp' is not configured" in log
    assert (
        f"metrics file {metrics_file}: error_rate: Input should be less than or equal to 1" in log
    )


async def test_probes_report_success_failure_and_rtt(stubs: list[Stub]) -> None:
    from xplane.agent.probes import run_probes

    port = free_port()
    stubs.append(Stub(port, lambda *_: (500, {})))
    closed = free_port()
    async with httpx.AsyncClient() as client:
        results = await run_probes(
            client,
            [
                f"http://127.0.0.1:{port}/metrics",
                f"tcp://127.0.0.1:{port}",
                f"tcp://127.0.0.1:{closed}",
                f"http://127.0.0.1:{closed}/",
            ],
            timeout_s=2,
        )
    assert [r.ok for r in results] == [True, True, False, False]
    assert all(r.rtt_ms > 0 for r in results[:2])


async def test_heartbeat_retries_after_an_outage_wait_no_longer_than_one_interval(
    tmp_path: Path, stubs: list[Stub]
) -> None:
    """A long control-plane outage must not leave the agent backing off past its recovery:
    each retry waits at most one heartbeat interval (the backoff's cap is 30 s here)."""
    port = free_port()
    failing = {"left": 8}

    def script(path: str, body: dict[str, Any], auth: str) -> Reply:
        if path == "/nodes/register":
            return 200, {**_register_ok()[1], "heartbeat_interval_seconds": 0.2}
        if failing["left"] > 0:
            failing["left"] -= 1
            return 503, {"error": "database unavailable"}
        return 200, {**_beat()[1], "heartbeat_interval_seconds": 0.2}

    stubs.append(Stub(port, script))
    # Uncapped, 8 failures would wait 0.5 + 1 + 2 + ... + 30 s (jitter at most halves it).
    agent, _ = _agent(tmp_path, port, backoff={"base": 0.5, "cap": 30.0, "jitter": 0.0})
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: failing["left"] == 0 and len(stubs[0].requests) >= 10, timeout=5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
