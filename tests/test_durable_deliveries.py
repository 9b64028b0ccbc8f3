"""The API never waits on Temporal: registrations and CI webhooks are stored, answered at
once, and delivered by the dispatcher whenever Temporal can take them, across restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from tests.support.waiting import until
from tests.test_api_support import (
    BOOT,
    DB_BACKENDS,
    module_database,
    reset_database,
    running_api,
    settings_for,
)
from tests.test_api_support import seed_config as seed
from workflows.autoscale import AutoscaleParams
from xplane import ids
from xplane.api import create_app
from xplane.api.serve import serve_in_thread
from xplane.netutil import free_port
from xplane.store import webhook_deliveries as deliveries
from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.events import EventRow
from xplane.store.migrate import upgrade
from xplane.store.node_tables import NodeRow
from xplane.store.webhook_deliveries import Lease, WebhookDeliveryRow
from xplane.temporal.client import connect
from xplane.temporal.dev import TemporalDevServer
from xplane.temporal.notifier import TemporalNotifier
from xplane.webhooks.dispatcher import DeliveryDispatcher, DispatchSettings
from xplane.webhooks.signature import sign

BIN = Path(sys.executable).parent
SECRET = "durable-secret"
QUEUE = "durable-deliveries"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A Temporal address that accepts connections and never answers (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture(params=DB_BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    for url, engine in module_database(request.param, str(tmp_path)):
        reset_database(engine)
        yield url, engine


def test_registration_answers_at_once_while_temporal_hangs(
    database: tuple[str, sa.Engine], blackhole: str
) -> None:
    url, engine = database
    notifier = TemporalNotifier(None, QUEUE, address=blackhole)
    with running_api(engine, url, notifier=notifier) as api:
        started = time.monotonic()
        node_id, _ = api.registered(node_id="jp-hung")
        elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"registration took {elapsed:.2f}s"
    with engine.connect() as conn:
        assert conn.scalar(sa.select(NodeRow.id).where(NodeRow.id == node_id)) == node_id
        (row,) = conn.execute(
            sa.select(WebhookDeliveryRow.kind, WebhookDeliveryRow.state, WebhookDeliveryRow.payload)
        ).all()
    # Owed to Temporal, from the store: the node's lifecycle is started once it answers.
    assert row.kind == "node" and row.state == "pending"
    assert row.payload == {"node_id": node_id, "service": "web", "region": "jp"}


def test_claims_are_exclusive_and_expired_leases_are_taken_over(
    database: tuple[str, sa.Engine],
) -> None:
    """Two replicas' dispatchers never hold one delivery at once; a dead one's is taken over."""
    _, engine = database
    factory = make_sessionmaker(engine)
    now = utcnow()
    with transaction(factory) as session:
        for i in range(4):
            deliveries.record_delivery(session, f"d{i}", "terraform", {"i": i}, now)
    lease = Lease("one", now + timedelta(seconds=30))
    with transaction(factory) as session:
        first = deliveries.claim_due(session, ["terraform"], lease, now, limit=3)
    with transaction(factory) as session:
        second = deliveries.claim_due(session, ["terraform"], Lease("two", lease.until), now, 10)
    assert len(first) == 3 and [d.delivery_id for d in second] == ["d3"]
    lease_s = timedelta(seconds=30)
    later = now + timedelta(seconds=31)  # both replicas died holding their leases
    with transaction(factory) as session:
        three = Lease("three", later + lease_s)
        taken = deliveries.claim_due(session, ["terraform"], three, later, 10)
        assert sorted(d.delivery_id for d in taken) == ["d0", "d1", "d2", "d3"]
        # The dead owner can no longer record an outcome over the new owner's.
        assert not deliveries.mark_delivered(session, "d0", "one", later)
        assert deliveries.mark_delivered(session, "d0", "three", later)
        assert deliveries.delivery_state(session, "d0") == "delivered"


def test_two_replicas_dispatchers_deliver_each_delivery_once(
    database: tuple[str, sa.Engine],
) -> None:
    _, engine = database
    factory = make_sessionmaker(engine)
    with transaction(factory) as session:
        for i in range(40):
            deliveries.record_delivery(session, f"d{i:02}", "terraform", {"i": i})
    seen: list[tuple[str, int]] = []

    def replica(name: str) -> DeliveryDispatcher:
        async def deliver(kind: str, payload: dict[str, Any]) -> None:
            await asyncio.sleep(0.1)  # 40 take one replica 2 s: the other joins in
            seen.append((name, payload["i"]))

        return DeliveryDispatcher(
            factory, deliver, ["terraform"], DispatchSettings(batch=2), owner=name
        )

    async def run_both() -> None:
        tasks = [asyncio.create_task(replica(n).run()) for n in ("one", "two")]
        deadline = time.monotonic() + 30
        while len(seen) < 40 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time for a double delivery to show
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run_both())
    assert sorted(i for _, i in seen) == list(range(40))  # each once
    assert {name for name, _ in seen} == {"one", "two"}  # both took a share
    with engine.connect() as conn:
        states = conn.scalars(sa.select(WebhookDeliveryRow.state)).all()
    assert set(states) == {"delivered"}


# ------------------------------------------------------------- real processes
def _api(work: Path, db_url: str, temporal: str, port: int, name: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "XPLANE_BOOTSTRAP_TOKEN": BOOT,
        "XPLANE_ADMIN_TOKEN": "durable-admin",
        "XPLANE_WEBHOOK_SECRET": SECRET,
        "XPLANE_TASK_QUEUE": QUEUE,
        "XPLANE_DELIVERY_RETRY_MAX": "1s",
    }
    argv = [str(BIN / "xplane"), "api", "--db", db_url, "--port", str(port),
            "--temporal", temporal, "--no-migrate"]  # fmt: skip
    log = (work / f"{name}.log").open("wb")
    proc = subprocess.Popen(
        argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    until(lambda: proc.poll() is not None or _ready(url), f"{name} ready", timeout=60)
    assert proc.poll() is None, (work / f"{name}.log").read_text()
    return proc


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _webhook(url: str, delivery: str) -> httpx.Response:
    hook = {"commit": COMMIT, "service": "web", "region": "jp", "status": "succeeded"}
    body = json.dumps({**hook, "timestamp": int(time.time())}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-XPlane-Signature-256": sign(SECRET, body),
        "X-XPlane-Delivery": delivery,
    }
    return httpx.post(url + "/webhooks/terraform", content=body, headers=headers, timeout=10)


async def _client(address: str) -> Client:
    return await connect(address)


async def _start_waiting_autoscale(address: str) -> str:
    """The autoscale workflow CI reports to, open and waiting (no worker ever runs it)."""
    client = await _client(address)
    handle = await client.start_workflow(
        ids.AUTOSCALE,
        AutoscaleParams(service="web", region="jp"),
        id=ids.autoscale_id("web", "jp"),
        task_queue=QUEUE,
    )
    assert handle.result_run_id is not None
    return handle.result_run_id


async def _signals(address: str, run_id: str) -> list[str]:
    client = await _client(address)
    handle = client.get_workflow_handle(ids.autoscale_id("web", "jp"), run_id=run_id)
    history = await handle.fetch_history()
    return [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED
    ]


async def _lifecycle_exists(address: str, node_id: str) -> bool:
    client = await _client(address)
    try:
        await client.get_workflow_handle(ids.node_workflow_id(node_id)).describe()
    except Exception:
        return False
    return True


@pytest.mark.slow
def test_a_webhook_sent_while_temporal_is_down_survives_an_api_kill_and_is_delivered(
    tmp_path: Path,
) -> None:
    db_url = f"sqlite:///{tmp_path}/xplane.db"
    upgrade(db_url)
    engine = make_engine(db_url)
    seed(engine)
    temporal = TemporalDevServer(tmp_path / "temporal", ui=False)  # its state is a db file
    temporal.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        run_id = asyncio.run(_start_waiting_autoscale(temporal.address))
        temporal.stop()

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(_api(tmp_path, db_url, temporal.address, port, "api1"))
        started = time.monotonic()
        registered = httpx.post(
            url + "/nodes/register",
            json={"service": "web", "region": "jp", "address": "10.0.0.9"},
            headers={"Authorization": f"Bearer {BOOT}"},
            timeout=10,
        )
        assert registered.status_code == 200, registered.text
        assert time.monotonic() - started < 1.0
        node_id = registered.json()["node_id"]

        first = _webhook(url, "ci-run-1")
        assert first.status_code == 202, first.text
        retry = _webhook(url, "ci-run-1")  # CI's retry: the truth, never "duplicate"
        assert retry.status_code == 200 and retry.json()["status"] == "pending"

        os.killpg(procs[0].pid, signal.SIGKILL)  # acknowledged, then the API dies
        procs[0].wait()
        procs.append(_api(tmp_path, db_url, temporal.address, port, "api2"))
        assert _webhook(url, "ci-run-1").json()["status"] == "pending"

        temporal.start()  # same port, same state: the waiting workflow is still there
        until(
            lambda: "terraform_finished" in asyncio.run(_signals(temporal.address, run_id)),
            "the signal in the waiting workflow's history",
            timeout=60,
        )
        until(lambda: _webhook(url, "ci-run-1").json()["status"] == "delivered", "delivered")
        until(
            lambda: asyncio.run(_lifecycle_exists(temporal.address, node_id)),
            "the node's lifecycle workflow",
            timeout=30,
        )
        assert asyncio.run(_signals(temporal.address, run_id)).count("terraform_finished") == 1
    finally:
        for proc in procs:
            _kill(proc)
        temporal.stop()
        engine.dispose()


@pytest.fixture
def temporal(tmp_path: Path) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path / "temporal", ui=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _hooked_api(
    engine: sa.Engine, url: str, notifier: TemporalNotifier, monkeypatch: pytest.MonkeyPatch
) -> Any:
    monkeypatch.setenv("XPLANE_WEBHOOK_SECRET", SECRET)
    settings = settings_for(url, delivery_retry_max=timedelta(milliseconds=200))
    return serve_in_thread(create_app(settings, notifier=notifier, webhook_notifier=notifier))


def test_a_temporal_restart_delays_a_webhook_and_loses_none(
    tmp_path: Path, temporal: TemporalDevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's client was connected when Temporal went away: it reconnects."""
    for url, engine in module_database("sqlite", str(tmp_path)):
        reset_database(engine)
        run_id = asyncio.run(_start_waiting_autoscale(temporal.address))
        notifier = TemporalNotifier(None, QUEUE, address=temporal.address)
        with _hooked_api(engine, url, notifier, monkeypatch) as served:
            first = _webhook(served.url, "before")
            assert first.status_code == 202, first.text
            until(lambda: _webhook(served.url, "before").json()["status"] == "delivered", "1st")
            temporal.stop()
            assert _webhook(served.url, "during").status_code == 202
            assert _webhook(served.url, "during").json()["status"] == "pending"
            temporal.start()
            until(
                lambda: _webhook(served.url, "during").json()["status"] == "delivered",
                "the delivery after the restart",
                timeout=60,
            )
        signals = asyncio.run(_signals(temporal.address, run_id))
        assert signals.count("terraform_finished") == 2


def test_a_refused_delivery_is_given_up_after_a_bounded_number_of_tries(
    tmp_path: Path, temporal: TemporalDevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temporal refuses (here: no such namespace): tried a few times, then undeliverable."""
    for url, engine in module_database("sqlite", str(tmp_path)):
        reset_database(engine)
        notifier = TemporalNotifier(None, QUEUE, address=temporal.address, namespace="missing")
        with _hooked_api(engine, url, notifier, monkeypatch) as served:
            assert _webhook(served.url, "refused").status_code == 202
            until(
                lambda: _webhook(served.url, "refused").json()["status"] == "undeliverable",
                "the delivery given up",
            )
        with engine.connect() as conn:
            row = conn.execute(sa.select(WebhookDeliveryRow)).one()
            events = conn.scalars(sa.select(EventRow.kind)).all()
        assert row.attempts == 5 and "NOT_FOUND" in (row.last_error or "").upper()
        assert "webhook.undeliverable" in events
