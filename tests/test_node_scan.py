"""The store-side world-state scan (xplane/store/node_scan.py) gives what the Python
scan gives: the same per-region gate inputs and the same changed nodes, on SQLite and
PostgreSQL, over every combination of the fields the status rule reads."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from activities.nodes import region_inputs
from xplane.domain import NodeState
from xplane.store.db import make_sessionmaker, transaction
from xplane.store.node_scan import scan_changes
from xplane.store.node_tables import NodeRow
from xplane.store.nodes import scan_nodes

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TIMEOUT = timedelta(seconds=30)
SILENT = timedelta(seconds=12.5)  # missed a beat: no heartbeat for longer

STATES = [s.value for s in (NodeState.IDLE, NodeState.ACTIVE, NodeState.DRAIN, NodeState.DELETE)]
BEATS = [
    None,
    NOW - TIMEOUT * 2,
    NOW - TIMEOUT,
    NOW - TIMEOUT + timedelta(microseconds=1),
    NOW - SILENT,
    NOW - SILENT + timedelta(microseconds=1),
    NOW,
]
REPORTED = [None, "up", "drain"]
PROBES = [(None, None), (0, 0), (0, 3), (2, 3)]
RECORDED = [None, "up", "down", "drain"]
DRAIN = [False, True]


def _rows() -> list[NodeRow]:
    rows = []
    combos = itertools.product(STATES, BEATS, REPORTED, PROBES, RECORDED, DRAIN)
    for i, (state, beat, reported, (ok, total), recorded, drain) in enumerate(combos):
        rows.append(
            NodeRow(
                id=f"n{i:05d}",
                service="web" if i % 3 else "api",
                region=f"r{i % 4}",
                address=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
                token_hash=f"h{i}",
                state=state,
                registered_at=NOW - timedelta(days=1),
                last_heartbeat_at=beat,
                reported_status=reported,
                probes_ok=ok,
                probes_total=total,
                recorded_status=recorded,
                drain_requested=drain,
            )
        )
    return rows


def test_counts_and_changes_match_the_python_scan(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    rows = _rows()
    with transaction(factory) as s:
        s.add_all(rows)
    with factory() as s:
        observations = scan_nodes(s, NOW, TIMEOUT)
        view = scan_changes(s, NOW, TIMEOUT, SILENT)
    assert view.total == len(rows) == len(observations)
    missed = {
        r.id for r in rows if r.last_heartbeat_at is None or r.last_heartbeat_at < NOW - SILENT
    }
    assert view.regions == region_inputs(observations, missed)
    # Silent but not yet down (missed a beat, within the timeout) is counted as well.
    assert 0 < sum(r.silent for r in view.regions) < sum(r.beating for r in view.regions)
    expected = [
        o for o in observations if o.status != o.recorded_status and o.state is not NodeState.DELETE
    ]
    assert view.changed == expected
    # The matrix reaches every branch: changes of every kind, and unchanged nodes.
    assert {o.status.value for o in view.changed} == {"up", "down", "drain"}
    assert 0 < len(view.changed) < len(rows)


def test_an_idle_fleet_has_no_changes(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    with transaction(factory) as s:
        for i in range(20):
            s.add(
                NodeRow(
                    id=f"n{i}", service="web", region="jp", address=f"10.0.0.{i}",
                    token_hash=f"h{i}", state="active", registered_at=NOW,
                    last_heartbeat_at=NOW - timedelta(seconds=5), recorded_status="up",
                )
            )  # fmt: skip
    with factory() as s:
        view = scan_changes(s, NOW, TIMEOUT, SILENT)
    assert view.changed == []
    [region] = view.regions
    assert (region.nodes, region.unready, region.beating, region.silent) == (20, 0, 20, 0)
