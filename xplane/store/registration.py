"""Node registration: who may register a node id, and what a re-registration does.

The API registers nodes here; a node's bearer token is stored only as its
sha256 hash, and revoking it makes the agent register again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from xplane.domain import NodeState
from xplane.lifecycle.node_status import is_live
from xplane.store.node_tables import NodeRow
from xplane.store.nodes import get_node


@dataclass(frozen=True)
class Registration:
    node_id: str
    service: str
    region: str
    address: str
    token_hash: str
    port: int | None = None
    hostname: str | None = None
    labels: dict[str, str] | None = None
    agent_version: str | None = None


ConflictField = Literal["service", "region", "address"]


class RegistrationConflict(Exception):
    """The node id is another node's: ``field`` names what differs, never its value."""

    def __init__(self, node_id: str, field: ConflictField) -> None:
        self.node_id, self.field = node_id, field
        super().__init__(f"node {node_id!r} is registered with another {field}")


class RegistrationRefused(Exception):
    """The caller may not re-register (or create) this node id."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        super().__init__(f"not allowed to register node {node_id!r}")


# Decides, with the node as stored (None: no such node yet), whether the caller may
# register this id. The API's answer depends on the caller's token (routes_nodes).
Authorize = Callable[[NodeRow | None], bool]


def only_new_nodes(existing: NodeRow | None) -> bool:
    """The default :data:`Authorize`: create new nodes, never re-register an existing one."""
    return existing is None


def registration_conflict(
    existing: NodeRow, reg: Registration, now: datetime, timeout: timedelta
) -> RegistrationConflict | None:
    """Why ``reg`` may not re-register ``existing``, or None (pure).

    A node never moves to another service or region, whatever its state: an id is
    only ever re-registered where it lives. Another address is refused while the
    node is live (the node at the old address is still running).
    """
    if existing.service != reg.service:
        return RegistrationConflict(reg.node_id, "service")
    if existing.region != reg.region:
        return RegistrationConflict(reg.node_id, "region")
    if existing.address != reg.address and is_live(existing, now, timeout):
        return RegistrationConflict(reg.node_id, "address")
    return None


def register_node(
    session: Session,
    reg: Registration,
    now: datetime,
    timeout: timedelta,
    *,
    authorize: Authorize = only_new_nodes,
) -> tuple[NodeRow, bool]:
    """Insert or refresh a node; return (row, created).

    ``authorize`` is asked first, with the locked row (or None):
    :class:`RegistrationRefused` when it says no. Then
    :func:`registration_conflict` (:class:`RegistrationConflict`). Same id and
    address: the same node again (fresh token, metadata refreshed, lifecycle
    kept). Another address of a node no longer live, or a node given up: the id
    starts a new life (lifecycle back to idle).
    """
    row = session.get(NodeRow, reg.node_id, with_for_update=True)
    if not authorize(row):
        raise RegistrationRefused(reg.node_id)
    created = row is None
    if row is None:
        row = NodeRow(id=reg.node_id, registered_at=now, state=NodeState.IDLE.value)
        session.add(row)
    else:
        conflict = registration_conflict(row, reg, now, timeout)
        if conflict is not None:
            raise conflict
        if row.address != reg.address or row.state == NodeState.DELETE.value:
            _reset(row, now)  # silent elsewhere, or given up and come back: a new life
    row.service, row.region, row.address = reg.service, reg.region, reg.address
    row.port, row.hostname, row.agent_version = reg.port, reg.hostname, reg.agent_version
    row.labels = dict(reg.labels or {})
    row.token_hash = reg.token_hash
    return row, created


def _reset(row: NodeRow, now: datetime) -> None:
    row.registered_at, row.state, row.state_reason = now, NodeState.IDLE.value, "re-registered"
    row.state_changed_at = now
    row.drain_requested, row.drain_requested_by, row.drain_reason = False, None, None
    row.drain_requested_at = None
    row.last_heartbeat_at = row.reported_status = None
    row.cpu = row.rtt_ms = row.error_rate = row.qps = None
    row.probes_ok = row.probes_total = None
    row.health_check_ok, row.health_checked_at = None, None
    row.recorded_status, row.recorded_status_at = None, None


def revoke_token(session: Session, node_id: str) -> None:
    """The node's token stops working: its next heartbeat is refused (401) and the agent
    registers again, which gives a node that was given up a new life (see register_node)."""
    row = get_node(session, node_id)
    row.token_hash = f"revoked-{uuid.uuid4().hex}"  # unique, and no sha256 hex digest


def node_for_token(session: Session, token_hash: str) -> str | None:
    return session.scalar(select(NodeRow.id).where(NodeRow.token_hash == token_hash))
