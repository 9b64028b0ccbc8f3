"""The control plane for a fleet run: real processes, sized by parameters.

One ``xplane api`` and one ``xplane worker`` (separate processes, so each one's CPU
and memory is its own), the Temporal dev server and PowerDNS, on SQLite (a file in
the work directory) or PostgreSQL (a database of its own, dropped at the end).
The config has R regions of one service (``web``), each with its own bootstrap
token (``XPLANE_BOOTSTRAP_TOKEN_<REGION>``), an active HTTP health check on the
fleet's shared port, and an autoscale policy whose pools are the fleet's sizes
and committed up front: any later infra commit is XPlane's own replacement.

The nodes themselves are :class:`bench.fleet.Fleet` (one process, many sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
import httpx
import sqlalchemy as sa

from tests.support.fault_stack import (
    BIN,
    HOOK_SECRET,
    PDNS_KEY,
    Proc,
    _stop,
    create_database,
    drop_database,
    seed_repos_and_store,
)
from xplane.procs import spawn

SERVICE = "web"
DOMAIN = "web.svc.plus"
ZONE = "svc.plus"
ADMIN = "scale-admin"


def region_token(region: str) -> str:
    return f"boot-{region}"


@dataclass(frozen=True)
class ScaleSettings:
    """What sizes and paces a run (``make bench`` uses the defaults of bench/scale.py)."""

    regions: dict[str, int]
    backend: str = "sqlite"  # sqlite | postgresql
    interval_s: float = 10.0  # heartbeat interval
    missed_beats: int = 3  # heartbeat timeout = missed_beats x interval
    gtm_interval_s: float = 5.0
    check_interval_s: float = 10.0  # active health check
    world_state_interval_s: float = 1.0
    autoscale_interval_s: float = 30.0
    down_grace_s: float = 30.0  # down this long -> given up and replaced

    @property
    def timeout_s(self) -> float:
        return self.missed_beats * self.interval_s


def config_files(s: ScaleSettings, pdns_api: int, health_port: int) -> dict[str, str]:
    names = sorted(s.regions)
    files = {
        f"regions/{r}.yaml": (
            f"provider: aws\nlocation: loc-{r}\ninstance_type: t3.small\n"
            f"min_nodes: {n}\nmax_nodes: {2 * n + 2}\n"
        )
        for r, n in s.regions.items()
    }
    gtm_regions = "".join(
        f"  - name: {r}\n    weight: 100\n    min_ready_nodes: 1\n    fallback: true\n"
        for r in names
    )
    autoscale_regions = "".join(
        f"  {r}: {{min_nodes: {n}, max_nodes: {2 * n + 2}, scale_up_cpu: 0.95, "
        f"scale_down_cpu: 0.01}}\n"
        for r, n in s.regions.items()
    )
    check_timeout = min(2.0, s.check_interval_s / 2)
    files["gtm/web.yaml"] = f"""service: {SERVICE}
domain: {DOMAIN}
regions:
{gtm_regions}health:
  type: http
  path: /healthz
  port: {health_port}
  interval: {s.check_interval_s:g}s
  timeout: {int(check_timeout * 1000)}ms
  healthy_threshold: 1
  unhealthy_threshold: 2
interval: {s.gtm_interval_s:g}s
slow_start: 0s
dns:
  provider: powerdns
  api_url: http://127.0.0.1:{pdns_api}
  api_key_env: PDNS_API_KEY
  zone: {ZONE}
  ttl: 1
  max_change_fraction: 1.0
"""
    files["autoscale/web.yaml"] = f"""service: {SERVICE}
global: {{cpu_window: 60s}}
regions:
{autoscale_regions}cooldown: {{scale_up: 600s, scale_down: 3600s}}
jitter: 0s
interval: {s.autoscale_interval_s:g}s
terraform_timeout: 600s
node_ready_timeout: 600s
"""
    return files


class ScaleStack:
    """:meth:`start`, then :meth:`stop` (always: it stops every process and drops the
    PostgreSQL database)."""

    def __init__(self, work: Path, settings: ScaleSettings) -> None:
        from xplane.dns.pdns_server import free_udp_tcp_port
        from xplane.netutil import free_port

        self.work = work
        self.s = settings
        self.pdns_api = free_port()
        self.dns_port = free_udp_tcp_port()
        self.health_port = free_port("0.0.0.0")
        self.api_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.db_url = ""
        self.sqlite_path = work / "xplane.db"
        self.api: Proc | None = None
        self.worker: Proc | None = None
        self.temporal: Any = None
        self.pdns: Any = None
        self.config_repo = work / "config"
        self.infra_repo = work / "infra.git"

    def env(self) -> dict[str, str]:
        tokens = {f"XPLANE_BOOTSTRAP_TOKEN_{r.upper()}": region_token(r) for r in self.s.regions}
        return {
            **os.environ,
            **tokens,
            "XPLANE_DB_URL": self.db_url,
            "XPLANE_TEMPORAL_ADDRESS": self.temporal.address,
            "XPLANE_HEARTBEAT_INTERVAL": f"{self.s.interval_s:g}s",
            "XPLANE_HEARTBEAT_TIMEOUT": f"{self.s.timeout_s:g}s",
            "XPLANE_ADMIN_TOKEN": ADMIN,
            "XPLANE_WEBHOOK_SECRET": HOOK_SECRET,
            "PDNS_API_KEY": PDNS_KEY,
            "XPLANE_CONFIG_REPO": str(self.config_repo),
            "XPLANE_INFRA_REPO": str(self.infra_repo),
            "XPLANE_SYNC_INTERVAL": "30s",
            "XPLANE_WORLD_STATE_INTERVAL": f"{self.s.world_state_interval_s:g}s",
            "XPLANE_NODE_WARMUP": "1",
            "XPLANE_NODE_DOWN_GRACE": f"{self.s.down_grace_s:g}",
            "XPLANE_NODE_DRAIN_TIMEOUT": "2",
        }

    def _seed(self) -> None:
        files = config_files(self.s, self.pdns_api, self.health_port)
        seed_repos_and_store(
            files, self.s.regions, self.work, self.config_repo, self.infra_repo, self.db_url
        )

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        # Dies with this process (parent-death signal), even when a bench is killed.
        # Call from the main thread: that signal follows the thread that forked.
        log = (self.work / f"{name}.log").open("ab")
        return spawn(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.work)

    def start_platform(self) -> None:
        """Store, PowerDNS, Temporal and the API: enough for the fleet to register."""
        from xplane.dns.pdns_server import PdnsServer
        from xplane.temporal.dev import TemporalDevServer

        if self.s.backend == "postgresql":
            self.db_url = create_database()
        else:
            self.db_url = f"sqlite:///{self.sqlite_path}"
        self._seed()
        self.pdns = PdnsServer(
            self.work / "pdns", api_key=PDNS_KEY, api_port=self.pdns_api, dns_port=self.dns_port
        )
        self.pdns.start()
        self.pdns.ensure_zone(ZONE)
        self.temporal = TemporalDevServer(self.work / "temporal", ui=False)
        self.temporal.start()
        argv = [str(BIN / "xplane"), "api", "--port", str(self.api_port), "--no-migrate"]
        self.api = self._spawn("api", argv)
        self._wait("the API ready", self._ready, 60, self.api)

    def start_worker(self) -> None:
        """The worker (and its loops): after the fleet registered, as in production a
        control plane restarted under a running fleet would find it."""
        self.worker = self._spawn("worker", [str(BIN / "xplane"), "worker"])

    def _ready(self) -> bool:
        try:
            return httpx.get(self.api_url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        for proc in (self.worker, self.api):
            if proc is not None:
                _stop(proc)
        if self.temporal is not None:
            self.temporal.stop()
        if self.pdns is not None:
            self.pdns.stop()
        if self.db_url.startswith("postgresql"):
            drop_database(self.db_url)

    # ------------------------------------------------------------------ reading
    def pids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, proc in (("api", self.api), ("worker", self.worker)):
            if proc is not None and proc.poll() is None:
                out[name] = proc.pid
        if self.temporal is not None and self.temporal.process is not None:
            out["temporal"] = self.temporal.process.pid
        if self.pdns is not None and self.pdns.pid:
            out["pdns"] = self.pdns.pid
        return out

    def database_bytes(self) -> int:
        if self.db_url.startswith("sqlite"):
            return sum(
                p.stat().st_size
                for p in self.work.glob("xplane.db*")  # the database, its WAL and shm
            )
        engine = sa.create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return int(
                    conn.execute(
                        sa.text("SELECT pg_database_size(current_database())")
                    ).scalar_one()
                )
        finally:
            engine.dispose()

    def published(self) -> set[str]:
        """The addresses in the domain's record as PowerDNS stores it."""
        from xplane.dns.powerdns import parse_lua

        zone = httpx.get(
            f"http://127.0.0.1:{self.pdns_api}/api/v1/servers/localhost/zones/{ZONE}.",
            headers={"X-API-Key": PDNS_KEY},
            timeout=10,
        ).json()
        for rrset in zone.get("rrsets", []):
            if rrset["name"] == f"{DOMAIN}." and rrset["type"] == "LUA":
                parsed = parse_lua(rrset["records"][0]["content"])
                return set(parsed[1]) if parsed else set()
            if rrset["name"] == f"{DOMAIN}." and rrset["type"] == "A":
                return {r["content"] for r in rrset["records"]}
        return set()

    def node_states(self) -> dict[str, int]:
        """How many nodes in each lifecycle state."""
        from xplane.store.node_tables import NodeRow

        engine = sa.create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(NodeRow.state, sa.func.count()).group_by(NodeRow.state)
                )
                return {str(r[0]): int(r[1]) for r in rows}
        finally:
            engine.dispose()

    def gate_open(self) -> bool:
        """The world-state scan decided, and its self-health gate holds nothing: until
        then (a started worker waits out a quiet period) XPlane removes no one."""
        from xplane.store import gate as gate_store
        from xplane.store.db import make_engine, make_sessionmaker

        engine = make_engine(self.db_url)
        try:
            with make_sessionmaker(engine)() as session:
                stored = gate_store.read_gate(session)
        finally:
            engine.dispose()
        decision = stored.decision
        return decision is not None and not decision.state.holds and not stored.operator_closed

    def gate_holds(self) -> dict[str, str]:
        """The holds of the gate's last decision (scope -> reasons); {} when none."""
        from xplane.store import gate as gate_store
        from xplane.store.db import make_engine, make_sessionmaker

        engine = make_engine(self.db_url)
        try:
            with make_sessionmaker(engine)() as session:
                decision = gate_store.read_gate(session).decision
        finally:
            engine.dispose()
        if decision is None:
            return {}
        return {scope: "; ".join(h.reasons) for scope, h in decision.state.holds.items()}

    def infra_commits(self) -> list[str]:
        repo = git.Repo(self.infra_repo)
        return [str(c.message).splitlines()[0] for c in repo.iter_commits("main")]

    def _wait(
        self, what: str, check: Callable[[], Any], timeout: float, proc: Proc | None = None
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := check():
                return value
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"{what}: the process exited ({proc.returncode})")
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    async def await_(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        """:meth:`_wait` for async callers: checks run in a thread, the loop keeps going."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := await asyncio.to_thread(check):
                return value
            for proc in (self.api, self.worker):
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"{what}: a process exited ({proc.returncode})")
            await asyncio.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def events_digest(self, limit: int = 80) -> str:
        """The event log, newest last, one line per run of the same kind and region."""
        from xplane.store.db import make_engine, make_sessionmaker
        from xplane.store.events import list_events

        engine = make_engine(self.db_url)
        try:
            with make_sessionmaker(engine)() as session:
                events = list(reversed(list(list_events(session, limit=5000))))
        finally:
            engine.dispose()
        lines: list[str] = []
        last, count = "", 0
        for e in events:
            key = f"{e.kind} {e.region or '-'}"
            if key == last:
                count += 1
                continue
            if count > 1:
                lines[-1] += f" (x{count})"
            lines.append(f"{e.at:%H:%M:%S.%f} {key} {e.node_id or '-'} {e.message[:100]}")
            last, count = key, 1
        if count > 1:
            lines[-1] += f" (x{count})"
        return "\n".join(lines[-limit:])

    def logs_tail(self, lines: int = 20) -> str:
        parts = []
        with contextlib.suppress(Exception):
            parts.append("--- events\n" + self.events_digest())
        for log in sorted(self.work.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()
            bad = [ln for ln in text if '"level": "INFO"' not in ln and '"DEBUG"' not in ln]
            parts.append(f"--- {log.name} (tail)\n" + "\n".join(bad[-lines:]))
        with contextlib.suppress(Exception):
            parts.append(
                "--- temporal.log\n" + (self.work / "temporal" / "temporal.log").read_text()[-2000:]
            )
        return "\n".join(parts)
