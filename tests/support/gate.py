"""A stored self-health gate decision, for tests of what its readers show."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from xplane.gate import GateInputs, GateSettings, GateState, IntakeInput, RegionInput, decide_gate
from xplane.heartbeat import HeartbeatSettings
from xplane.store import gate as gate_store
from xplane.store.db import transaction

# Why the decision stored with ``stalled=True`` holds everywhere.
STALLED = "heartbeat intake stalled: no heartbeat stored for 25s while 3 nodes should beat"


def store_gate(
    sessions: sessionmaker[Session], at: datetime, *, stalled: bool, service: str = "svc"
) -> None:
    """The world-state scan's decision at ``at``: held everywhere for :data:`STALLED`,
    or open."""
    regions = [RegionInput(service=service, region="jp", nodes=3, beating=3)]
    decision = decide_gate(
        GateInputs(regions=regions, intake=IntakeInput(newest_age_seconds=25) if stalled else None),
        GateState(),
        at,
        HeartbeatSettings(),
        GateSettings(),
    )
    with transaction(sessions) as session:
        gate_store.save_decision(session, decision)
