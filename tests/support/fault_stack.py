"""A whole control plane on real processes, for fault injection (tests and bench/).

Two ``xplane api`` replicas and two ``xplane worker`` processes on a PostgreSQL
database of the stack's own (created with a unique name, dropped at the end), the
Temporal dev server, PowerDNS and real ``xplane agent`` processes in two regions,
each given both API URLs. Timings are short: 2 s heartbeats, down after 6 s. Not 1 s:
the gate treats a gap between two world-state scans longer than ``SCAN_GAP_INTERVALS``
(2) heartbeat intervals as a recovery (xplane/gate.py), and on a loaded 2-core machine
a scan tick runs up to ~1 s late; with 1 s beats that margin is gone (measured when
the gap allowed was one interval: the gate never opened at all).

Heartbeat load (tests/support/heartbeat_load.py), if asked for: simulated nodes of a
service of their own (``load``: GTM only, no DNS, so ``web``'s pools, DNS and gate
are its agents' alone) beat every interval through a load balancer in front of both
API replicas, for the whole run.

The infra repo is a bare git repository without CI: the node pools are committed
up front (so bootstrap finds them in Git), and any later commit is XPlane's own
decision -- a replacement or a scale -- which is what the faults must not cause. Its
``post-receive`` hook holds one push open (after the remote took the commit) when
armed (:meth:`FaultStack.arm_push_hold`), so a worker can be killed mid-push.

:class:`DnsWatch` polls PowerDNS every ~0.5 s in a thread and keeps every answer,
so a test asserts on what DNS was during a fault, not only after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dns.resolver
import git
import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from bench.fleet import SimNode
from tests.support.heartbeat_load import HeartbeatLoad

BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get(
    "XPLANE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
SERVICE = "web"
DOMAIN = "web.svc.plus"
ZONE = "svc.plus"
BOOT = "fault-boot"
ADMIN = "fault-admin"
HOOK_SECRET = "fault-webhook-secret"
PDNS_KEY = "fault-pdns-key"
INTERVAL_S = 2.0
TIMEOUT_S = 6.0  # MISSED_BEATS x the interval
SCAN_INTERVAL_S = 0.2  # the world-state scan's tick
GTM_INTERVAL_S = 1.0  # web's GTM loop tick and health-check interval
UNHEALTHY_THRESHOLD = 3  # failed checks before GTM sees a node down
SCALE_UP_CPU = 0.9  # agents report 0.5 (--cpu-default): no load-driven scale-up
LOAD_SERVICE = "load"

Proc = subprocess.Popen[bytes]

# The infra remote's post-receive hook: every push that updated a ref gets a line in
# `pushes`; when armed, the push is held open (the remote already has the commit, the
# pusher has not heard back) until its process group is killed.
PUSH_HOOK = """#!/bin/sh
cat >/dev/null
date +%s.%N >> "{dir}/pushes"
if [ -e "{dir}/push.armed" ]; then
  rm -f "{dir}/push.armed"
  echo $$ > "{dir}/push.held.tmp" && mv "{dir}/push.held.tmp" "{dir}/push.held"
  sleep 600
fi
"""


def _config(
    regions: dict[str, int], pdns_api: int, scale_up: dict[str, float] | None = None
) -> dict[str, str]:
    names = sorted(regions)
    scale_up = scale_up or {}
    region_files = {
        f"regions/{r}.yaml": (
            f"provider: aws\nlocation: loc-{r}\ninstance_type: t3.small\n"
            f"min_nodes: {n}\nmax_nodes: 10\n"
        )
        for r, n in regions.items()
    }
    gtm_regions = "".join(
        f"  - name: {r}\n    weight: 100\n    min_ready_nodes: 1\n    fallback: true\n"
        for r in names
    )
    autoscale_regions = "".join(
        f"  {r}: {{min_nodes: {n}, max_nodes: 10, "
        f"scale_up_cpu: {scale_up.get(r, SCALE_UP_CPU)}, scale_down_cpu: 0.05}}\n"
        for r, n in regions.items()
    )
    return {
        **region_files,
        "gtm/web.yaml": f"""service: {SERVICE}
domain: {DOMAIN}
regions:
{gtm_regions}health:
  type: http
  path: /healthz
  interval: {GTM_INTERVAL_S:g}s
  timeout: 500ms
  healthy_threshold: 1
  unhealthy_threshold: {UNHEALTHY_THRESHOLD}
interval: {GTM_INTERVAL_S:g}s
slow_start: 0s
dns:
  provider: powerdns
  api_url: http://127.0.0.1:{pdns_api}
  api_key_env: PDNS_API_KEY
  zone: {ZONE}
  ttl: 1
  max_change_fraction: 0.5
""",
        # The simulated fleet's service: registrations are checked against the config;
        # checks are rare (they are not what is measured) and it publishes no DNS.
        f"gtm/{LOAD_SERVICE}.yaml": f"""service: {LOAD_SERVICE}
domain: {LOAD_SERVICE}.{ZONE}
regions:
{gtm_regions}health: {{type: tcp, interval: 30s, timeout: 2s}}
interval: 10s
slow_start: 0s
""",
        "autoscale/web.yaml": f"""service: {SERVICE}
global: {{cpu_window: 30s}}
regions:
{autoscale_regions}cooldown: {{scale_up: 1s, scale_down: 600s}}
jitter: 0s
interval: 2s
terraform_timeout: 600s
node_ready_timeout: 600s
""",
    }


def create_database() -> str:
    name = f"xplane_fault_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def _admin(sql: str, **params: Any) -> None:
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(sql), params)
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    name = make_url(url).database
    with contextlib.suppress(Exception):
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _stop(proc: Proc, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Agent:
    node_id: str
    region: str
    address: str
    proc: Proc | None = None


@dataclass
class DnsWatch:
    """Every answer PowerDNS gave for the domain, polled in a thread."""

    answers: Callable[[], list[str]]
    every: float = 0.5
    seen: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DnsWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.seen.append((time.monotonic(), frozenset(self.answers())))
            self._stop.wait(self.every)

    def stop(self) -> list[tuple[float, frozenset[str]]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        return self.seen

    def lost(self, healthy: set[str]) -> set[str]:
        """Healthy addresses some poll did not see (an empty answer loses every one)."""
        return {a for _, got in self.seen for a in healthy if a not in got}

    def changes(self) -> list[tuple[float, list[str]]]:
        """(seconds since the first poll, answer) at the first poll and each change."""
        out: list[tuple[float, list[str]]] = []
        for at, got in self.seen:
            if not out or sorted(got) != out[-1][1]:
                out.append((round(at - self.seen[0][0], 1), sorted(got)))
        return out

    def empty_polls(self) -> int:
        return sum(1 for _, got in self.seen if not got)


def seed_repos_and_store(
    files: dict[str, str],
    regions: dict[str, int],
    work: Path,
    config_repo: Path,
    infra_repo: Path,
    db_url: str,
) -> None:
    """The config repo (``files``), the bare infra repo with each region's pool rendered,
    and the store migrated with the config and pools in force, as a stack starts on."""
    from xplane.config.loader import load_config_from_mapping
    from xplane.infra.render import render_region
    from xplane.infra.skeleton import skeleton_files
    from xplane.store.config_store import save_revision
    from xplane.store.db import make_engine, make_sessionmaker, transaction
    from xplane.store.migrate import upgrade
    from xplane.store.pools import set_pool

    repo = git.Repo.init(config_repo, initial_branch="main")
    for rel, text in files.items():
        (config_repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (config_repo / rel).write_text(text)
    repo.git.add(A=True)
    sha = repo.index.commit("config").hexsha
    config = load_config_from_mapping(files)
    seed_dir = work / "infra-seed"
    seed = git.Repo.init(seed_dir, initial_branch="main")
    rendered = dict(skeleton_files())
    for region, count in regions.items():
        rendered.update(render_region(config.regions[region], service=SERVICE, node_count=count))
    for rel, text in rendered.items():
        (seed_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (seed_dir / rel).write_text(text)
    seed.git.add(A=True)
    seed.index.commit("pools")
    git.Repo.init(infra_repo, bare=True, initial_branch="main")
    seed.git.push(str(infra_repo), "main:main")
    upgrade(db_url)
    engine = make_engine(db_url)
    with transaction(make_sessionmaker(engine)) as session:
        # Enough config for agents to register before a worker's first sync; the
        # sync then finds the autoscale policy new and starts the autoscalers.
        seeded = {k: v for k, v in files.items() if not k.startswith("autoscale/")}
        save_revision(session, "0" * 40, load_config_from_mapping(seeded), f"seed of {sha[:8]}")
        for region, count in regions.items():
            set_pool(session, SERVICE, region, count, scaled=False)
    engine.dispose()


class FaultStack:
    """Start with :meth:`start`, stop with :meth:`stop` (always: it drops the database)."""

    def __init__(
        self, work: Path, regions: dict[str, int] | None = None, load_nodes: int = 0
    ) -> None:
        from xplane.dns.pdns_server import free_udp_tcp_port
        from xplane.netutil import free_port

        self.work = work
        self.regions = regions or {"jp": 3, "sg": 3}
        self.pdns_api = free_port()
        self.dns_port = free_udp_tcp_port()
        self.health_port = free_port("0.0.0.0")
        self.api_ports = [free_port(), free_port()]
        self.urls = [f"http://127.0.0.1:{p}" for p in self.api_ports]
        self.db_url = ""
        self.apis: list[Proc | None] = [None, None]
        self.workers: list[Proc | None] = [None, None]
        self.agents: list[Agent] = []
        self.dead: set[str] = set()  # node ids of agents killed for good (real deaths)
        self.scale_up: dict[str, float] = {}  # per-region scale_up_cpu overrides
        self.load_port = free_port()
        self.load_health_port = free_port("0.0.0.0")
        self.load_nodes = load_nodes  # simulated nodes of LOAD_SERVICE (0: none)
        self.load: HeartbeatLoad | None = None
        for i, (region, count) in enumerate(sorted(self.regions.items())):
            for n in range(count):
                address = f"127.0.{40 + i}.{n + 1}"
                self.agents.append(Agent(f"{region}-{n + 1}", region, address))
        self.temporal: Any = None
        self.pdns: Any = None
        self.token = work / "boot.token"
        self.config_repo = work / "config"
        self.infra_repo = work / "infra.git"

    # ---------------------------------------------------------------- set-up
    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "XPLANE_DB_URL": self.db_url,
            "XPLANE_TEMPORAL_ADDRESS": self.temporal.address,
            "XPLANE_HEARTBEAT_INTERVAL": f"{INTERVAL_S}s",
            "XPLANE_HEARTBEAT_TIMEOUT": f"{TIMEOUT_S}s",
            "XPLANE_BOOTSTRAP_TOKEN": BOOT,
            "XPLANE_ADMIN_TOKEN": ADMIN,
            "XPLANE_WEBHOOK_SECRET": HOOK_SECRET,
            "PDNS_API_KEY": PDNS_KEY,
            "XPLANE_CONFIG_REPO": str(self.config_repo),
            "XPLANE_INFRA_REPO": str(self.infra_repo),
            "XPLANE_SYNC_INTERVAL": "2s",
            "XPLANE_WORLD_STATE_INTERVAL": f"{SCAN_INTERVAL_S:g}s",
            "XPLANE_NODE_WARMUP": "1",
            "XPLANE_NODE_DOWN_GRACE": "4",
            "XPLANE_NODE_DRAIN_TIMEOUT": "2",
        }
        return env

    def _seed(self) -> None:
        files = _config(self.regions, self.pdns_api)
        seed_repos_and_store(
            files, self.regions, self.work, self.config_repo, self.infra_repo, self.db_url
        )
        self.token.write_text(BOOT)
        hook = self.infra_repo / "hooks" / "post-receive"
        hook.write_text(PUSH_HOOK.format(dir=self.work))
        hook.chmod(0o755)

    def _spawn(self, name: str, argv: list[str]) -> Proc:
        log = (self.work / f"{name}.log").open("ab")
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.work,
            start_new_session=True,
        )  # fmt: skip

    def start_api(self, i: int) -> None:
        argv = [str(BIN / "xplane"), "api", "--port", str(self.api_ports[i]), "--no-migrate"]
        proc = self._spawn(f"api{i + 1}", argv)
        self.apis[i] = proc
        self._wait(f"api {i + 1} ready", lambda: self._ready(self.urls[i]), 60, proc)

    def _ready(self, url: str) -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self, i: int) -> None:
        data = self.work / f"worker{i + 1}"
        data.mkdir(exist_ok=True)
        self.workers[i] = self._spawn(f"worker{i + 1}", [str(BIN / "xplane"), "worker"])

    def start_agent(self, agent: Agent) -> None:
        argv = [str(BIN / "xplane"), "agent", "--server", self.urls[0], "--server", self.urls[1],
                "--service", SERVICE, "--region", agent.region, "--node-id", agent.node_id,
                "--token-file", str(self.token), "--address", agent.address,
                "--serve-health", f"{agent.address}:{self.health_port}",
                "--cpu-default", "0.5"]  # fmt: skip
        agent.proc = self._spawn(f"agent-{agent.node_id}", argv)

    def start(self) -> None:
        from xplane.dns.pdns_server import PdnsServer
        from xplane.temporal.dev import TemporalDevServer

        self.db_url = create_database()
        self._seed()
        self.pdns = PdnsServer(
            self.work / "pdns", api_key=PDNS_KEY, api_port=self.pdns_api, dns_port=self.dns_port
        )
        self.pdns.start()
        self.pdns.ensure_zone(ZONE)
        self.temporal = TemporalDevServer(self.work / "temporal", ui=False)
        self.temporal.start()
        for i in range(2):
            self.start_api(i)
        # Agents first: registration needs no Temporal, and an autoscaler that saw half
        # the pool registered would "replace" the rest before they came.
        for agent in self.agents:
            self.start_agent(agent)
        self._wait(
            "every agent registered", lambda: len(self.node_states()) == len(self.agents), 60
        )
        if self.load_nodes:  # registered before any worker too, as the agents are
            self.load = HeartbeatLoad(
                self.load_port,
                [("127.0.0.1", p) for p in self.api_ports],
                LOAD_SERVICE,
                {r: self.load_nodes // len(self.regions) for r in sorted(self.regions)},
                lambda _region: BOOT,
                INTERVAL_S,
                self.load_health_port,
            )
            self.load.start(seed=self._seed_load)
        for i in range(2):
            self.start_worker(i)

    def add_agent(self, region: str) -> Agent:
        """Start one more agent in ``region`` (a node Terraform created)."""
        i = sorted(self.regions).index(region)
        n = sum(1 for a in self.agents if a.region == region)
        agent = Agent(f"{region}-{n + 1}", region, f"127.0.{40 + i}.{n + 1}")
        self.agents.append(agent)
        self.start_agent(agent)
        return agent

    def live_agents(self) -> list[Agent]:
        return [a for a in self.agents if a.node_id not in self.dead]

    def _seed_load(self, nodes: list[SimNode]) -> None:
        """The simulated nodes as registered, active, up nodes, put in the store directly:
        no lifecycle workflow each (200 of those starting at once kept both workers busy
        for ~90 s on a loaded 2-core machine, and registration is not what this load is
        for). Their heartbeats take the real path: load balancer, API, store."""
        from xplane.api.auth import hash_token
        from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow
        from xplane.store.node_tables import NodeRow
        from xplane.store.registration import Registration, register_node

        now = utcnow()
        engine = make_engine(self.db_url)
        try:
            with transaction(make_sessionmaker(engine)) as session:
                for n in nodes:
                    reg = Registration(
                        node_id=n.node_id, service=LOAD_SERVICE, region=n.region,
                        address=n.address, token_hash=hash_token(n.token),
                        port=self.load_health_port,
                    )  # fmt: skip
                    register_node(session, reg, now, timedelta(seconds=TIMEOUT_S))
                session.flush()
                session.execute(
                    sa.update(NodeRow)
                    .where(NodeRow.service == LOAD_SERVICE)
                    .values(
                        state="active", state_changed_at=now, last_heartbeat_at=now,
                        recorded_status="up", recorded_status_at=now,
                    )
                )  # fmt: skip
        finally:
            engine.dispose()

    def wait_all_in_dns(self, timeout: float = 120) -> None:
        want = {a.address for a in self.live_agents()}
        self._wait("every live agent in DNS", lambda: want <= self.published(), timeout)

    def stop(self) -> None:
        if self.load is not None:
            self.load.stop()
        for agent in self.agents:
            if agent.proc is not None:
                _stop(agent.proc)
        for proc in self.workers:
            if proc is not None:
                _stop(proc)
        for api in self.apis:
            if api is not None:
                _stop(api)
        if self.temporal is not None:
            self.temporal.stop()
        if self.pdns is not None:
            self.pdns.stop()
        if self.db_url:
            drop_database(self.db_url)

    # ---------------------------------------------------------------- faults
    def signal_agents(self, agents: list[Agent], sig: int) -> None:
        for agent in agents:
            assert agent.proc is not None
            os.killpg(agent.proc.pid, sig)
            if sig == signal.SIGKILL:
                agent.proc.wait()

    def kill_worker(self, i: int) -> None:
        """SIGKILL worker ``i`` and everything under it (a git push, its hook)."""
        proc = self.workers[i]
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.workers[i] = None

    def arm_push_hold(self) -> None:
        """The next push to the infra repo is held open after the remote took it."""
        (self.work / "push.held").unlink(missing_ok=True)
        (self.work / "push.armed").touch()

    def held_push_worker(self) -> int | None:
        """The index of the worker whose push the hook holds now, or None."""
        held = self.work / "push.held"
        if not held.exists():
            return None
        session = os.getsid(int(held.read_text()))  # each worker leads a session
        return next(i for i, w in enumerate(self.workers) if w is not None and w.pid == session)

    def pushes(self) -> int:
        """Pushes that updated a ref of the infra repo so far."""
        path = self.work / "pushes"
        return len(path.read_text().split()) if path.exists() else 0

    def set_scale_up_cpu(self, region: str, cpu: float) -> None:
        """Commit ``scale_up_cpu: cpu`` for ``region`` to the config repo and wait until
        the store has it (the workers' GitOps sync applied it)."""
        self.scale_up[region] = cpu
        repo = git.Repo(self.config_repo)
        rel = "autoscale/web.yaml"
        (self.config_repo / rel).write_text(
            _config(self.regions, self.pdns_api, self.scale_up)[rel]
        )
        repo.git.add(rel)
        sha = repo.index.commit(f"autoscale: {region} scale_up_cpu {cpu}").hexsha
        self._wait(f"config {sha[:8]} applied", lambda: self._config_sha() == sha, 60)

    def _config_sha(self) -> str | None:
        from xplane.store.config_store import current_revision
        from xplane.store.db import make_engine, make_sessionmaker

        engine = make_engine(self.db_url)
        try:
            with make_sessionmaker(engine)() as session:
                revision = current_revision(session)
        finally:
            engine.dispose()
        return revision.sha if revision is not None else None

    def kill_api(self, i: int) -> None:
        proc = self.apis[i]
        assert proc is not None
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.apis[i] = None

    @contextlib.contextmanager
    def database_refusing(self) -> Iterator[None]:
        """The stack's database refuses every connection (and loses its sessions)."""
        name = make_url(self.db_url).database
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        _admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = :name AND pid <> pg_backend_pid()",
            name=name,
        )
        try:
            yield
        finally:
            _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    # ---------------------------------------------------------------- reading
    def answers(self) -> list[str]:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = ["127.0.0.1"], self.dns_port, 1
        try:
            return sorted(str(r) for r in resolver.resolve(DOMAIN, "A"))
        except Exception:
            return []

    def published(self) -> set[str]:
        """The addresses in the domain's record as PowerDNS stores it (not sampled)."""
        from xplane.dns.powerdns import parse_lua

        zone = httpx.get(
            f"http://127.0.0.1:{self.pdns_api}/api/v1/servers/localhost/zones/{ZONE}.",
            headers={"X-API-Key": PDNS_KEY},
            timeout=5,
        ).json()
        for rrset in zone.get("rrsets", []):
            if rrset["name"] == f"{DOMAIN}." and rrset["type"] == "LUA":
                parsed = parse_lua(rrset["records"][0]["content"])
                return set(parsed[1]) if parsed else set()
            if rrset["name"] == f"{DOMAIN}." and rrset["type"] == "A":
                return {r["content"] for r in rrset["records"]}
        return set()

    def watch(self) -> DnsWatch:
        def poll() -> list[str]:
            try:
                return sorted(self.published())
            except (httpx.HTTPError, ValueError):
                return ["<pdns unreachable>"]

        return DnsWatch(poll).start()

    def events(self, prefix: str = "") -> list[Any]:
        from xplane.store.db import make_engine, make_sessionmaker
        from xplane.store.events import list_events

        engine = make_engine(self.db_url)
        try:
            with make_sessionmaker(engine)() as session:
                return list(list_events(session, kind_prefix=prefix, limit=1000))
        finally:
            engine.dispose()

    def node_states(self, service: str = SERVICE) -> dict[str, str]:
        from xplane.store.db import make_engine
        from xplane.store.node_tables import NodeRow

        engine = make_engine(self.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(NodeRow.id, NodeRow.state).where(NodeRow.service == service)
                )
                return {r[0]: str(r[1]) for r in rows}
        finally:
            engine.dispose()

    def beats_since(self, at: datetime, service: str = LOAD_SERVICE) -> tuple[int, int]:
        """(nodes of ``service`` whose latest stored heartbeat is after ``at``, nodes)."""
        from xplane.store.db import make_engine
        from xplane.store.node_tables import NodeRow

        engine = make_engine(self.db_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(NodeRow.last_heartbeat_at).where(NodeRow.service == service)
                ).all()
        finally:
            engine.dispose()
        return sum(1 for (last,) in rows if last is not None and last > at), len(rows)

    def agent_log_marks(self) -> dict[str, int]:
        """Where each agent's log ends now (for :meth:`lost_beats`)."""
        return {
            a.node_id: (self.work / f"agent-{a.node_id}.log").stat().st_size
            for a in self.live_agents()
        }

    def lost_beats(self, marks: dict[str, int]) -> dict[str, list[str]]:
        """Each agent's log lines since ``marks`` that say a heartbeat went unanswered by
        every API URL (a failover to the other URL within the beat is not a loss)."""
        lost: dict[str, list[str]] = {}
        for node_id, offset in marks.items():
            with (self.work / f"agent-{node_id}.log").open("rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
            bad = [
                line
                for line in text.splitlines()
                if any(s in line for s in ("control plane unavailable", "registering again",
                                           "heartbeat rejected", "cannot register"))
            ]  # fmt: skip
            if bad:
                lost[node_id] = bad
        return lost

    def gate_holds(self) -> list[str]:
        """The gate's current holds (scopes), [] when it is open everywhere."""
        from xplane.store import gate as gate_store
        from xplane.store.db import make_engine, make_sessionmaker

        engine = make_engine(self.db_url)
        try:
            with make_sessionmaker(engine)() as session:
                decision = gate_store.read_gate(session).decision
        finally:
            engine.dispose()
        if decision is None:
            return ["<no decision yet>"]
        regions = [
            f"{k}: {v.verdict}" for k, v in decision.regions.items() if v.verdict != "normal"
        ]
        holds = [f"{k}: {'; '.join(h.reasons)}" for k, h in decision.state.holds.items()]
        return sorted(holds) + sorted(regions)

    def _decided_at(self) -> datetime:
        from xplane.store import gate as gate_store
        from xplane.store.db import make_engine, make_sessionmaker

        engine = make_engine(self.db_url)
        try:
            with make_sessionmaker(engine)() as session:
                decision = gate_store.read_gate(session).decision
        finally:
            engine.dispose()
        return decision.at if decision is not None else datetime.min.replace(tzinfo=UTC)

    def gate_counts(self) -> tuple[int, int]:
        """(closings, openings) of the gate so far."""
        return len(self.events("gate.closed")), len(self.events("gate.opened"))

    def wait_gate_reopened(self, before: tuple[int, int], timeout: float) -> int:
        """Every closing since ``before`` has been followed by its opening (a stored
        decision from before a fault says "open" too: the events tell them apart), and
        the gate is open now. Returns the number of closings since ``before``."""

        from xplane.store.db import utcnow

        # First a scan made after the fault ended: its decision, not one stored before.
        now = utcnow()
        self._wait("a world-state scan after the fault", lambda: self._decided_at() > now, timeout)

        def reopened() -> bool:
            closed, opened = self.gate_counts()
            return opened - before[1] >= closed - before[0] and not self.gate_holds()

        try:
            self._wait("the gate to reopen", reopened, timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.gate_holds()}") from None
        return self.gate_counts()[0] - before[0]

    def webhook(self, url: str, delivery: str, region: str, commit: str) -> httpx.Response:
        from xplane.webhooks.signature import sign

        hook = {"commit": commit, "service": SERVICE, "region": region, "status": "succeeded"}
        body = json.dumps({**hook, "timestamp": int(time.time())}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-XPlane-Signature-256": sign(HOOK_SECRET, body),
            "X-XPlane-Delivery": delivery,
        }
        return httpx.post(url + "/webhooks/terraform", content=body, headers=headers, timeout=10)

    async def autoscale_waiting(self, region: str) -> dict[str, Any] | None:
        """What the region's autoscaler waits for (``{"phase": ..., "commit": ...}``)."""
        from temporalio.service import RPCError

        from workflows.autoscale import AutoscaleWorkflow
        from xplane import ids
        from xplane.temporal.client import connect

        client = await connect(self.temporal.address)
        handle = client.get_workflow_handle(ids.autoscale_id(SERVICE, region))
        try:  # answered once a live worker holds the workflow (sticky queue timeout)
            status = await handle.query(AutoscaleWorkflow.status)
        except RPCError:
            return None
        waiting = status.details.get("waiting")
        return waiting if isinstance(waiting, dict) else None

    async def retried_starts(self, workflow_id: str, activity: str) -> list[tuple[int, datetime]]:
        """(attempt, start time) of each completed ``activity`` of the workflow's current
        run that needed more than one attempt (Temporal writes the started event of an
        activity with retries once it ends, with its last attempt)."""
        from temporalio.api.enums.v1 import EventType

        from xplane.temporal.client import connect

        client = await connect(self.temporal.address)
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        names = {
            e.event_id: e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        }
        found = []
        for e in history.events:
            if e.event_type != EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                continue
            started = e.activity_task_started_event_attributes
            if names.get(started.scheduled_event_id) == activity and started.attempt > 1:
                found.append((started.attempt, e.event_time.ToDatetime(tzinfo=UTC)))
        return found

    async def signals(self, workflow_id: str) -> list[str]:
        from temporalio.api.enums.v1 import EventType

        from xplane.temporal.client import connect

        client = await connect(self.temporal.address)
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        return [
            e.workflow_execution_signaled_event_attributes.signal_name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
        ]

    def infra_commits(self) -> list[str]:
        repo = git.Repo(self.infra_repo)
        return [str(c.message).splitlines()[0] for c in repo.iter_commits("main")]

    def infra_tip(self) -> str:
        return git.Repo(self.infra_repo).commit("main").hexsha

    def scale_commits(self) -> list[str]:
        return [c for c in self.infra_commits() if c.startswith("feat(xplane-")]

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

    def diagnostics(self) -> str:
        parts = []
        with contextlib.suppress(Exception):
            lines = [
                f"{e.at:%H:%M:%S.%f} {e.kind} {e.region or '-'} {e.node_id or '-'} {e.message}"
                for e in reversed(self.events())
                if not e.kind.startswith("node.health_check")
            ]
            parts.append("--- events\n" + "\n".join(lines[-150:]))
        for log in sorted(self.work.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            bad = [ln for ln in lines if '"level": "INFO"' not in ln and '"DEBUG"' not in ln]
            parts.append(f"--- {log.name} (tail)\n" + "\n".join(bad[-8:]))
        return "\n".join(parts[1:] + parts[:1])  # the events last: nearest the failure
