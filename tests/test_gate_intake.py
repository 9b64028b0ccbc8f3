"""Heartbeat intake health: the API's writer reports it, the world-state scan's gate reads it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from activities.nodes import NodeActivities, ScanRequest
from xplane.api.writer import HeartbeatWriter
from xplane.cli.main import app
from xplane.domain import NodeStatus
from xplane.gate import GateQuery, GateSettings
from xplane.heartbeat import HeartbeatSettings
from xplane.status import store_report
from xplane.store import gate as gate_store
from xplane.store import heartbeats
from xplane.store import nodes as node_store
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.events import list_events
from xplane.store.heartbeats import apply_heartbeats
from xplane.store.registration import Registration, register_node

HB = HeartbeatSettings(interval=timedelta(seconds=2))  # timeout 6 s
NODES = [f"{region}-{i}" for region in ("jp", "us") for i in range(3)]


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, sessionmaker[Session]]]:
    import xplane.store.tables  # noqa: F401

    url = f"sqlite:///{tmp_path}/intake.db"
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    yield url, make_sessionmaker(engine)
    engine.dispose()


def _register(sessions: sessionmaker[Session], at: datetime) -> None:
    with transaction(sessions) as session:
        for i, node in enumerate(NODES):
            register_node(
                session,
                Registration(
                    node_id=node, service="svc", region=node[:2], address=f"10.0.0.{i + 1}",
                    token_hash=node,
                ),
                at,
                HB.timeout,
            )  # fmt: skip


def _beat(node: str, at: datetime) -> heartbeats.Heartbeat:
    return heartbeats.Heartbeat(node, node, at, 0.1, 1.0, 0.0, None, 0, 0, "up")


async def test_the_writer_reports_beats_received_and_stored(
    db: tuple[str, sessionmaker[Session]],
) -> None:
    _, sessions = db
    _register(sessions, utcnow())
    writer = HeartbeatWriter(sessions, HB.timeout, max_wait=0)
    writer.start()
    try:
        for _ in range(3):  # a beat per node every 0.6 s, past the 1 s report interval
            await asyncio.gather(*(writer.submit(_beat(n, utcnow())) for n in NODES))
            await asyncio.sleep(0.6)
    finally:
        await writer.stop()
    with sessions() as session:
        intake = gate_store.read_intake(session, utcnow(), timedelta(seconds=10))
    assert intake is not None and intake.newest_age_seconds < 2
    assert intake.received_per_s > 3 and intake.written_per_s == pytest.approx(
        intake.received_per_s, rel=0.2
    )


async def test_a_stalled_intake_holds_everywhere(db: tuple[str, sessionmaker[Session]]) -> None:
    """Nodes' heartbeats are still fresh, but the API stored none for 5 s (2 intervals are
    4 s): the scan holds every region before any node even looks silent."""
    _, sessions = db
    now = datetime.now(UTC)
    _register(sessions, now - timedelta(seconds=10))
    with transaction(sessions) as session:
        apply_heartbeats(session, [_beat(n, now - timedelta(seconds=5)) for n in NODES], HB.timeout)
        for node in NODES:
            node_store.record_status(session, node, NodeStatus.UP, now)
        gate_store.report_intake(session, "api-1", now - timedelta(seconds=5), 3.0, 3.0)
    acts = NodeActivities(sessions, None, "q", HB, GateSettings())  # type: ignore[arg-type]
    result = await acts.scan_node_transitions(ScanRequest(now=now))
    assert result.transitions == [] and "*" in result.gate["holds"]
    assert "heartbeat intake stalled" in result.gate["holds"]["*"]
    with sessions() as session:
        (closed,) = list_events(session, kind_prefix="gate.closed")
    assert "heartbeat intake stalled" in closed.message
    verdict = acts.gate_verdict(GateQuery(service="svc", region="jp", now=now))
    assert verdict.verdict == "held"


def test_intake_rates_are_summed_over_the_replicas_that_reported_recently(
    db: tuple[str, sessionmaker[Session]],
) -> None:
    _, sessions = db
    now = datetime.now(UTC)
    with transaction(sessions) as session:
        gate_store.report_intake(session, "api-1", now - timedelta(seconds=1), 1.0, 1.0)
        gate_store.report_intake(session, "api-2", now - timedelta(seconds=3), 1.5, 1.4)
        gate_store.report_intake(session, "api-3", now - timedelta(seconds=30), 9.0, 9.0)  # gone
    with sessions() as session:
        intake = gate_store.read_intake(session, now, 2 * HB.interval)
    assert intake is not None
    assert (intake.received_per_s, intake.written_per_s) == (2.5, pytest.approx(2.4))
    assert intake.newest_age_seconds == pytest.approx(1, abs=0.01)


async def test_beats_short_of_the_nodes_rate_across_replicas_hold_everywhere(
    db: tuple[str, sessionmaker[Session]],
) -> None:
    """4 of 8 nodes, two in each region, missed a beat (not yet down); the two API
    replicas together receive 2 beats/s of the 4/s the 8 nodes should send: once that has
    lasted 1.25 intervals (2.5 s), the scan holds everywhere."""
    _, sessions = db
    nodes = [f"{region}-{i}" for region in ("jp", "us") for i in range(4)]
    missed = {"jp-0", "jp-1", "us-0", "us-1"}
    t0 = datetime.now(UTC)
    with transaction(sessions) as session:
        for i, node in enumerate(nodes):
            register_node(
                session,
                Registration(
                    node_id=node, service="svc", region=node[:2], address=f"10.0.1.{i + 1}",
                    token_hash=node,
                ),
                t0 - timedelta(seconds=30),
                HB.timeout,
            )  # fmt: skip
            node_store.record_status(session, node, NodeStatus.UP, t0)
        apply_heartbeats(
            session, [_beat(n, t0 - timedelta(seconds=2.6)) for n in missed], HB.timeout
        )
    acts = NodeActivities(sessions, None, "q", HB, GateSettings())  # type: ignore[arg-type]
    for at in (t0, t0 + timedelta(seconds=3)):
        with transaction(sessions) as session:
            live = [_beat(n, at) for n in nodes if n not in missed]
            apply_heartbeats(session, live, HB.timeout)
            gate_store.report_intake(session, "api-1", at, 1.0, 1.0)
            gate_store.report_intake(session, "api-2", at, 1.0, 1.0)
        result = await acts.scan_node_transitions(ScanRequest(now=at))
        assert result.transitions == []
        if at == t0:  # short, not yet for long enough
            assert result.gate["holds"] == {}
    holds = result.gate["holds"]
    assert "heartbeat intake low: 2.0/s received of 4.0/s expected from 8 nodes" in holds["*"]
    assert acts.gate_verdict(GateQuery(service="svc", region="us", now=at)).verdict == "held"


def test_gate_cli_close_open_and_status(db: tuple[str, sessionmaker[Session]]) -> None:
    url, _ = db
    runner = CliRunner()
    shown = runner.invoke(app, ["gate", "--db", url])
    assert shown.exit_code == 0 and shown.output.startswith("open")
    closed = runner.invoke(app, ["gate", "close", "--reason", "core switch change", "--db", url])
    assert closed.exit_code == 0, closed.output
    shown = runner.invoke(app, ["gate", "--db", url])
    assert "CLOSED by operator: core switch change" in shown.output
    assert store_report(url).gate == ["CLOSED by operator: core switch change"]
    opened = runner.invoke(app, ["gate", "open", "--reason", "done", "--db", url])
    assert opened.exit_code == 0
    assert runner.invoke(app, ["gate", "--db", url]).output.startswith("open")
    assert runner.invoke(app, ["gate", "close", "--db", url]).exit_code != 0  # --reason needed
