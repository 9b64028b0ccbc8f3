"""Helpers of the infra tests: the real API seeded by `xplane sync`, agents cleanup, capture.

No tests here; imported by tests/test_infra_*.py and tests/test_terraform_*.py.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import git
import httpx

from xplane.netutil import free_port, wait_for_port
from xplane.up import stop_pool_agents

ROOT = Path(__file__).resolve().parents[1]
XPLANE = str(ROOT / ".venv" / "bin" / "xplane")
BOOTSTRAP = "bootstrap-3f2a9c1d77e0"
ADMIN = "admin-51b0e8a4c2d9"
WEBHOOK_SECRET = "whsec-7c4e1f09a2b3"


def tf_env(tmp_path: Path) -> dict[str, str]:
    """Environment for terraform: no ~/.terraformrc warning, automation mode."""
    rc = tmp_path / "empty.tfrc"
    rc.touch()
    return {**os.environ, "TF_CLI_CONFIG_FILE": str(rc), "TF_IN_AUTOMATION": "1"}


def unique_prefix() -> str:
    """A loopback /24 unlikely to be used by another test run at the same time."""
    return f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"


def pid_running(pid: int) -> bool:
    """Alive and not a zombie (this machine's init reaps orphans lazily)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def agent_pids(state_dir: Path) -> dict[str, int]:
    """node id -> pid of every pid file the local module wrote ("<pid> <start time>")."""
    return {p.stem: int(p.read_text().split()[0]) for p in state_dir.glob("*.pid")}


def kill_agents(state_dir: Path) -> None:
    """Teardown: stop every agent still named by a pid file (by PID, never by name)."""
    stop_pool_agents(state_dir)


@dataclass
class ControlPlane:
    """`xplane api` on a free port, its config seeded from example/gitops-config."""

    url: str
    db_url: str
    token_file: Path
    proc: subprocess.Popen[bytes]

    def nodes(self) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/nodes", headers={"Authorization": f"Bearer {ADMIN}"})
        answer.raise_for_status()
        return list(answer.json())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _config_repo(tmp_path: Path) -> Path:
    path = tmp_path / "config-repo"
    shutil.copytree(ROOT / "example" / "gitops-config", path)
    repo = git.Repo.init(path, initial_branch="main")
    repo.git.add(A=True)
    repo.index.commit("config", author=git.Actor("t", "t@example.com"))
    return path


def seed_config(tmp_path: Path, db_url: str, env: dict[str, str]) -> None:
    """`xplane sync --once` of a git repo made from example/gitops-config into ``db_url``."""
    seeded = subprocess.run(
        [
            XPLANE,
            "sync",
            "--once",
            "--repo",
            str(_config_repo(tmp_path)),
            "--db",
            db_url,
            "--workdir",
            str(tmp_path / "gitops"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert seeded.returncode == 0, seeded.stdout + seeded.stderr


def start_control_plane(tmp_path: Path) -> ControlPlane:
    """`xplane api` (registration, heartbeats, webhooks) over a seeded SQLite store."""
    db_url = f"sqlite:///{tmp_path}/xplane.db"
    env = {
        **os.environ,
        "XPLANE_BOOTSTRAP_TOKEN": BOOTSTRAP,
        "XPLANE_ADMIN_TOKEN": ADMIN,
        "XPLANE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    seed_config(tmp_path, db_url, env)
    port = free_port()
    with (tmp_path / "api.log").open("ab") as log:
        api = [XPLANE, "api", "--db", db_url, "--host", "127.0.0.1", "--port", str(port)]
        proc = subprocess.Popen(
            api,
            env=env,
            stdout=log,
            stderr=log,
        )
    token_file = tmp_path / "bootstrap-token"
    token_file.write_text(BOOTSTRAP + "\n")
    plane = ControlPlane(f"http://127.0.0.1:{port}", db_url, token_file, proc)
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
    except TimeoutError:
        plane.stop()
        raise
    return plane


@dataclass
class Captured:
    headers: dict[str, str]
    body: bytes


@dataclass
class CaptureServer:
    """A loopback HTTP server that records every POST and answers ``status``."""

    status: int = 202
    requests: list[Captured] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/terraform"

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in self.requests]


@contextmanager
def capture_server(status: int = 202) -> Iterator[CaptureServer]:
    capture = CaptureServer(status=status)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            capture.requests.append(Captured(dict(self.headers.items()), body))
            reply = b'{"status": "accepted"}'
            self.send_response(capture.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    capture.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=capture.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield capture
    finally:
        capture.server.shutdown()
        capture.server.server_close()
