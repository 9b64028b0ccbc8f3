"""The node store: registration, batched heartbeats, samples and what the loops read and write.

The status rules it applies are pure and tested in ``test_node_status.py``.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from xplane.domain import NodeState, NodeStatus
from xplane.store import nodes as store
from xplane.store.db import make_sessionmaker, transaction
from xplane.store.events import list_events
from xplane.store.heartbeats import Heartbeat, apply_heartbeats
from xplane.store.node_tables import NodeRow
from xplane.store.registration import (
    Registration,
    RegistrationConflict,
    RegistrationRefused,
    register_node,
    registration_conflict,
)
from xplane.store.samples import metric_samples, prune_samples

T0 = datetime(2030, 1, 1, tzinfo=UTC)
TIMEOUT = timedelta(seconds=30)


def reg(node_id: str = "jp-1", address: str = "10.0.0.1", token: str = "h1") -> Registration:
    return Registration(
        node_id=node_id, service="web", region="jp", address=address, token_hash=token
    )


def YES(existing: NodeRow | None) -> bool:
    return True


def beat(node_id: str = "jp-1", token: str = "h1", at: datetime = T0, **kw: object) -> Heartbeat:
    values: dict[str, object] = {
        "cpu": 0.4,
        "rtt_ms": 20.0,
        "error_rate": 0.0,
        "qps": 5.0,
        "probes_ok": 1,
        "probes_total": 1,
        "reported_status": None,
    }
    values.update(kw)
    return Heartbeat(node_id=node_id, token_hash=token, at=at, **values)  # type: ignore[arg-type]


def test_store_round_trip(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        row, created = register_node(s, reg(), T0, TIMEOUT)
        assert created and row.state == "idle"
        register_node(s, reg("jp-2", "10.0.0.2", "h2"), T0, TIMEOUT)
        register_node(s, replace(reg("sg-1", "10.0.1.1", "h3"), region="sg"), T0, TIMEOUT)

    # Batch: a valid beat, a stale token, a second beat of the same node.
    later = T0 + timedelta(seconds=5)
    with transaction(factory) as s:
        results = apply_heartbeats(
            s,
            [beat(), beat("jp-2", "stale"), beat(at=later, cpu=0.6, reported_status="drain")],
            TIMEOUT,
        )
    assert results[1] is None
    assert results[0] is not None and results[0].status is NodeStatus.UP
    assert results[2] is not None and results[2].status is NodeStatus.DRAIN
    assert results[2].action == "none"  # the node's own drain; nobody asked it to

    with factory() as s:
        samples = metric_samples(s, "web", "jp", T0)
        assert [(x.node_id, x.cpu) for x in samples] == [("jp-1", 0.4), ("jp-1", 0.6)]
        assert metric_samples(s, "web", "jp", later + timedelta(seconds=1)) == []
        node = store.get_node(s, "jp-1")
        assert (node.cpu, node.reported_status, node.last_heartbeat_at) == (0.6, "drain", later)

    # Same id, other address: refused while live, taken over once silent.
    with transaction(factory) as s, pytest.raises(RegistrationConflict):
        register_node(s, reg(address="10.9.9.9", token="h9"), later, TIMEOUT, authorize=YES)
    silent = later + TIMEOUT + timedelta(seconds=1)
    with transaction(factory) as s:
        row, created = register_node(
            s, reg(address="10.9.9.9", token="h9"), silent, TIMEOUT, authorize=YES
        )
        assert not created and row.address == "10.9.9.9" and row.last_heartbeat_at is None

    # What the world-state loop uses.
    now = T0 + timedelta(seconds=10)
    with transaction(factory) as s:
        apply_heartbeats(s, [beat("jp-2", "h2", at=now)], TIMEOUT)
        store.set_lifecycle_state(s, "jp-2", NodeState.ACTIVE, "warmed up", now)
        store.record_health_check(s, "jp-2", False, now)
        store.request_drain(s, "sg-1", by="autoscaler", reason="scale in", at=now)
    with factory() as s:
        observed = {o.node_id: o for o in store.scan_nodes(s, now, TIMEOUT)}
    assert observed["jp-2"].status is NodeStatus.UP and observed["jp-2"].recorded_status is None
    assert observed["jp-1"].status is NodeStatus.DOWN  # taken over, no heartbeat yet
    assert observed["sg-1"].status is NodeStatus.DRAIN
    with transaction(factory) as s:
        store.record_status(s, "jp-2", NodeStatus.UP, now)
    with factory() as s:
        assert store.scan_nodes(s, now, TIMEOUT)[1].recorded_status is NodeStatus.UP
        world = store.world_snapshot(s, now, TIMEOUT, service="web")
        events = list_events(s, node_id="sg-1")
    by_id = {n.id: n for n in world.nodes}
    assert set(by_id) == {"jp-1", "jp-2", "sg-1"}
    assert by_id["jp-2"].state is NodeState.ACTIVE and by_id["jp-2"].health_check_ok is False
    assert by_id["jp-2"].heartbeat_age_seconds == 0 and by_id["jp-2"].cpu == 0.4
    assert [(e.kind, e.source) for e in events] == [("node.drain_requested", "autoscaler")]

    with transaction(factory) as s:
        assert prune_samples(s, older_than=T0 + timedelta(seconds=6)) == 2
    with factory() as s:
        assert [x.node_id for x in metric_samples(s, "web", "jp", T0)] == ["jp-2"]
        with pytest.raises(store.NodeNotFound):
            store.get_node(s, "ghost")


def test_region_summaries_count_known_regions_and_health() -> None:
    def row(node_id: str, region: str, **kw: object) -> NodeRow:
        values: dict[str, object] = {
            "id": node_id,
            "service": "web",
            "region": region,
            "address": "10.0.0.1",
            "state": "active",
            "drain_requested": False,
            "last_heartbeat_at": T0,
        }
        values.update(kw)
        return NodeRow(**values)

    rows = [
        row("a", "jp"),
        row("b", "jp", last_heartbeat_at=None),
        row("c", "jp", drain_requested=True),
        row("d", "jp", state="delete"),
    ]
    summaries = store.region_summaries(rows, T0, TIMEOUT, known={"web": {"jp", "sg"}})
    jp, sg = summaries
    assert (jp.region, jp.nodes, jp.health) == ("jp", 4, 0.5)
    assert jp.by_status == {"up": 2, "down": 1, "drain": 1}
    assert (sg.region, sg.nodes, sg.health) == ("sg", 0, 0.0)


def test_an_older_batch_committed_later_does_not_move_the_node_back(engine: Engine) -> None:
    """Concurrent batches (PostgreSQL) can commit out of order: the node keeps its newest
    heartbeat, and both samples are still kept for the aggregator."""
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        register_node(s, reg(), T0, TIMEOUT)
    newer, older = T0 + timedelta(seconds=2), T0 + timedelta(seconds=1)
    with transaction(factory) as s:
        apply_heartbeats(s, [beat(at=newer, cpu=0.9, reported_status="drain")], TIMEOUT)
    with transaction(factory) as s:
        [late] = apply_heartbeats(s, [beat(at=older, cpu=0.1, reported_status="up")], TIMEOUT)
    assert late is not None  # accepted (and answered): only the node's latest state is kept
    with factory() as s:
        node = store.get_node(s, "jp-1")
        assert (node.last_heartbeat_at, node.cpu, node.reported_status) == (newer, 0.9, "drain")
        samples = metric_samples(s, "web", "jp", T0)
        assert sorted(x.cpu for x in samples) == [0.1, 0.9]


def stored(node_id: str = "jp-1", **kw: object) -> NodeRow:
    values: dict[str, object] = {
        "id": node_id,
        "service": "web",
        "region": "jp",
        "address": "10.0.0.1",
        "state": "active",
        "token_hash": "h1",
        "registered_at": T0,
        "last_heartbeat_at": T0,
    }
    values.update(kw)
    return NodeRow(**values)


@pytest.mark.parametrize(
    ("existing", "request_", "field"),
    [
        (stored(), reg(), None),  # the same node again
        (stored(), replace(reg(), service="api"), "service"),
        (stored(), replace(reg(), region="sg"), "region"),
        # Given up, silent, whatever: a node never moves to another region.
        (stored(state="delete", last_heartbeat_at=None), replace(reg(), region="sg"), "region"),
        (stored(), reg(address="10.9.9.9"), "address"),  # live elsewhere
        # Silent for longer than the timeout: the id may start a new life elsewhere.
        (stored(last_heartbeat_at=T0 - TIMEOUT * 2), reg(address="10.9.9.9"), None),
    ],
)
def test_registration_conflict_names_only_the_field(
    existing: NodeRow, request_: Registration, field: str | None
) -> None:
    conflict = registration_conflict(existing, request_, T0, TIMEOUT)
    assert (conflict and conflict.field) == field
    if conflict is not None:
        assert existing.address not in str(conflict) and "sg" not in str(conflict)


def test_register_node_asks_authorize_first_and_never_moves_a_node(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    seen: list[str | None] = []

    def record(existing: NodeRow | None) -> bool:
        seen.append(existing.token_hash if existing is not None else None)
        return True

    with transaction(factory) as s:
        register_node(s, reg(), T0, TIMEOUT, authorize=record)
    assert seen == [None]  # asked about a new node too

    # By default an existing node cannot be registered again, even the same way.
    with transaction(factory) as s, pytest.raises(RegistrationRefused):
        register_node(s, reg(token="h2"), T0, TIMEOUT)
    # Refused before any conflict is looked at: an unauthorised caller learns no field.
    moved = replace(reg(address="10.9.9.9", token="h2"), region="sg")
    with transaction(factory) as s, pytest.raises(RegistrationRefused):
        register_node(s, moved, T0, TIMEOUT, authorize=lambda _: False)
    # Authorised, given up and silent: still never moved to another region.
    with transaction(factory) as s:
        store.set_lifecycle_state(s, "jp-1", NodeState.DELETE, "given up", T0)
    later = T0 + TIMEOUT * 2
    with transaction(factory) as s, pytest.raises(RegistrationConflict) as refused:
        register_node(s, moved, later, TIMEOUT, authorize=record)
    assert refused.value.field == "region" and seen[-1] == "h1"
    with factory() as s:
        node = store.get_node(s, "jp-1")
        assert (node.region, node.address, node.token_hash) == ("jp", "10.0.0.1", "h1")
    # In its own region it starts a new life.
    with transaction(factory) as s:
        row, created = register_node(s, reg(token="h3"), later, TIMEOUT, authorize=record)
        assert not created and (row.state, row.token_hash) == ("idle", "h3")
