"""End to end: the README's first command (``xplane up``) on real parts, as a subprocess.

Temporal dev server, API, worker, PowerDNS, the local CI runner (git hook ->
terraform) and the local node pool (real ``xplane agent`` processes). The test
waits for the example service to resolve through PowerDNS in proportion to its
weights, kills an agent, sees its address leave DNS and a replacement become
active, scrapes ``/metrics``, then stops everything with Ctrl-C and checks that
no process is left. Each step's time is recorded in the test output.

The only difference from a new user's run: free ports instead of the defaults
(so suites never collide), hence a copy of the example config whose PowerDNS
API URL names the chosen port.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.resolver
import git
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from xplane.dns.pdns_server import free_udp_tcp_port, pdns_available
from xplane.netutil import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not pdns_available(), reason="pdns_server not installed"),
    pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform not installed"),
]
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DOMAIN = "api.svc.plus"


def _wait(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is dead for this purpose
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        stat = Path(f"/proc/{pid}/stat")
        return stat.exists() and stat.read_text().split()[2] != "Z"


class Stack:
    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        self.pdns_api = free_port()
        self.dns_port = free_udp_tcp_port()
        self.config = tmp / "config"
        shutil.copytree(ROOT / "example" / "gitops-config", self.config)
        gtm = self.config / "gtm" / "svc-plus.yaml"
        gtm.write_text(gtm.read_text().replace("127.0.0.1:8081", f"127.0.0.1:{self.pdns_api}"))
        repo = git.Repo.init(self.config, initial_branch="main")
        repo.git.add(A=True)
        repo.index.commit("config")
        self.log = (tmp / "up.log").open("w+")
        self.proc = subprocess.Popen(
            [str(BIN / "xplane"), "up", "--data-dir", str(self.data), "--repo", str(self.config),
             "--temporal-port", "0", "--ui-port", "0", "--api-port", "0",
             "--pdns-api-port", str(self.pdns_api), "--dns-port", str(self.dns_port)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp,
        )  # fmt: skip
        self.times: dict[str, float] = {}
        self.t0 = time.monotonic()

    def mark(self, step: str) -> None:
        self.times[step] = round(time.monotonic() - self.t0, 1)
        print(f"e2e: {step} at +{self.times[step]}s")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def info(self) -> dict[str, Any]:
        path = self.data / "up.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def answers(self) -> list[str]:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], self.dns_port, 1
        try:
            return sorted(str(r) for r in resolver.resolve(DOMAIN, "A"))
        except Exception:
            return []

    def published_weights(self) -> dict[str, int]:
        from xplane.dns.powerdns import parse_lua

        key = (self.data / "secrets" / "pdns-api.key").read_text().strip()
        zone = httpx.get(
            f"http://127.0.0.1:{self.pdns_api}/api/v1/servers/localhost/zones/svc.plus.",
            headers={"X-API-Key": key},
        ).json()
        for rrset in zone.get("rrsets", []):
            if rrset["name"] == f"{DOMAIN}." and rrset["type"] == "LUA":
                parsed = parse_lua(rrset["records"][0]["content"])
                return parsed[1] if parsed else {}
        return {}

    def status(self) -> dict[str, Any]:
        done = subprocess.run(
            [str(BIN / "xplane"), "status", "--data-dir", str(self.data), "-o", "json"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return json.loads(done.stdout) if done.returncode == 0 else {}

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                return -9
        return self.proc.returncode


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = Stack(tmp_path)
    try:
        yield s
    finally:
        s.stop()
        for pid_file in (s.data / "pool").glob("*.pid"):  # never leave agents behind
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        print(s.output()[-3000:])


def test_up_resolves_fails_over_replaces_and_stops_clean(stack: Stack) -> None:
    _wait("XPlane is up", lambda: "XPlane is up" in stack.output(), 120)
    stack.mark("up")
    info = stack.info()
    env = {**os.environ, "TEMPORAL_ADDRESS": info["temporal_address"]}
    listed = subprocess.run(
        [str(BIN / "temporal"), "workflow", "list", "--address", info["temporal_address"]],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert "gitops-sync" in listed.stdout and "world-state" in listed.stdout

    # The example service resolves to live local agents, in proportion to the weights.
    _wait("DNS answers", stack.answers, 120)
    stack.mark("first DNS answer")
    _wait("two regions in DNS", lambda: len(stack.published_weights()) >= 2, 120)
    stack.mark("two regions published")
    weights = stack.published_weights()
    counts: Counter[str] = Counter()
    for _ in range(600):
        for address in stack.answers():
            counts[address] += 1
    total_w, total_n = sum(weights.values()), sum(counts.values())
    weights = stack.published_weights()  # still ramping? compare with what was published
    for address, weight in weights.items():
        assert abs(counts[address] / total_n - weight / total_w) < 0.08, (counts, weights)
    by_region = {n["address"]: n for n in stack.status()["nodes"]}
    assert set(weights) <= set(by_region)

    # /metrics, scraped from the running API.
    text = httpx.get(f"{info['api_url']}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    beats = sum(s.value for s in families["xplane_heartbeats_ingested"].samples)
    assert beats >= 4
    active = [s for s in families["xplane_nodes"].samples if s.labels.get("state") == "active"]
    assert sum(s.value for s in active) >= 2
    region_weights = {
        s.labels["region"]: s.value for s in families["xplane_gtm_effective_weight"].samples
    }
    assert region_weights["jp"] > 0 and region_weights["sg"] == 0
    applies = [s for s in families["xplane_dns_applies"].samples if s.labels.get("result") == "ok"]
    assert sum(s.value for s in applies) >= 1

    # Kill jp's agent: its address leaves DNS, the autoscaler replaces it.
    jp = next(n for n in stack.status()["nodes"] if n["region"] == "jp" and n["state"] == "active")
    killed = subprocess.run(
        [str(BIN / "xplane"), "demo", "fail-node", "--node", jp["id"],
         "--data-dir", str(stack.data)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert killed.returncode == 0, killed.stderr
    stack.mark(f"killed {jp['id']}")
    t_kill = time.monotonic()
    _wait("the dead node to leave DNS", lambda: jp["address"] not in stack.published_weights(), 60)
    failover = time.monotonic() - t_kill
    stack.mark(f"{jp['address']} gone from DNS ({failover:.1f}s after the kill)")
    assert failover < 6 + 20  # heartbeat timeout + a few scan/apply rounds

    def replacement() -> str | None:
        for node in stack.status().get("nodes", []):
            if node["region"] == "jp" and node["id"] != jp["id"] and node["state"] == "active":
                return str(node["address"])
        return None

    new_address = _wait("a replacement jp node to become active", replacement, 180, every=2)
    stack.mark(f"replacement {new_address} active")
    _wait("the replacement in DNS", lambda: new_address in stack.published_weights(), 120)
    stack.mark("replacement in DNS")
    commits = [str(c.message).splitlines()[0] for c in git.Repo(info["infra_repo"]).iter_commits()]
    assert "feat(xplane-autoscaler): scale jp pool to 2 nodes" in commits

    # Ctrl-C stops everything it started.
    pids = [int(p.read_text()) for p in (stack.data / "pool").glob("*.pid")]
    pids += [info["temporal_pid"], info["pid"]]
    assert stack.stop() == 0
    stack.mark("stopped")
    _wait("every process gone", lambda: not any(_alive(p) for p in pids), 20)
    assert "stopped" in stack.output()
    assert not stack.answers()  # PowerDNS is gone too
    print("e2e timings:", json.dumps(stack.times))
