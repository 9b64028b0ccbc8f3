"""The `local` node-pool module applied for real: terraform starts and stops `xplane agent`s.

One scenario against the real API: render jp with provider local, apply 2 nodes (two agents
register, each serving /healthz on its own loopback address), apply again (nothing
restarts), apply 1 (node jp-1's agent stops, jp-0 keeps its process), destroy (none left).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.waiting import until
from tests.test_infra_support import (
    XPLANE,
    ControlPlane,
    agent_pids,
    kill_agents,
    pid_running,
    start_control_plane,
    tf_env,
    unique_prefix,
)
from xplane.config.models import Region
from xplane.infra.render import render_region
from xplane.infra.skeleton import skeleton_files
from xplane.netutil import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[ControlPlane]:
    control = start_control_plane(tmp_path)
    try:
        yield control
    finally:
        control.stop()


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def _pool_env(tmp_path: Path, plane: ControlPlane, state_dir: Path) -> dict[str, str]:
    """What CI gives terraform: the API, the bootstrap token, where agents keep state."""
    return {
        **tf_env(tmp_path),
        "TF_VAR_api_url": plane.url,
        "TF_VAR_token_file": str(plane.token_file),
        "TF_VAR_state_dir": str(state_dir),
        "TF_VAR_agent_command": XPLANE,
    }


def test_local_module_starts_scales_and_stops_agents(tmp_path: Path, plane: ControlPlane) -> None:
    repo, state_dir = tmp_path / "infra-repo", tmp_path / "agents"
    prefix, health_port = unique_prefix(), free_port()
    extra = {"address_prefix": prefix, "health_port": health_port}
    region = Region(name="jp", provider="local")
    _write(repo, skeleton_files())
    env = _pool_env(tmp_path, plane, state_dir)
    root = repo / "infra/node-pool/jp"

    def terraform(*args: str) -> str:
        done = subprocess.run(
            ["terraform", f"-chdir={root}", *args], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def scale(count: int) -> str:
        _write(repo, render_region(region, service="svc-plus", node_count=count, extra_vars=extra))
        return terraform("apply", "-auto-approve", "-input=false", "-var-file=../jp.tfvars")

    try:
        _write(repo, render_region(region, service="svc-plus", node_count=0, extra_vars=extra))
        terraform("init", "-input=false")
        scale(2)
        pids = agent_pids(state_dir)
        assert set(pids) == {"jp-0", "jp-1"} and all(map(pid_running, pids.values()))
        nodes = until(lambda: len(n := plane.nodes()) == 2 and n, "2 nodes registered")
        assert {(n["id"], n["address"], n["port"]) for n in nodes} == {
            ("jp-0", f"{prefix}.10", health_port),
            ("jp-1", f"{prefix}.11", health_port),
        }
        assert {(n["service"], n["region"]) for n in nodes} == {("svc-plus", "jp")}
        # Each agent answers XPlane's active health check on its own address.
        for index in (0, 1):
            health = httpx.get(f"http://{prefix}.{10 + index}:{health_port}/healthz")
            assert (health.status_code, health.text) == (200, "ok\n")
        outputs = terraform("output", "-json", "node_addresses")
        assert outputs.strip() == f'["{prefix}.10","{prefix}.11"]'

        # Same count again: nothing is replaced, no agent restarts.
        assert "No changes." in scale(2)
        assert agent_pids(state_dir) == pids

        # Scale down: the last node's agent is stopped and its pid file removed.
        scale(1)
        assert not pid_running(pids["jp-1"])
        assert agent_pids(state_dir) == {"jp-0": pids["jp-0"]} and pid_running(pids["jp-0"])

        terraform("destroy", "-auto-approve", "-input=false", "-var-file=../jp.tfvars")
        assert agent_pids(state_dir) == {}
        assert not any(map(pid_running, pids.values()))
    finally:
        kill_agents(state_dir)


def test_an_agent_that_cannot_serve_health_fails_the_apply(
    tmp_path: Path, plane: ControlPlane
) -> None:
    """A busy health port kills the agent a second or so after start: the apply waits
    for it to serve /healthz, so the failure is terraform's, with the agent's words."""
    import socket

    repo, state_dir = tmp_path / "infra-repo", tmp_path / "agents"
    prefix, health_port = unique_prefix(), free_port()
    region = Region(name="jp", provider="local")
    _write(repo, skeleton_files())
    extra = {"address_prefix": prefix, "health_port": health_port}
    _write(repo, render_region(region, service="svc-plus", node_count=1, extra_vars=extra))
    env = _pool_env(tmp_path, plane, state_dir)
    root = repo / "infra/node-pool/jp"
    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        squatter.bind((f"{prefix}.10", health_port))
        squatter.listen()
        for args in (["init", "-input=false"], ["apply", "-auto-approve", "-input=false",
                                                 "-var-file=../jp.tfvars"]):  # fmt: skip
            done = subprocess.run(
                ["terraform", f"-chdir={root}", *args], env=env, capture_output=True, text=True
            )
        assert done.returncode != 0
        assert "node jp-0: agent exited at start" in done.stderr, done.stdout + done.stderr
        assert "address already in use" in done.stderr.lower() or "in use" in done.stderr
        assert agent_pids(state_dir) == {}  # nothing left that looks alive
        assert plane.nodes() == []
    finally:
        squatter.close()
        kill_agents(state_dir)
