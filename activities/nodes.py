"""Activities over the node store: lifecycle state writes and the world-state scan."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Set
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from pydantic import BaseModel, Field
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.client import Client

from activities.heartbeating import heartbeating
from xplane import ids
from xplane.domain import NodeState, NodeStatus
from xplane.gate import (
    EVERYWHERE,
    GateDecision,
    GateInputs,
    GateQuery,
    GateSettings,
    GateState,
    RegionInput,
    RegionVerdict,
    decide_gate,
    spend,
    verdict_for,
)
from xplane.heartbeat import HeartbeatSettings
from xplane.lifecycle.node_fsm import NodeEvent
from xplane.messages import NodeLifecycleParams, NodeStateRecord, NodeStatusChange, NodeTimings
from xplane.observability import metrics
from xplane.store import gate as gate_store
from xplane.store import node_scan
from xplane.store import nodes as node_store
from xplane.store.db import transaction, utcnow
from xplane.store.events import EventRow, record_event
from xplane.store.node_tables import NodeRow
from xplane.store.registration import revoke_token
from xplane.temporal.client import signal_with_start

HELD_LISTED = 20  # node ids named in a scan result; the count says how many in all
# Signals in flight at once: fast on a mass transition (a region going down), without
# opening thousands of requests to Temporal at the same moment.
SIGNAL_CONCURRENCY = 32


class ScanRequest(BaseModel):
    # The timeout is the worker's (XPLANE_HEARTBEAT_*), not the workflow's: one notion of
    # down for every reader. A field still sent by an older workflow is ignored.
    now: datetime | None = None  # the workflow's clock; None: the wall clock


class NodeTransition(BaseModel):
    node_id: str
    service: str
    region: str
    previous: NodeStatus | None  # None: first time seen (a new node)
    status: NodeStatus


class ScanResult(BaseModel):
    nodes: int
    heartbeat_timeout_seconds: float | None = None  # the timeout this scan judged with
    transitions: list[NodeTransition] = Field(default_factory=list)
    services_signalled: list[str] = Field(default_factory=list)
    # The self-health gate: summary, and down transitions it held back this scan.
    gate: dict[str, Any] = Field(default_factory=dict)
    held: list[str] = Field(default_factory=list)  # the first HELD_LISTED (history stays small)
    held_count: int = 0


class NodeActivities:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        client: Client,
        task_queue: str,
        heartbeat: HeartbeatSettings = HeartbeatSettings(),
        gate: GateSettings | None = None,
    ) -> None:
        self._sessions = session_factory
        self._client = client
        self._task_queue = task_queue
        self._heartbeat = heartbeat
        self._gate = gate or GateSettings.from_env()

    @activity.defn(name="record_node_state")
    def record_node_state(self, record: NodeStateRecord) -> None:
        """Write a lifecycle transition to the store and the event log (idempotent)."""
        with transaction(self._sessions) as session:
            node_store.set_lifecycle_state(
                session, record.node_id, record.state, record.reason, record.at
            )
            if record.request_drain:
                node_store.request_drain(
                    session, record.node_id, by="lifecycle", reason=record.reason, at=record.at
                )
            if record.withdraw_drain:
                node_store.withdraw_drain(session, record.node_id)
            if record.event is NodeEvent.GRACE_EXPIRED:
                # Given up, not retired: should its agent come back (revived in its slot,
                # a healed partition), it must register again and start a new life, not
                # heartbeat into a deleted node and be told to deregister.
                revoke_token(session, record.node_id)
            record_event(
                session,
                f"node.{record.state.value}",
                f"node {record.node_id}: {record.from_state.value} -> {record.state.value} "
                f"({record.event.value}): {record.reason}",
                source=ids.node_workflow_id(record.node_id),
                service=record.service,
                region=record.region,
                node_id=record.node_id,
                correlation_id=record.node_id,
                data={"from": record.from_state.value, "event": record.event.value},
                at=record.at,
            )

    @activity.defn(name="scan_node_transitions")
    async def scan_node_transitions(self, request: ScanRequest) -> ScanResult:
        """Find status transitions, signal their owners, then remember them.

        Heartbeats never become signals: only a change of status (a node went
        down, came back, started draining, appeared) does. The signals go out
        concurrently (at most ``SIGNAL_CONCURRENCY`` in flight); each node's
        transition is recorded as soon as its own signal is delivered, so a scan that
        fails part-way keeps what it did, and its retry (same ``now``) re-sends only
        what was not delivered and reports the earlier attempt's transitions once.
        A crash between one signal and its record re-sends that one, with the same
        transition id: the node's lifecycle ignores it the second time.
        The store write is a compare-and-set on the status the scan saw: two
        attempts running at once (a worker given up but not dead) record one event.
        """
        now = request.now or utcnow()
        async with heartbeating():
            total, transitions, held, decision = await asyncio.to_thread(
                self._observe_and_gate, now
            )
            earlier: list[NodeTransition] = []
            if request.now is not None and activity.in_activity() and activity.info().attempt > 1:
                earlier = await asyncio.to_thread(self._recorded_by_this_scan, now)
            recorded, failures = await self._deliver(transitions, now)
            metrics.observe_loop(ids.WORLD_STATE_ID, utcnow())
            seen = {e.node_id for e in earlier}
            done = earlier + [t for t in recorded if t.node_id not in seen]
            services = sorted({t.service for t in done})
            gate = asyncio.Semaphore(SIGNAL_CONCURRENCY)
            woken = await asyncio.gather(
                *(self._bounded(gate, self._wake_gtm(s)) for s in services),
                return_exceptions=True,
            )
        errors = failures + [w for w in woken if isinstance(w, BaseException)]
        if errors:  # retried: what was delivered is recorded and not sent again
            raise errors[0]
        return ScanResult(
            nodes=total,
            heartbeat_timeout_seconds=self._heartbeat.timeout_seconds,
            transitions=done,
            services_signalled=services,
            gate=decision.summary(),
            held=[t.node_id for t in held[:HELD_LISTED]],
            held_count=len(held),
        )

    @activity.defn(name="gate_verdict")
    def gate_verdict(self, query: GateQuery) -> RegionVerdict:
        """The gate's verdict for one region, for a node lifecycle about to give a node up."""
        now = query.now or utcnow()
        with self._sessions() as session:
            stored = gate_store.read_gate(session)
        return verdict_for(
            stored.decision,
            query.service,
            query.region,
            now,
            self._heartbeat,
            self._gate,
            operator_closed=stored.operator_closed,
            operator_reason=stored.operator_reason,
        )

    def _observe_and_gate(
        self, now: datetime
    ) -> tuple[int, list[NodeTransition], list[NodeTransition], GateDecision]:
        """Count the nodes per region, read the changed ones, decide the self-health gate
        and store its decision: (nodes, transitions to deliver, transitions the gate
        holds, decision). The store does the counting (xplane/store/node_scan.py): the
        Python work is proportional to the changes, not to the fleet."""
        with self._sessions() as session:
            view = node_scan.scan_changes(
                session, now, self._heartbeat.timeout, self._gate.silent_after(self._heartbeat)
            )
            stored = gate_store.read_gate(session)
            intake = gate_store.read_intake(session, now, 2 * self._heartbeat.interval)
        decision = decide_gate(
            GateInputs(
                regions=view.regions,
                intake=intake,
                operator_closed=stored.operator_closed,
                operator_reason=stored.operator_reason,
                operator_opened_at=stored.operator_opened_at,
            ),
            stored.decision.state if stored.decision else GateState(),
            now,
            self._heartbeat,
            self._gate,
        )
        found = [
            NodeTransition(
                node_id=o.node_id,
                service=o.service,
                region=o.region,
                previous=o.recorded_status,
                status=o.status,
            )
            for o in view.changed
        ]
        transitions, held, decision = gate_transitions(found, decision, now)
        with transaction(self._sessions) as session:
            gate_store.save_decision(session, decision)
            record_gate_changes(session, decision)
        return view.total, transitions, held, decision

    async def _deliver(
        self, transitions: list[NodeTransition], now: datetime
    ) -> tuple[list[NodeTransition], list[BaseException]]:
        """Signal each transition's node and record it: (recorded, failures).

        Delivered transitions are recorded in batches: whoever takes the writer records
        everything delivered so far (one transaction), so a thousand transitions are
        a few writes, and one waits for the store at most one batch behind its signal.
        """
        gate = asyncio.Semaphore(SIGNAL_CONCURRENCY)
        one_writer = asyncio.Lock()  # one transaction at a time (SQLite has one writer)
        delivered: list[NodeTransition] = []
        recorded: list[NodeTransition] = []

        async def deliver(t: NodeTransition) -> None:
            await self._bounded(gate, self._signal_node(t, now))
            delivered.append(t)
            async with one_writer:
                batch = delivered[:]
                delivered.clear()
                if batch:
                    recorded.extend(await asyncio.to_thread(self._record_transitions, batch, now))

        results = await asyncio.gather(*(deliver(t) for t in transitions), return_exceptions=True)
        return recorded, [r for r in results if isinstance(r, BaseException)]

    @staticmethod
    async def _bounded(gate: asyncio.Semaphore, call: Awaitable[None]) -> None:
        async with gate:
            await call

    async def _signal_node(self, t: NodeTransition, now: datetime) -> None:
        was = t.previous.value if t.previous else "new"
        await signal_with_start(
            self._client,
            workflow_type=ids.NODE_LIFECYCLE,
            workflow_id=ids.node_workflow_id(t.node_id),
            start_arg=NodeLifecycleParams(
                node_id=t.node_id,
                service=t.service,
                region=t.region,
                timings=NodeTimings.from_env(),
            ),
            signal=ids.NODE_STATUS_CHANGED,
            signal_arg=NodeStatusChange(
                status=t.status.value,
                reason=f"status {was} -> {t.status.value}",
                transition=f"{was}->{t.status.value}@{now.isoformat()}",
            ),
            task_queue=self._task_queue,
            search_attributes=ids.search_attributes(
                service=t.service, region=t.region, node=t.node_id
            ),
        )

    def _record_transitions(
        self, transitions: list[NodeTransition], now: datetime
    ) -> list[NodeTransition]:
        """Remember and log each transition whose node's recorded status is still its
        ``previous`` (one transaction); the ones recorded."""
        recorded = []
        with transaction(self._sessions) as session:
            for t in transitions:
                if self._record_one(session, t, now):
                    recorded.append(t)
        return recorded

    @staticmethod
    def _record_one(session: Session, t: NodeTransition, now: datetime) -> bool:
        was = (
            NodeRow.recorded_status.is_(None)
            if t.previous is None
            else NodeRow.recorded_status == t.previous.value
        )
        update = (
            sa.update(NodeRow)
            .where(NodeRow.id == t.node_id, was)
            .values(recorded_status=t.status.value, recorded_status_at=now)
            .execution_options(synchronize_session=False)
        )
        if cast(CursorResult[Any], session.execute(update)).rowcount != 1:
            return False  # recorded meanwhile (another attempt): its event is logged
        record_event(
            session,
            f"node.status.{t.status.value}",
            f"node {t.node_id} is {t.status.value}"
            + (f" (was {t.previous.value})" if t.previous else " (new)"),
            source=ids.WORLD_STATE_ID,
            service=t.service,
            region=t.region,
            node_id=t.node_id,
            correlation_id=t.node_id,
            data={"previous": t.previous.value if t.previous else None},
            at=now,
        )
        return True

    def _recorded_by_this_scan(self, now: datetime) -> list[NodeTransition]:
        """Transitions an earlier attempt of this scan (same ``now``) recorded."""
        with self._sessions() as session:
            rows = session.scalars(
                sa.select(EventRow)
                .where(
                    EventRow.source == ids.WORLD_STATE_ID,
                    EventRow.at == now,
                    EventRow.kind.startswith("node.status."),
                )
                .order_by(EventRow.id)
            ).all()
            return [
                NodeTransition(
                    node_id=row.node_id or "",
                    service=row.service or "",
                    region=row.region or "",
                    previous=NodeStatus(p) if (p := (row.data or {}).get("previous")) else None,
                    status=NodeStatus(row.kind.removeprefix("node.status.")),
                )
                for row in rows
            ]

    async def _wake_gtm(self, service: str) -> None:
        await signal_with_start(
            self._client,
            workflow_type=ids.GTM_LOOP,
            workflow_id=ids.gtm_id(service),
            start_arg={"service": service},
            signal=ids.WORLD_CHANGED,
            signal_arg="world-state: node status changed",
            task_queue=self._task_queue,
            search_attributes=ids.search_attributes(service=service),
        )


def region_inputs(
    observations: list[node_store.NodeObservation], missed: Set[str] = frozenset()
) -> list[RegionInput]:
    """Per (service, region): nodes neither drained nor deleted, how many are down, how
    many should still beat (not already recorded down), and how many of those have
    missed a beat (their ids in ``missed``)."""
    out: dict[tuple[str, str], RegionInput] = {}
    for o in observations:
        r = out.setdefault((o.service, o.region), RegionInput(service=o.service, region=o.region))
        if o.state in (NodeState.DRAIN, NodeState.DELETE) or o.status is NodeStatus.DRAIN:
            continue
        r.nodes += 1
        r.unready += o.status is NodeStatus.DOWN
        should_beat = o.recorded_status is not NodeStatus.DOWN
        r.beating += should_beat
        r.silent += should_beat and o.node_id in missed
    return [out[k] for k in sorted(out)]


def gate_transitions(
    found: list[NodeTransition], decision: GateDecision, now: datetime
) -> tuple[list[NodeTransition], list[NodeTransition], GateDecision]:
    """Split transitions into those acted on and the down ones the gate holds back.

    Only going down is destructive; up, drain and new nodes always pass. A held
    transition is not recorded either, so the scan finds it again once the gate
    lets it through (level-triggered). A rate-limited region lets ``budget`` pass.
    """
    passed: list[NodeTransition] = []
    held: list[NodeTransition] = []
    used: dict[tuple[str, str], int] = {}
    state = decision.state
    for t in sorted(found, key=lambda t: t.node_id):
        if t.status is NodeStatus.DOWN:
            verdict = decision.verdict(t.service, t.region)
            if verdict.verdict == "held":
                held.append(t)
                continue
            if verdict.verdict == "rate_limited":
                spent = used.get((t.service, t.region), 0)
                if verdict.budget is not None and spent >= verdict.budget:
                    held.append(t)
                    continue
                used[(t.service, t.region)] = spent + 1
                state = spend(state, t.service, t.region, now)
        passed.append(t)
    return passed, held, decision.model_copy(update={"state": state})


def record_gate_changes(session: Session, decision: GateDecision) -> None:
    """Each closing and opening: an event with its reason, and a metric."""
    closed = [_scope_label(s) for s in decision.state.holds]
    for change in decision.changes:
        service, _, region = change.scope.partition("/")
        scope = _scope_label(change.scope)
        record_event(
            session,
            f"gate.{change.kind}",
            f"self-health gate {change.kind.replace('_', ' ')} for {scope}: {change.reason}",
            source=ids.WORLD_STATE_ID,
            service=None if change.scope == EVERYWHERE else service,
            region=region or None,
            data={"scope": change.scope, "reason": change.reason},
            at=decision.at,
        )
        metrics.gate_change(scope, change.kind)
    # Every scan, so a restarted worker reports the gate as it is, not only its changes.
    for scope in {EVERYWHERE, *(v.service for v in decision.regions.values())}:
        metrics.gate_closed(_scope_label(scope), _scope_label(scope) in closed)
    for verdict in decision.regions.values():
        metrics.gate_region(verdict.service, verdict.region, verdict.verdict)


def _scope_label(scope: str) -> str:
    return "all" if scope == EVERYWHERE else scope
