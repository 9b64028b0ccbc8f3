"""The self-health gate in the store: its last decision, the operator's switch, intake health.

Stored here rather than in the world-state workflow so every reader gets it the
same way and at once: GTM, the autoscaler and node lifecycles read it in the
activities they already run, the CLI closes it while Temporal itself is down
(exactly when an operator may want to), and it survives worker restarts. The
world-state scan is the only writer of the decision; the operator columns are
written only by ``xplane gate close|open``, so neither overwrites the other.

``heartbeat_intake`` has one row per API replica, refreshed (at most once a
second) in the same transaction as a heartbeat batch: its age says whether beats
are still being stored, its rates whether they are stored as fast as they arrive.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import JSON, Boolean, Float, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.durations import format_duration
from xplane.gate import EVERYWHERE, GateDecision, GateSettings, IntakeInput
from xplane.heartbeat import HeartbeatSettings
from xplane.store.db import Base, UTCDateTime, utcnow
from xplane.store.events import record_event

GATE_ID = "gate"


class GateRow(Base):
    __tablename__ = "control_gate"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    decision: Mapped[dict[str, object] | None] = mapped_column(JSON)
    operator_closed: Mapped[bool] = mapped_column(Boolean, default=False)
    operator_reason: Mapped[str | None] = mapped_column(String(512))
    operator_by: Mapped[str | None] = mapped_column(String(128))
    operator_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IntakeRow(Base):
    __tablename__ = "heartbeat_intake"

    replica: Mapped[str] = mapped_column(String(255), primary_key=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    received_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    written_per_s: Mapped[float] = mapped_column(Float, default=0.0)


@dataclass(frozen=True)
class StoredGate:
    decision: GateDecision | None
    operator_closed: bool = False
    operator_reason: str | None = None
    operator_changed_at: datetime | None = None

    @property
    def operator_opened_at(self) -> datetime | None:
        return None if self.operator_closed else self.operator_changed_at


def read_gate(session: Session) -> StoredGate:
    row = session.get(GateRow, GATE_ID)
    if row is None:
        return StoredGate(decision=None)
    decision = GateDecision.model_validate(row.decision) if row.decision else None
    return StoredGate(
        decision=decision,
        operator_closed=row.operator_closed,
        operator_reason=row.operator_reason,
        operator_changed_at=row.operator_changed_at,
    )


def _row(session: Session) -> GateRow:
    row = session.get(GateRow, GATE_ID, with_for_update=True)
    if row is None:
        row = GateRow(id=GATE_ID, operator_closed=False)
        session.add(row)
    return row


def save_decision(session: Session, decision: GateDecision) -> None:
    row = _row(session)
    row.decided_at, row.decision = decision.at, decision.model_dump(mode="json")


def set_operator(
    session: Session, closed: bool, reason: str, by: str = "operator", at: datetime | None = None
) -> None:
    """``xplane gate close|open``: recorded as an event with its reason."""
    at = at or utcnow()
    row = _row(session)
    row.operator_closed, row.operator_reason = closed, reason
    row.operator_by, row.operator_changed_at = by, at
    kind = "closed" if closed else "opened"
    record_event(
        session,
        f"gate.operator_{kind}",
        f"self-health gate {kind} by {by}: {reason}",
        source=by,
        data={"reason": reason},
        at=at,
    )


def report_intake(
    session: Session, replica: str, at: datetime, received_per_s: float, written_per_s: float
) -> None:
    row = session.get(IntakeRow, replica)
    if row is None:
        row = IntakeRow(replica=replica)
        session.add(row)
    row.updated_at, row.received_per_s, row.written_per_s = at, received_per_s, written_per_s


def read_intake(session: Session, now: datetime, recent: timedelta) -> IntakeInput | None:
    """Newest report's age; rates summed over the replicas that reported within ``recent``."""
    rows = list(session.scalars(select(IntakeRow)))
    if not rows:
        return None
    newest = max(r.updated_at for r in rows)
    fresh = [r for r in rows if now - r.updated_at <= recent]
    return IntakeInput(
        newest_age_seconds=max(0.0, (now - newest).total_seconds()),
        received_per_s=sum(r.received_per_s for r in fresh),
        written_per_s=sum(r.written_per_s for r in fresh),
    )


def describe(
    stored: StoredGate, now: datetime, heartbeat: HeartbeatSettings, settings: GateSettings
) -> list[str]:
    """The gate for humans (``xplane gate``, ``xplane status``): one line per hold."""
    lines: list[str] = []
    if stored.operator_closed:
        lines.append(f"CLOSED by operator: {stored.operator_reason or 'no reason given'}")
    decision = stored.decision
    if decision is None:
        return lines or ["open (no world-state scan has judged yet)"]
    age = now - decision.at
    if age > settings.stale(heartbeat):
        seconds = timedelta(seconds=round(age.total_seconds()))
        lines.append(f"HELD everywhere: gate not refreshed for {format_duration(seconds)}")
    for scope, hold in sorted(decision.state.holds.items()):
        where = "everywhere" if scope == EVERYWHERE else f"service {scope}"
        since = f"since {hold.since:%H:%M:%S}"
        clearing = f", inputs healthy since {hold.clear_since:%H:%M:%S}" if hold.clear_since else ""
        lines.append(f"HELD {where} ({since}{clearing}): {'; '.join(hold.reasons)}")
    for scope in decision.state.rate_limited:
        lines.append(f"rate limited {scope}: {decision.regions[scope].reason}")
    return lines or ["open"]
