"""`xplane agent` as a real process against the real API process, config seeded by `xplane sync`.

One scenario, in order, because every step builds on the previous one: register, heartbeat
with real CPU and probe figures, see a probe target die, ride out an API restart, drain,
stop on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.waiting import until
from tests.test_infra_support import seed_config
from xplane.netutil import free_port, wait_for_port
from xplane.store.db import make_engine, make_sessionmaker, transaction
from xplane.store.nodes import request_drain

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
XPLANE = str(ROOT / ".venv" / "bin" / "xplane")
BOOTSTRAP = "bootstrap-d41d8cd98f00"
ADMIN = "admin-9e107d9d372b"


# `xplane api` has no flag for the heartbeat interval yet (10 s default): this launcher does
# exactly what `xplane api` does, with a short interval so the scenario runs in seconds.
class ProbeTarget:
    """A local HTTP server the agent probes (its blackbox target)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.server.shutdown()
            self.server.server_close()


class Processes:
    """Every process the test starts, stopped by handle at the end whatever happens."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            proc = subprocess.Popen(args, env=env, stdout=out, stderr=out)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    yield procs
    procs.stop_all()


def _node(api: str) -> dict[str, Any] | None:
    try:
        nodes = httpx.get(f"{api}/nodes", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    except httpx.HTTPError:
        return None
    return nodes[0] if nodes else None


def _heartbeat_at(node: dict[str, Any] | None) -> datetime | None:
    if node is None or node["last_heartbeat_at"] is None:
        return None
    return datetime.fromisoformat(node["last_heartbeat_at"])


def test_agent_against_real_api(tmp_path: Path, processes: Processes) -> None:
    db_url = f"sqlite:///{tmp_path}/xplane.db"
    env = {**os.environ, "XPLANE_BOOTSTRAP_TOKEN": BOOTSTRAP, "XPLANE_ADMIN_TOKEN": ADMIN}
    api_port, health_port = free_port(), free_port()
    api, health = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{health_port}"
    target = ProbeTarget()
    token_file = tmp_path / "bootstrap-token"
    token_file.write_text(BOOTSTRAP + "\n")
    agent_log = tmp_path / "agent.log"
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("XPLANE_")}
    # The agent starts first: it must wait out a control plane that is not there yet.
    agent = processes.start(
        [
            XPLANE,
            "agent",
            "--server",
            api,
            "--service",
            "svc-plus",
            "--region",
            "jp",
            "--token-file",
            str(token_file),
            "--state-file",
            str(tmp_path / "agent-state.json"),
            "--probe",
            target.url,
            "--serve-health",
            f"127.0.0.1:{health_port}",
            "--max-backoff",
            "0.5",
            "--log-level",
            "debug",
        ],
        agent_env,
        agent_log,
    )
    seed_config(tmp_path, db_url, env)
    api_cmd = [
        str(Path(sys.executable).parent / "xplane"), "api", "--db", db_url,
        "--host", "127.0.0.1", "--port", str(api_port), "--heartbeat-interval", "0.3",
    ]  # fmt: skip
    api_proc = processes.start(api_cmd, env, tmp_path / "api.log")
    try:
        # Registers, then heartbeats with real CPU and probe figures.
        node = until(
            lambda: (n := _node(api)) and n["probes_total"] == 1 and n["probes_ok"] == 1 and n,
            "a heartbeat with a successful probe",
            timeout=60,
        )
        node_id = node["id"]
        assert node["address"] == "127.0.0.1" and node["port"] == health_port
        assert 0 <= node["cpu"] <= 1 and node["rtt_ms"] > 0 and node["reported_status"] == "up"
        assert httpx.get(f"{health}/").text.strip() == node_id
        assert httpx.get(f"{health}/healthz").text == "ok\n"

        # The probe target dies: the next heartbeats say so.
        target.stop()
        until(lambda: (n := _node(api)) and n["probes_ok"] == 0, "a failed probe reported")

        # The API goes away: the agent keeps running and retrying.
        retries = agent_log.read_text().count("control plane unavailable")
        api_proc.send_signal(signal.SIGTERM)
        api_proc.wait(timeout=15)
        down_since = datetime.now().astimezone()
        until(
            lambda: agent_log.read_text().count("control plane unavailable") > retries + 2,
            "retries while the API is down",
        )
        assert agent.poll() is None

        # Back on the same database: heartbeats resume, same node, same token.
        processes.start(api_cmd, env, tmp_path / "api.log")
        wait_for_port("127.0.0.1", api_port, timeout=60)
        until(
            lambda: (at := _heartbeat_at(_node(api))) and at > down_since,
            "a heartbeat after the restart",
            timeout=30,
        )
        assert _node(api)["id"] == node_id  # type: ignore[index]

        # Drain: the agent reports status drain and its health endpoint answers 503. An
        # operator's drain is a Workflow Update (no Temporal here: 503, see
        # test_api_actions); the store's drain request is what the agent hears of.
        refused = httpx.post(
            f"{api}/nodes/{node_id}/drain",
            headers={"Authorization": f"Bearer {ADMIN}"},
            json={"reason": "agent test"},
        )
        assert refused.status_code == 503, refused.text
        engine = make_engine(db_url)
        try:
            with transaction(make_sessionmaker(engine)) as session:
                request_drain(session, node_id, by="autoscaler", reason="agent test")
        finally:
            engine.dispose()
        until(lambda: (n := _node(api)) and n["reported_status"] == "drain", "status drain")
        answer = httpx.get(f"{health}/healthz")
        assert (answer.status_code, answer.text) == (503, "draining\n")

        # SIGTERM: a clean, prompt exit 0.
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=5) == 0
    finally:
        target.stop()

    lines = agent_log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"level", "msg", "node_id"} <= e.keys() for e in entries)
    assert [e["msg"] for e in entries].count("registered") == 1  # no re-registration needed
    assert entries[-1]["msg"] == "stopped" and entries[-1]["node_id"] == node_id
    assert BOOTSTRAP not in agent_log.read_text()
    assert (
        json.loads((tmp_path / "agent-state.json").read_text())["token"]
        not in agent_log.read_text()
    )
