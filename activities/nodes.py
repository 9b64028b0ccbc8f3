"""Activities over the node store: lifecycle state writes and the world-state scan."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity
from temporalio.client import Client

from workflows import ids
from workflows.node_lifecycle import (
    HeartbeatChange,
    NodeLifecycleParams,
    NodeStateRecord,
    NodeTimings,
)
from xplane.domain import NodeState, NodeStatus
from xplane.heartbeat import HeartbeatSettings
from xplane.lifecycle.node_fsm import NodeEvent
from xplane.observability import metrics
from xplane.store import nodes as node_store
from xplane.store.db import transaction, utcnow
from xplane.store.events import record_event
from xplane.temporal_client import signal_with_start


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


class NodeActivities:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        client: Client,
        task_queue: str,
        heartbeat: HeartbeatSettings = HeartbeatSettings(),
    ) -> None:
        self._sessions = session_factory
        self._client = client
        self._task_queue = task_queue
        self._heartbeat = heartbeat

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
            if record.event is NodeEvent.GRACE_EXPIRED:
                # Given up, not retired: should its agent come back (revived in its slot,
                # a healed partition), it must register again and start a new life, not
                # heartbeat into a deleted node and be told to deregister.
                node_store.revoke_token(session, record.node_id)
            record_event(
                session,
                f"node.{record.state.value}",
                f"node {record.node_id}: {record.from_state.value} -> {record.state.value} "
                f"({record.event.value}): {record.reason}",
                source=ids.node_id(record.node_id),
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
        down, came back, started draining, appeared) does. Signals go out before
        the transition is recorded, so a crash in between re-sends (at least
        once) rather than losing one.
        """
        now = request.now or utcnow()
        with self._sessions() as session:
            observations = node_store.scan_nodes(session, now, self._heartbeat.timeout)
        transitions = [
            NodeTransition(
                node_id=o.node_id,
                service=o.service,
                region=o.region,
                previous=o.recorded_status,
                status=o.status,
            )
            for o in observations
            if o.status != o.recorded_status and o.state is not NodeState.DELETE
        ]
        for t in transitions:
            was = t.previous.value if t.previous else "new"
            await signal_with_start(
                self._client,
                workflow_type=ids.NODE_LIFECYCLE,
                workflow_id=ids.node_id(t.node_id),
                start_arg=NodeLifecycleParams(
                    node_id=t.node_id,
                    service=t.service,
                    region=t.region,
                    timings=NodeTimings.from_env(),
                ),
                signal="heartbeat_state_changed",
                signal_arg=HeartbeatChange(
                    status=t.status.value,
                    reason=f"status {was} -> {t.status.value}",
                ),
                task_queue=self._task_queue,
                search_attributes=ids.search_attributes(
                    service=t.service, region=t.region, node=t.node_id
                ),
            )
        metrics.observe_loop(ids.WORLD_STATE_ID, utcnow())
        services = sorted({t.service for t in transitions})
        for service in services:
            await self._wake_gtm(service)
        if transitions:
            with transaction(self._sessions) as session:
                for t in transitions:
                    node_store.record_status(session, t.node_id, t.status, now)
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
                        at=now,
                    )
        return ScanResult(
            nodes=len(observations),
            heartbeat_timeout_seconds=self._heartbeat.timeout_seconds,
            transitions=transitions,
            services_signalled=services,
        )

    async def _wake_gtm(self, service: str) -> None:
        await signal_with_start(
            self._client,
            workflow_type=ids.GTM_LOOP,
            workflow_id=ids.gtm_id(service),
            start_arg={"service": service},
            signal="world_changed",
            signal_arg="world-state: node status changed",
            task_queue=self._task_queue,
            search_attributes=ids.search_attributes(service=service),
        )
