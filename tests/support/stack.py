"""A running ``xplane up`` as a subprocess, on free ports (shared by the e2e test and bench/).

The only difference from a new user's run: free ports instead of the defaults,
the nodes' health port included (so suites never collide), hence a copy of the
example config whose PowerDNS API URL names the chosen port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.resolver
import git
import httpx

from tests.support.waiting import until
from xplane.dns.pdns_server import free_udp_tcp_port
from xplane.netutil import free_port
from xplane.up import stop_pool_agents

ROOT = Path(__file__).resolve().parent.parent.parent
BIN = Path(sys.executable).parent
DOMAIN = "api.svc.plus"


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    return until(check, what, timeout, every)


def alive(pid: int) -> bool:
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
    def __init__(self, tmp: Path, pin_cpu: float | None = None) -> None:
        """``pin_cpu``: the local agents report this CPU instead of the machine's, so a
        busy machine cannot trigger scale-ups the test does not expect."""
        self.data = tmp / "data"
        self.pdns_api = free_port()
        self.dns_port = free_udp_tcp_port()
        self.config = tmp / "config"
        shutil.copytree(ROOT / "example" / "gitops-config", self.config)
        gtm = self.config / "gtm" / "svc-plus.yaml"
        gtm.write_text(gtm.read_text().replace("127.0.0.1:8081", f"127.0.0.1:{self.pdns_api}"))
        if pin_cpu is not None:
            from xplane.config.loader import load_config

            pool = self.data / "pool"  # `xplane up` keeps the files it finds there
            pool.mkdir(parents=True)
            for region in load_config(self.config).regions:
                (pool / f"{region}.metrics.json").write_text(json.dumps({"cpu": pin_cpu}))
        repo = git.Repo.init(self.config, initial_branch="main")
        repo.git.add(A=True)
        repo.index.commit("config")
        self.log = (tmp / "up.log").open("w+")
        self.proc = subprocess.Popen(
            [str(BIN / "xplane"), "up", "--data-dir", str(self.data), "--repo", str(self.config),
             "--temporal-port", "0", "--ui-port", "0", "--api-port", "0",
             "--pdns-api-port", str(self.pdns_api), "--dns-port", str(self.dns_port),
             "--node-health-port", "0"],
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
        assert done.returncode == 0, f"xplane status failed ({done.returncode}): {done.stderr}"
        return json.loads(done.stdout)

    def events(self, kind: str = "", region: str = "") -> list[dict[str, Any]]:
        """``xplane events`` (oldest first), filtered by kind prefix and region if given."""
        argv = [str(BIN / "xplane"), "events", "--db", f"sqlite:///{self.data / 'xplane.db'}",
                "--limit", "500", "-o", "json"]  # fmt: skip
        argv += ["--kind", kind] if kind else []
        argv += ["--region", region] if region else []
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"xplane events failed ({done.returncode}): {done.stderr}"
        return list(json.loads(done.stdout))

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

    def diagnostics(self) -> str:
        """What a failed run needs to be explained from CI's output alone."""
        parts: list[str] = []

        def run(title: str, argv: list[str]) -> None:
            try:
                done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
                parts.append(f"--- {title}\n{done.stdout}{done.stderr}")
            except (OSError, subprocess.TimeoutExpired) as exc:
                parts.append(f"--- {title}: {exc}")

        try:
            lines = [
                f"{e['at'][11:23]} {e['kind']} {e['region'] or '-'} {e['node_id'] or '-'} "
                f"{e['message']}"
                for e in self.events()
            ]
            parts.append("--- events\n" + "\n".join(lines))
        except (AssertionError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
            parts.append(f"--- events: {exc}")
        address = self.info().get("temporal_address")
        if address:
            for wf in ("autoscale-svc-plus-jp", "region-jp"):
                run(f"{wf} status", [str(BIN / "temporal"), "workflow", "query", "--address",
                                     address, "--workflow-id", wf, "--name", "status"])  # fmt: skip
        runner = self.data / "runner" / "runner.log"
        if runner.exists():
            lines = [ln for ln in runner.read_text().splitlines() if ln.startswith("20")]
            parts.append("--- runner.log (runner lines)\n" + "\n".join(lines[-60:]))
        for log in sorted((self.data / "pool").glob("*.log")):
            parts.append(f"--- {log.name} (tail)\n" + "\n".join(log.read_text().splitlines()[-15:]))
        xlog = self.data / "xplane.log"
        if xlog.exists():
            bad = [ln for ln in xlog.read_text().splitlines() if '"level": "INFO"' not in ln]
            parts.append("--- xplane.log (above INFO)\n" + "\n".join(bad[-80:]))
        return "\n".join(parts)


def kill_leftover_agents(stack: Stack) -> None:
    """Teardown: stop the agents a failed run may have left (by their PID files)."""
    stop_pool_agents(stack.data / "pool")
