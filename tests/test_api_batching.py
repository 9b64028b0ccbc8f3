"""Concurrent heartbeats from many nodes: every one stored, in fewer transactions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.orm import sessionmaker

from tests.test_api_support import (
    DB_BACKENDS,
    Api,
    bearer,
    module_database,
    reset_database,
    running_api,
)
from xplane.store import nodes as store
from xplane.store.db import make_sessionmaker
from xplane.store.heartbeats import Heartbeat, HeartbeatResult
from xplane.store.node_tables import MetricSampleRow

NODES = 20
BEATS_PER_NODE = 3


@pytest.fixture(params=DB_BACKENDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    for url, engine in module_database(request.param, str(tmp_path_factory.mktemp("api"))):
        reset_database(engine)
        with running_api(engine, url, batch_max_wait=0.005) as running:
            yield running


async def test_concurrent_heartbeats_are_all_stored_in_batches(api: Api) -> None:
    registered = [
        api.registered(node_id=f"jp-{i:03d}", address=f"10.0.{i // 250}.{i % 250 + 1}")
        for i in range(NODES)
    ]
    writer = api.app.state.ctx.writer
    batches_before = writer.stats.batches

    async def beat(client: httpx.AsyncClient, node_id: str, token: str, n: int) -> int:
        body = {"node_id": node_id, "cpu": n / 10, "rtt_ms": float(n), "error_rate": 0.0}
        response = await client.post("/nodes/heartbeat", json=body, headers=bearer(token))
        return response.status_code

    limits = httpx.Limits(max_connections=NODES)
    async with httpx.AsyncClient(base_url=api.url, limits=limits, timeout=60) as client:
        codes = await asyncio.gather(
            *(beat(client, nid, tok, n) for n in range(BEATS_PER_NODE) for nid, tok in registered)
        )

    total = NODES * BEATS_PER_NODE
    assert codes == [200] * total
    assert api.counts()[1] == total  # every sample row is there
    with make_sessionmaker(api.engine)() as session:
        rows = store.list_nodes(session, service="web", region="jp")
        assert all(r.last_heartbeat_at is not None and r.cpu is not None for r in rows)
        per_node = {r.node_id for r in session.query(MetricSampleRow)}
    assert len(per_node) == NODES
    batches = writer.stats.batches - batches_before
    assert writer.stats.largest_batch > 1 and batches < total  # coalesced


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_batches_in_flight_never_exceed_the_writer_concurrency(concurrency: int) -> None:
    """SQLite gets one batch at a time; a server database several, and no more."""
    import threading
    import time
    from datetime import UTC, datetime, timedelta

    from xplane.api.writer import HeartbeatWriter

    in_flight, peak, lock = 0, 0, threading.Lock()

    def slow_write(beats: list[Heartbeat]) -> list[HeartbeatResult | None]:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)
        with lock:
            in_flight -= 1
        return [HeartbeatResult(b.node_id, "active", store.NodeStatus.UP, "none") for b in beats]

    writer = HeartbeatWriter(
        sessionmaker(),  # never used: the write is replaced
        timedelta(seconds=30),
        max_size=2,
        max_wait=0,
        concurrency=concurrency,
    )
    writer._write_sync = slow_write  # type: ignore[method-assign]
    writer.start()
    now = datetime.now(UTC)
    beats = [Heartbeat(f"n{i}", "h", now, 0.1, 1.0, 0.0, None, 0, 0, None) for i in range(12)]
    results = await asyncio.gather(*(writer.submit(b) for b in beats))
    await writer.stop()
    assert [r.node_id for r in results if r] == [b.node_id for b in beats]
    assert peak == concurrency and writer.stats.heartbeats == 12


@pytest.mark.parametrize("backend", [pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_dropped_writer_connection_costs_no_heartbeat(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The writer's pool has no pre-ping (a round trip per batch): a connection the server
    dropped fails its batch's first try, is discarded, and the second try stores it."""
    for url, engine in module_database(backend, str(tmp_path_factory.mktemp("api"))):
        reset_database(engine)
        with running_api(engine, url, batch_concurrency=1) as api:
            node_id, token = api.registered(node_id="jp-001", address="10.0.0.1")
            assert api.heartbeat(node_id, token).status_code == 200
            with engine.connect() as conn:
                dropped = conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            assert dropped  # the writer's idle connection among them
            failed_before = api.app.state.ctx.writer.stats.failed_batches
            assert api.heartbeat(node_id, token).status_code == 200
            assert api.counts()[1] == 2
            assert api.app.state.ctx.writer.stats.failed_batches == failed_before


@pytest.mark.parametrize(("value", "synchronous"), [(None, False), ("true", True), ("off", False)])
def test_the_heartbeat_commit_mode_comes_from_the_environment(
    value: str | None, synchronous: bool
) -> None:
    """Off unless XPLANE_HEARTBEAT_SYNCHRONOUS_COMMIT says otherwise (docs/deploy.md)."""
    from xplane.api import ApiSettings, create_app

    env = {} if value is None else {"XPLANE_HEARTBEAT_SYNCHRONOUS_COMMIT": value}
    app = create_app(ApiSettings.from_env(env, db_url="sqlite://"))
    assert app.state.ctx.writer.synchronous_commit is synchronous
