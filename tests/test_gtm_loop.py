"""The GTM loop in the time-skipping server, applying to a REAL PowerDNS (pdns_server).

Nodes answer XPlane's active health check with real HTTP servers on loopback
addresses; DNS answers are read from the PowerDNS API after each apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.gtm import GtmActivities
from tests.fakes.cloudflare_api import CloudflareState, start
from tests.support.gate import STALLED, store_gate
from tests.support.histories import keep
from tests.support.temporal import pydantic_client
from tests.support.tools import needs_tool
from workflows.control_loop import LoopSettings, LoopStatus
from workflows.gtm_loop import GtmLoopParams, GtmLoopWorkflow
from xplane.config.loader import load_config_from_mapping
from xplane.dns.pdns_server import PdnsServer
from xplane.dns.powerdns import parse_lua
from xplane.domain import NodeState
from xplane.netutil import free_port
from xplane.store import nodes as node_store
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.events import list_events
from xplane.store.registration import Registration, register_node

pytestmark = needs_tool("pdns_server")

TQ = "gtm-loop-tests"
NODES = {"jp-1": "127.0.10.1", "jp-2": "127.0.10.2", "sg-1": "127.0.10.3"}


class _Ok(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def health_port() -> Iterator[int]:
    """One tiny HTTP server per node address, all on the same port."""
    port = free_port()
    servers = [ThreadingHTTPServer((addr, port), _Ok) for addr in NODES.values()]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield port
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def pdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PdnsServer]:
    with PdnsServer(tmp_path_factory.mktemp("pdns")) as server:
        server.ensure_zone("svc.plus")
        yield server


def _config(pdns: PdnsServer, health_port: int) -> dict[str, str]:
    return {
        "regions/global.yaml": "regions:\n  - name: jp\n  - name: sg\n",
        "gtm/svc.yaml": f"""
service: svc
domain: api.svc.plus
regions:
  - {{name: jp, weight: 100, fallback: true}}
  - {{name: sg, weight: 100}}
health: {{type: http, path: /healthz, port: {health_port}, interval: 5s, timeout: 1s,
          healthy_threshold: 1, unhealthy_threshold: 1}}
interval: 10s
slow_start: 100s
dns: {{provider: powerdns, api_url: "{pdns.api_url}", zone: svc.plus, ttl: 30}}
""",
    }


def _answers(pdns: PdnsServer) -> dict[str, float]:
    """Address -> weight share, read back from the LUA record PowerDNS holds."""
    from xplane.dns.powerdns import parse_lua

    zone = httpx.get(
        f"{pdns.api_url}/api/v1/servers/localhost/zones/svc.plus.", headers=pdns.headers
    ).json()
    for rrset in zone["rrsets"]:
        if rrset["name"] == "api.svc.plus." and rrset["type"] == "LUA":
            parsed = parse_lua(rrset["records"][0]["content"])
            assert parsed is not None
            weights = parsed[1]
            total = sum(weights.values())
            return {addr: w / total for addr, w in weights.items()}
    return {}


def _beat(sessions: sessionmaker[Session], node_id: str) -> None:
    with transaction(sessions) as session:
        row = node_store.get_node(session, node_id)
        row.last_heartbeat_at, row.error_rate, row.rtt_ms = utcnow(), 0.0, 10.0


@contextlib.asynccontextmanager
async def _gtm_loop(
    env: WorkflowEnvironment,
    sessions: sessionmaker[Session],
    service: str,
    queue: str = TQ,
    prefix: str = "svc",
    interval: float = 3600,
) -> AsyncIterator[WorkflowHandle[Any, Any]]:
    """A worker with the GTM activities and one GTM loop of ``service`` (by default a
    tick an hour: the tests wake it), terminated on the way out."""
    client = pydantic_client(env)
    acts = GtmActivities(sessions)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[GtmLoopWorkflow],
        activities=[acts.observe_gtm, acts.apply_dns],
        activity_executor=ThreadPoolExecutor(4),
    ):
        handle = await client.start_workflow(
            GtmLoopWorkflow.run,
            GtmLoopParams(service=service, settings=LoopSettings(interval_seconds=interval)),
            id=f"gtm-{prefix}-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        try:
            yield handle
        finally:
            with contextlib.suppress(Exception):
                await handle.terminate()


def store_nodes(
    sessions: sessionmaker[Session],
    config: dict[str, str],
    revision: str,
    service: str,
    port: int,
    idle: tuple[str, ...] = (),
) -> None:
    """The config in force and every node of NODES registered (health on ``port``),
    active unless named in ``idle``, and beating."""
    with transaction(sessions) as session:
        save_revision(session, revision, load_config_from_mapping(config), "test")
        for node_id, address in NODES.items():
            register_node(
                session,
                Registration(
                    node_id=node_id, service=service, region=node_id[:2], address=address,
                    token_hash=uuid.uuid4().hex, port=port,
                ),
                utcnow(),
                timedelta(seconds=30),
            )  # fmt: skip
            state = NodeState.IDLE if node_id in idle else NodeState.ACTIVE
            node_store.set_lifecycle_state(session, node_id, state, "test", utcnow())
    for node_id in NODES:
        _beat(sessions, node_id)


def _seed(
    tmp_path: Path, pdns: PdnsServer, health_port: int
) -> tuple[Engine, sessionmaker[Session]]:
    """A store with the config and every node of NODES active and beating."""
    import xplane.store.tables  # noqa: F401

    engine = make_engine(f"sqlite:///{tmp_path}/gtm.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    store_nodes(sessions, _config(pdns, health_port), "a" * 40, "svc", health_port)
    return engine, sessions


async def test_node_down_leaves_dns_in_one_apply_and_recovery_ramps(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    pdns: PdnsServer,
    health_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    engine, sessions = _seed(tmp_path, pdns, health_port)
    async with _gtm_loop(time_env, sessions, "svc", TQ, "svc") as handle:
        await time_env.sleep(1)
        shares = _answers(pdns)
        assert shares == pytest.approx({"127.0.10.1": 0.25, "127.0.10.2": 0.25, "127.0.10.3": 0.5})

        def applies() -> int:
            with sessions() as session:
                return len(list_events(session, kind_prefix="dns.applied"))

        assert applies() == 1
        # Nothing changed: a wake-up reconciles but writes nothing.
        await handle.signal(GtmLoopWorkflow.world_changed, "test")
        await time_env.sleep(1)
        assert applies() == 1

        # sg-1 goes down (its lifecycle takes it out of service): one apply removes it.
        with transaction(sessions) as session:
            node_store.set_lifecycle_state(session, "sg-1", NodeState.IDLE, "down", utcnow())
        await handle.signal(GtmLoopWorkflow.world_changed, "node down")
        await time_env.sleep(1)
        assert applies() == 2
        assert set(_answers(pdns)) == {"127.0.10.1", "127.0.10.2"}
        status: LoopStatus = await handle.query(GtmLoopWorkflow.status)
        assert status.details["weights"] == {"jp": 100.0, "sg": 0.0}

        # Recovery: sg comes back slowly (slow start 100s), not at once.
        with transaction(sessions) as session:
            node_store.set_lifecycle_state(session, "sg-1", NodeState.ACTIVE, "back", utcnow())
        for node_id in NODES:
            _beat(sessions, node_id)
        await handle.signal(GtmLoopWorkflow.world_changed, "node up")
        await time_env.sleep(1)
        status = await handle.query(GtmLoopWorkflow.status)
        assert status.details["weights"]["sg"] < 5  # just started ramping
        await time_env.sleep(50)
        for node_id in NODES:
            _beat(sessions, node_id)
        await handle.signal(GtmLoopWorkflow.world_changed, "tick")
        await time_env.sleep(1)
        status = await handle.query(GtmLoopWorkflow.status)
        # About halfway, on the ramp's 10 s grid: the time-skipping server may run a
        # timer or two past a requested sleep, so one grid step either side is fine.
        assert 40 <= status.details["weights"]["sg"] <= 70
        await time_env.sleep(60)
        for node_id in NODES:
            _beat(sessions, node_id)
        await handle.signal(GtmLoopWorkflow.world_changed, "tick")
        await time_env.sleep(1)
        status = await handle.query(GtmLoopWorkflow.status)
        assert status.details["weights"] == {"jp": 100.0, "sg": 100.0}
        assert _answers(pdns)["127.0.10.3"] == pytest.approx(0.5)
    engine.dispose()


async def test_the_status_query_shows_the_gate_closed_with_its_reason_then_open(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    pdns: PdnsServer,
    health_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    engine, sessions = _seed(tmp_path, pdns, health_port)
    store_gate(sessions, await time_env.get_current_time(), stalled=True)
    async with _gtm_loop(time_env, sessions, "svc", TQ, "svc") as handle:
        await time_env.sleep(1)
        status: LoopStatus = await handle.query(GtmLoopWorkflow.status)
        assert status.details["gate"] == {"jp": f"held: {STALLED}", "sg": f"held: {STALLED}"}
        assert set(_answers(pdns)) == set(NODES.values())  # published all the same

        store_gate(sessions, await time_env.get_current_time(), stalled=False)
        for node_id in NODES:
            _beat(sessions, node_id)
        await handle.signal(GtmLoopWorkflow.world_changed, "gate opened")
        await time_env.sleep(1)
        status = await handle.query(GtmLoopWorkflow.status)
        assert status.details["gate"] == {}
    engine.dispose()


async def test_a_region_holding_most_addresses_fails_over_past_the_safety_threshold(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    pdns: PdnsServer,
    health_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """jp holds 2 of the 3 addresses. Both its nodes go down: the plan removes 67 % of
    the published addresses, above max_change_fraction (50 %), yet jp must leave DNS at
    once: its nodes are judged down, so those removals are expected, not suspicious."""
    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    engine, sessions = _seed(tmp_path, pdns, health_port)
    async with _gtm_loop(time_env, sessions, "svc", TQ, "svc") as handle:
        await time_env.sleep(1)
        assert set(_answers(pdns)) == set(NODES.values())
        with transaction(sessions) as session:
            for node_id in ("jp-1", "jp-2"):
                node_store.set_lifecycle_state(session, node_id, NodeState.IDLE, "down", utcnow())
        await handle.signal(GtmLoopWorkflow.world_changed, "jp down")
        await time_env.sleep(1)
        assert set(_answers(pdns)) == {NODES["sg-1"]}
    engine.dispose()


class _Flippable(BaseHTTPRequestHandler):
    healthy = True

    def do_GET(self) -> None:
        self.send_response(200 if type(self).healthy else 500)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


async def test_active_check_failures_leave_dns_only_after_the_threshold(
    time_env: WorkflowEnvironment, tmp_path: Path, pdns: PdnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that keeps heartbeating while its health endpoint fails (a real server)."""
    import xplane.store.tables  # noqa: F401

    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    port = free_port()
    handler = type("Handler", (_Flippable,), {"healthy": True})
    servers = [ThreadingHTTPServer((a, port), handler) for a in ("127.0.11.1", "127.0.11.2")]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    config = {
        "regions/jp.yaml": "provider: local\n",
        "gtm/chk.yaml": f"""
service: chk
domain: chk.svc.plus
regions: [{{name: jp, weight: 100, health_threshold: 0.1}}]
health: {{type: http, path: /healthz, port: {port}, interval: 5s, timeout: 1s,
          healthy_threshold: 2, unhealthy_threshold: 3}}
dns: {{provider: powerdns, api_url: "{pdns.api_url}", zone: svc.plus}}
slow_start: 0s
""",
    }
    engine = make_engine(f"sqlite:///{tmp_path}/chk.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    with transaction(sessions) as session:
        save_revision(session, "e" * 40, load_config_from_mapping(config), "test")
        for i, address in enumerate(("127.0.11.1", "127.0.11.2")):
            register_node(
                session,
                Registration(
                    node_id=f"chk-{i}", service="chk", region="jp", address=address,
                    token_hash=f"chk-{i}", port=port,
                ),
                utcnow(),
                timedelta(seconds=30),
            )  # fmt: skip
            node_store.set_lifecycle_state(session, f"chk-{i}", NodeState.ACTIVE, "t", utcnow())

    def beat() -> None:
        for i in range(2):
            _beat(sessions, f"chk-{i}")

    def published() -> set[str]:
        zone = httpx.get(
            f"{pdns.api_url}/api/v1/servers/localhost/zones/svc.plus.", headers=pdns.headers
        ).json()
        for rrset in zone["rrsets"]:
            if rrset["name"] == "chk.svc.plus." and rrset["type"] == "LUA":
                parsed = parse_lua(rrset["records"][0]["content"])
                return set(parsed[1]) if parsed else set()
        return set()

    try:
        async with _gtm_loop(
            time_env, sessions, "chk", f"chk-{uuid.uuid4().hex[:6]}", "chk"
        ) as handle:

            async def tick() -> None:
                beat()
                await handle.signal(GtmLoopWorkflow.world_changed, "tick")
                await asyncio.sleep(1.5)  # real time: the probes are real

            await tick()
            await tick()  # two successes: healthy
            assert published() == {"127.0.11.1", "127.0.11.2"}

            # Every node keeps heartbeating; the service port starts failing (both servers
            # share the handler class, so flip only by address: stop answering on .2).
            servers[1].shutdown()
            servers[1].server_close()
            await tick()
            await tick()
            assert published() == {"127.0.11.1", "127.0.11.2"}  # 2 failures < threshold 3
            await tick()
            assert published() == {"127.0.11.1"}  # the third failure takes it out

            # It comes back after two consecutive successes, not one.
            servers[1] = ThreadingHTTPServer(("127.0.11.2", port), handler)
            threading.Thread(target=servers[1].serve_forever, daemon=True).start()
            await tick()
            assert published() == {"127.0.11.1"}
            await tick()
            assert published() == {"127.0.11.1", "127.0.11.2"}
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        engine.dispose()


async def test_a_slow_start_ramp_writes_dns_in_about_ten_steps_not_every_tick(
    time_env: WorkflowEnvironment, tmp_path, pdns: PdnsServer, health_port: int, monkeypatch
) -> None:
    """sg recovers while the loop ticks every 5 s over a 100 s slow start: the linear
    ramp rewrote the record on each of ~20 ticks; stepped and deadbanded, ~10 writes."""
    import xplane.store.tables  # noqa: F401

    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    engine = make_engine(f"sqlite:///{tmp_path}/ramp.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    config = _config(pdns, health_port)
    config["gtm/svc.yaml"] = config["gtm/svc.yaml"].replace("interval: 10s", "interval: 5s")
    store_nodes(sessions, config, "b" * 40, "svc", health_port, idle=("sg-1",))

    def applies() -> int:
        with sessions() as session:
            return len(list_events(session, kind_prefix="dns.applied"))

    queue = f"ramp-{uuid.uuid4().hex[:6]}"
    async with _gtm_loop(time_env, sessions, "svc", queue, "ramp", interval=5) as handle:
        await time_env.sleep(6)
        assert set(_answers(pdns)) == {"127.0.10.1", "127.0.10.2"} and applies() == 1
        with transaction(sessions) as session:
            node_store.set_lifecycle_state(session, "sg-1", NodeState.ACTIVE, "back", utcnow())
        for _ in range(30):  # 150 s of 5 s ticks: the whole ramp and a steady stretch
            for node_id in NODES:
                _beat(sessions, node_id)
            await time_env.sleep(5)
        status: LoopStatus = await handle.query(GtmLoopWorkflow.status)
        assert status.details["weights"] == {"jp": 100.0, "sg": 100.0}
        assert _answers(pdns)["127.0.10.3"] == pytest.approx(0.5)
        ramp_writes = applies() - 1
        assert 5 <= ramp_writes <= 12, ramp_writes
    engine.dispose()


async def test_a_throttled_provider_is_retried_after_retry_after_and_the_loop_carries_on(
    time_env: WorkflowEnvironment, tmp_path, health_port: int, monkeypatch
) -> None:
    """Cloudflare (the loopback fake) answers 429 with Retry-After: 2 and keeps answering
    429 until then. The apply waits it out (no call before Retry-After; the activity's
    own backoff would retry after 1 s) and publishes within the same reconcile."""
    import xplane.store.tables  # noqa: F401

    state = CloudflareState(token="cf-t0k", zones={"z0000001": "svc.plus"})
    server = start(state)
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "cf-t0k")
    engine = make_engine(f"sqlite:///{tmp_path}/cf.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    config = {
        "regions/global.yaml": "regions:\n  - name: jp\n  - name: sg\n",
        "gtm/svc.yaml": f"""
service: svc
domain: api.svc.plus
regions: [{{name: jp, weight: 100}}, {{name: sg, weight: 100}}]
health: {{type: http, path: /healthz, port: {health_port}, interval: 5s, timeout: 1s,
          healthy_threshold: 1, unhealthy_threshold: 1}}
dns: {{provider: cloudflare, base_url: "http://127.0.0.1:{server.port}/client/v4",
       zone: svc.plus}}
""",
    }
    store_nodes(sessions, config, "c" * 40, "svc", health_port)
    state.fail_next(429, retry_after=2)

    try:
        async with _gtm_loop(
            time_env, sessions, "svc", f"cf-{uuid.uuid4().hex[:6]}", "cf"
        ) as handle:
            for _ in range(40):
                await asyncio.sleep(0.25)
                if len(state.at("api.svc.plus")) == 3:
                    break
            status: LoopStatus = await handle.query(GtmLoopWorkflow.status)
            assert {r["content"] for r in state.at("api.svc.plus")} == set(NODES.values())
            assert not state.faults and state.early_calls == 0
            assert status.errors == 0 and status.last_error is None
    finally:
        server.stop()
        engine.dispose()


def _serve(addresses: list[str], port: int) -> list[ThreadingHTTPServer]:
    servers = [ThreadingHTTPServer((addr, port), _Ok) for addr in addresses]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    return servers


def _stop(servers: list[ThreadingHTTPServer]) -> None:
    for server in servers:
        server.shutdown()
        server.server_close()


def _addresses(pdns: PdnsServer, name: str) -> set[str]:
    """The addresses PowerDNS answers for ``name`` (its LUA record)."""
    zone = httpx.get(
        f"{pdns.api_url}/api/v1/servers/localhost/zones/svc.plus.", headers=pdns.headers
    ).json()
    for rrset in zone["rrsets"]:
        if rrset["name"] == f"{name}." and rrset["type"] == "LUA":
            parsed = parse_lua(rrset["records"][0]["content"])
            assert parsed is not None
            return set(parsed[1])
    return set()


async def test_all_nodes_die_and_one_comes_back_dns_is_never_empty_nor_frozen_on_the_dead(
    time_env: WorkflowEnvironment, tmp_path: Path, pdns: PdnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every agent is killed: DNS keeps the last good set (never shrinks to the node
    deleted last, never empty) while no node is up. A new node comes back: it is in DNS
    at once and the dead addresses leave, past the safety threshold (4 of 4 removed)."""
    import xplane.store.tables  # noqa: F401

    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    port = free_port()
    name = "last.svc.plus"
    config = _config(pdns, port)
    config["gtm/svc.yaml"] = config["gtm/svc.yaml"].replace("api.svc.plus", name)
    dead = {f"jp-{i}": f"127.0.10.{i}" for i in range(21, 25)}
    servers = _serve(list(dead.values()), port)
    engine = make_engine(f"sqlite:///{tmp_path}/gtm.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)

    def register(node_id: str, address: str, state: NodeState) -> None:
        with transaction(sessions) as session:
            register_node(
                session,
                Registration(node_id=node_id, service="svc", region="jp",
                                        address=address, token_hash=uuid.uuid4().hex, port=port),
                utcnow(),
                timedelta(seconds=30),
            )  # fmt: skip
            node_store.set_lifecycle_state(session, node_id, state, "test", utcnow())
        _beat(sessions, node_id)

    with transaction(sessions) as session:
        save_revision(session, "e" * 40, load_config_from_mapping(config), "test")
    for node_id, address in dead.items():
        register(node_id, address, NodeState.ACTIVE)

    async with _gtm_loop(time_env, sessions, "svc", TQ, "svc") as handle:

        async def tick(reason: str) -> LoopStatus:
            await handle.signal(GtmLoopWorkflow.world_changed, reason)
            await time_env.sleep(1)
            status: LoopStatus = await handle.query(GtmLoopWorkflow.status)
            assert status.last_error is None, status.last_error
            return status

        await time_env.sleep(1)
        good = set(dead.values())
        assert _addresses(pdns, name) == good

        # Every agent killed: silent, probes refused, marked down by the world state.
        _stop(servers)
        with transaction(sessions) as session:
            for node_id in dead:
                row = node_store.get_node(session, node_id)
                row.last_heartbeat_at = utcnow() - timedelta(minutes=2)
                node_store.set_lifecycle_state(session, node_id, NodeState.IDLE, "down", utcnow())
        status = await tick("all down")
        assert status.details["holding"] == ["0:powerdns"]
        assert _addresses(pdns, name) == good

        # Given up one by one after the down grace: DNS keeps the last good set.
        for node_id in dead:
            with transaction(sessions) as session:
                node_store.set_lifecycle_state(session, node_id, NodeState.DELETE, "gone", utcnow())
            status = await tick(f"{node_id} deleted")
            assert _addresses(pdns, name) == good, node_id
        assert "no node is up: 0:powerdns keep the last good answer" in status.details["reason"]

        # A new node comes back: in DNS at once; the dead leave now that a live one exists.
        back = _serve(["127.0.10.25"], port)
        try:
            register("jp-25", "127.0.10.25", NodeState.WARM)
            status = await tick("jp-25 registered")
            assert _addresses(pdns, name) == {"127.0.10.25"}
            assert status.details["holding"] == []
        finally:
            _stop(back)
    engine.dispose()


async def test_noisy_rtts_are_smoothed_before_the_weights(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    pdns: PdnsServer,
    health_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """jp's RTT jumps between 150 and 300 ms every 5 s tick (target 100 ms): raw, its
    latency factor would jump between 0.67 and 0.33; smoothed over a minute, its weight
    stays between the two and DNS is written about once."""
    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    engine, sessions = _seed(tmp_path, pdns, health_port)

    def beat(jp_rtt: float) -> None:
        for node_id in NODES:
            _beat(sessions, node_id)
            with transaction(sessions) as session:
                row = node_store.get_node(session, node_id)
                row.rtt_ms = jp_rtt if node_id.startswith("jp") else 10.0

    queue = f"rtt-{uuid.uuid4().hex[:6]}"
    beat(150)
    async with _gtm_loop(time_env, sessions, "svc", queue, "rtt", interval=5) as handle:
        await time_env.sleep(1)
        for i in range(12):
            beat(300 if i % 2 == 0 else 150)
            await time_env.sleep(5)
        status: LoopStatus = await handle.query(GtmLoopWorkflow.status)
        jp = status.details["weights"]["jp"]
        assert 100 * 100 / 300 + 1 < jp < 100 * 100 / 150 - 1, jp
        with sessions() as session:
            assert len(list_events(session, kind_prefix="dns.applied")) <= 3
        await keep(handle, "gtm_loop_smoothed_rtt")
    engine.dispose()
