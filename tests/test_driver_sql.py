"""DriverStatement: rows written through the driver read back as Core would write them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, bindparam, insert, select, update

from xplane.store.driver_sql import DriverStatement
from xplane.store.events import EventRow
from xplane.store.node_tables import MetricSampleRow

COLUMNS = (
    "node_id",
    "service",
    "region",
    "at",
    "cpu",
    "rtt_ms",
    "error_rate",
    "qps",
    "probes_ok",
    "probes_total",
)
INSERT = DriverStatement(
    insert(MetricSampleRow).values({c: bindparam(c) for c in COLUMNS}).inline()
)


def sample(i: int, at: datetime) -> dict[str, object]:
    qps = None if i % 2 else float(i)
    return dict(node_id=f"n{i}", service="web", region="jp", at=at, cpu=i / 10, rtt_ms=1.5,
                error_rate=0.0, qps=qps, probes_ok=i, probes_total=i)  # fmt: skip


def test_insert_round_trips_types_on_both_backends(engine: Engine) -> None:
    # An aware datetime in another zone is stored as UTC, like UTCDateTime does through Core.
    tokyo = timezone(timedelta(hours=9))
    at = datetime(2026, 11, 25, 21, 0, 0, 123456, tzinfo=tokyo)
    rows = [sample(i, at + timedelta(seconds=i)) for i in range(5)]
    with engine.begin() as conn:
        INSERT.executemany(conn, rows)
        INSERT.executemany(conn, [])  # nothing to do: no statement, no error
    with engine.connect() as conn:
        stored = (
            conn.execute(select(MetricSampleRow.__table__).order_by("node_id")).mappings().all()
        )
    assert [dict((c, r[c]) for c in COLUMNS) for r in stored] == rows
    assert stored[0]["at"].tzinfo == UTC and stored[0]["at"] == at


def test_a_missing_value_is_named_not_defaulted(engine: Engine) -> None:
    """Column defaults (probes_ok=0) are the ORM's; the driver path refuses to guess."""
    row = sample(1, datetime(2026, 11, 25, tzinfo=UTC))
    del row["probes_ok"]
    with engine.begin() as conn, pytest.raises(ValueError, match="no value for probes_ok"):
        INSERT.executemany(conn, [row])


def test_update_with_renamed_where_parameters(engine: Engine) -> None:
    table = EventRow.__table__
    at = datetime(2026, 11, 25, tzinfo=UTC)
    with engine.begin() as conn:
        conn.execute(insert(EventRow), [
            {"kind": "k", "message": f"m{i}", "source": "test", "at": at} for i in range(3)
        ])  # fmt: skip
        ids = [r.id for r in conn.execute(select(table.c.id).order_by(table.c.id))]
        rename = DriverStatement(
            update(EventRow).where(table.c.id == bindparam("b_id")).values(message=bindparam("m"))
        )
        rename.executemany(conn, [{"b_id": ids[0], "m": "first"}, {"b_id": ids[2], "m": "third"}])
    with engine.connect() as conn:
        messages = conn.scalars(select(table.c.message).order_by(table.c.id)).all()
    assert messages == ["first", "m1", "third"]
