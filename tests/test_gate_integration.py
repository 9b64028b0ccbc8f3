"""The self-health gate end to end in the time-skipping server, on SQLite.

Real world-state and node-lifecycle workflows with their real activities; GTM and
the autoscaler are recorders (what they are signalled), and what GTM would publish
is computed from the store by the observe activity's own ``observe_weights``. Agents
are simulated by heartbeats written to the store on the workflow clock.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.gtm import observe_weights
from activities.nodes import NodeActivities
from tests.support.recorder import AnyWorkflowRecorder, RecorderWorkflow
from tests.support.temporal import pydantic_client
from workflows.control_loop import LoopSettings
from workflows.node_lifecycle import NodeLifecycleWorkflow
from workflows.world_state import WorldStateParams, WorldStateWorkflow
from xplane.config.loader import load_config_from_mapping
from xplane.gate import GateSettings
from xplane.heartbeat import HeartbeatSettings
from xplane.observability.metrics import REGISTRY
from xplane.store import gate as gate_store
from xplane.store import nodes as node_store
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.events import list_events
from xplane.store.heartbeats import Heartbeat, apply_heartbeats
from xplane.store.node_tables import NodeRow
from xplane.store.registration import Registration, register_node

HB = HeartbeatSettings(interval=timedelta(seconds=3))  # timeout 9 s
GATE = GateSettings()  # stable period 9 s, quiet period 12 s
SCAN = 1.0
GRACE = 20
NODES = {f"{region}-{i}": f"127.0.40.{n}" for n, (region, i) in enumerate(
    [(r, i) for r in ("jp", "us") for i in range(3)], start=1
)}  # fmt: skip
CONFIG = {
    "regions/global.yaml": "regions:\n  - name: jp\n  - name: us\n",
    "gtm/svc.yaml": """
service: svc
domain: api.svc.plus
regions:
  - {name: jp, weight: 100}
  - {name: us, weight: 100}
dns: {provider: powerdns, api_url: "http://127.0.0.1:1", zone: svc.plus, ttl: 30}
""",
}


def _beat(node: str, at: datetime) -> Heartbeat:
    return Heartbeat(
        node_id=node, token_hash=node, at=at, cpu=0.1, rtt_ms=5.0, error_rate=0.0,
        qps=None, probes_ok=0, probes_total=0, reported_status="up",
    )  # fmt: skip


@dataclass
class Rig:
    env: WorkflowEnvironment
    client: Client
    sessions: sessionmaker[Session]
    world: WorkflowHandle
    autoscale: dict[str, WorkflowHandle]
    alive: set[str] = field(default_factory=lambda: set(NODES))

    async def now(self) -> datetime:
        return await self.env.get_current_time()

    async def run(self, seconds: float) -> None:
        """Let time pass in 1 s steps, the live agents beating at each."""
        for _ in range(int(seconds)):
            at = await self.now()
            beats = [
                Heartbeat(
                    node_id=n,
                    token_hash=n,
                    at=at,
                    cpu=0.1,
                    rtt_ms=5.0,
                    error_rate=0.0,
                    qps=None,
                    probes_ok=0,
                    probes_total=0,
                    reported_status="up",
                )
                for n in sorted(self.alive)
            ]
            with transaction(self.sessions) as session:
                apply_heartbeats(session, beats, HB.timeout)
            await self.env.sleep(1)

    def nodes(self) -> dict[str, NodeRow]:
        with self.sessions() as session:
            return {r.id: r for r in node_store.list_nodes(session)}

    def states(self) -> dict[str, str]:
        return {n: r.state for n, r in self.nodes().items()}

    async def published(self) -> set[str]:
        """The addresses GTM would publish now (weight > 0), through the gate."""
        config = load_config_from_mapping(CONFIG)
        now = await self.now()
        weights, *_ = observe_weights(
            self.sessions, config.gtm["svc"], config.regions, now, HB, GATE, {}, now
        )
        return {r.address for r in weights.records if r.weight > 0}

    async def node_lost(self, region: str) -> list[str]:
        return await self.autoscale[region].query(RecorderWorkflow.signals)

    def events(self, prefix: str) -> list[str]:
        with self.sessions() as session:
            return [e.message for e in reversed(list_events(session, kind_prefix=prefix))]


@pytest.fixture
async def rig(
    time_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Rig]:
    import xplane.store.tables  # noqa: F401

    monkeypatch.setenv("XPLANE_NODE_WARMUP", "3")
    monkeypatch.setenv("XPLANE_NODE_DOWN_GRACE", str(GRACE))
    engine = make_engine(f"sqlite:///{tmp_path}/gate.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    start = await time_env.get_current_time()
    with transaction(sessions) as session:
        for node, address in NODES.items():
            register_node(
                session,
                Registration(
                    node_id=node, service="svc", region=node[:2], address=address, token_hash=node
                ),
                start,
                HB.timeout,
            )
    client = pydantic_client(time_env)
    queue = f"gate-{uuid.uuid4().hex[:6]}"
    acts = NodeActivities(sessions, client, queue, HB, GATE)
    async with Worker(
        client,
        task_queue=queue,
        workflows=[
            WorldStateWorkflow,
            NodeLifecycleWorkflow,
            RecorderWorkflow,
            AnyWorkflowRecorder,
        ],
        activities=[acts.scan_node_transitions, acts.record_node_state, acts.gate_verdict],
        activity_executor=ThreadPoolExecutor(4),
    ):
        autoscale = {
            region: await client.start_workflow(
                RecorderWorkflow.run, id=f"autoscale-svc-{region}", task_queue=queue
            )
            for region in ("jp", "us")
        }
        world = await client.start_workflow(
            WorldStateWorkflow.run,
            WorldStateParams(settings=LoopSettings(interval_seconds=SCAN)),
            id=f"world-state-{uuid.uuid4().hex[:6]}",
            task_queue=queue,
        )
        rig = Rig(time_env, client, sessions, world, autoscale)
        await rig.run(8)  # registered, up, warmed: every node active
        assert set(rig.states().values()) == {"active"}
        assert await rig.published() == set(NODES.values())
        yield rig
        started = [world.id, *(h.id for h in autoscale.values())]
        for workflow_id in [*started, *(f"node-{n}" for n in NODES), "gtm-svc"]:
            with contextlib.suppress(RPCError):
                await client.get_workflow_handle(workflow_id).terminate()
    engine.dispose()


async def test_every_region_silent_holds_then_a_real_failure_is_handled_after_reopening(
    rig: Rig,
) -> None:
    # Every agent of every region goes silent for well over the heartbeat timeout.
    rig.alive.clear()
    await rig.run(HB.timeout_seconds + 30)
    assert set(rig.states().values()) == {"active"}  # nobody marked down, nothing deleted
    assert all(r.recorded_status == "up" for r in rig.nodes().values())
    assert await rig.published() == set(NODES.values())  # DNS as it was
    assert await rig.node_lost("jp") == [] and await rig.node_lost("us") == []
    closed = rig.events("gate.closed")
    assert len(closed) == 1 and "every region of svc silent at once" in closed[0]
    status = await rig.world.query(WorldStateWorkflow.status)
    assert "svc" in status.details["gate"]["holds"]
    assert sorted(status.details["gate_held"]) == sorted(NODES)
    assert status.details["gate_held_count"] == len(NODES)
    assert REGISTRY.get_sample_value("xplane_gate_closed", {"scope": "svc"}) == 1

    # The control plane's view comes back for us; jp really is dead.
    rig.alive.update(n for n in NODES if n.startswith("us"))
    await rig.run(HB.timeout_seconds - 2)  # inside the stable period: still held
    assert {r.state for r in rig.nodes().values()} == {"active"}
    await rig.run(GATE.stable(HB).total_seconds())
    assert len(rig.events("gate.opened")) == 1
    assert REGISTRY.get_sample_value("xplane_gate_closed", {"scope": "svc"}) == 0
    states = rig.states()
    assert {states[n] for n in NODES if n.startswith("jp")} == {"idle"}  # judged down now
    assert {states[n] for n in NODES if n.startswith("us")} == {"active"}
    assert await rig.published() == {a for n, a in NODES.items() if n.startswith("us")}
    await rig.run(GRACE + 3)
    states = rig.states()
    assert {states[n] for n in NODES if n.startswith("jp")} == {"delete"}
    assert len(await rig.node_lost("jp")) == 3 and await rig.node_lost("us") == []


async def test_one_region_silent_while_the_other_beats_fails_over_at_once(rig: Rig) -> None:
    rig.alive.difference_update(n for n in NODES if n.startswith("jp"))
    await rig.run(HB.timeout_seconds + 2 * SCAN + 1)
    states = rig.states()
    assert {states[n] for n in NODES if n.startswith("jp")} == {"idle"}
    assert await rig.published() == {a for n, a in NODES.items() if n.startswith("us")}
    assert rig.events("gate.closed") == []  # the gate never held it
    await rig.run(GRACE + 2)
    assert {rig.states()[n] for n in NODES if n.startswith("jp")} == {"delete"}
    assert len(await rig.node_lost("jp")) == 3


async def test_operator_close_holds_a_region_failure_until_opened(rig: Rig) -> None:
    at = await rig.now()
    with transaction(rig.sessions) as session:
        gate_store.set_operator(session, True, "network change", by="test", at=at)
    rig.alive.difference_update(n for n in NODES if n.startswith("jp"))
    await rig.run(HB.timeout_seconds + 10)
    assert set(rig.states().values()) == {"active"}
    assert await rig.published() == set(NODES.values())
    assert "closed by operator: network change" in rig.events("gate.closed")[0]
    at = await rig.now()  # the workflow clock, which time skipping has moved ahead
    with transaction(rig.sessions) as session:
        gate_store.set_operator(session, False, "done", by="test", at=at)
    await rig.run(3)
    assert {rig.states()[n] for n in NODES if n.startswith("jp")} == {"idle"}
    assert "opened by operator" in rig.events("gate.opened")[0]
    assert [e.split(":")[0] for e in rig.events("gate.operator")] == [
        "self-health gate closed by test",
        "self-health gate opened by test",
    ]


async def test_after_a_gap_in_the_scans_no_node_is_judged_down_before_it_could_report(
    rig: Rig,
) -> None:
    """The store (or Temporal) is away for 30 s: no scan runs, no heartbeat is stored. At
    recovery us reports at once, jp a few seconds later: jp alone looks fully silent, which
    would fail over at once, but it is given a timeout plus margin to report first."""
    await rig.world.signal(WorldStateWorkflow.pause, "store outage")
    rig.alive.clear()
    await rig.run(30)
    rig.alive.update(n for n in NODES if n.startswith("us"))
    await rig.world.signal(WorldStateWorkflow.resume)
    await rig.run(5)
    assert await rig.published() == set(NODES.values())  # jp stays in DNS meanwhile
    rig.alive.update(NODES)
    await rig.run(10)
    assert rig.events("node.status.down") == []  # never judged down, not even briefly
    assert set(rig.states().values()) == {"active"}
    closed = rig.events("gate.closed")
    assert len(closed) == 1 and "recovery quiet period: no world-state scan for 3" in closed[0]
    await rig.run(GATE.quiet(HB).total_seconds())
    assert len(rig.events("gate.opened")) == 1
