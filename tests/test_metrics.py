"""``GET /metrics`` over real HTTP (uvicorn on loopback), on SQLite and PostgreSQL.

Counters live in one process-wide registry, so every test uses its own service
name (or compares before/after) and never depends on what other tests counted.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from xplane.api.serve import serve_in_thread
from xplane.domain import NodeState
from xplane.netutil import free_port
from xplane.observability import metrics
from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.nodes import set_lifecycle_state
from xplane.store.registration import Registration, register_node

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
TIMEOUT = timedelta(seconds=30)


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@contextmanager
def metrics_server(
    factory: Callable[[], Session] | None,
    *,
    token: str | None = None,
    max_age: float = metrics.NODE_COUNT_MAX_AGE,
) -> Iterator[str]:
    app = FastAPI()
    app.include_router(metrics.metrics_router(factory, token=token, node_count_max_age=max_age))
    with serve_in_thread(app) as served:
        yield served.url


def scrape(url: str) -> tuple[httpx.Response, Samples]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return response, parse(response.text)


def add_node(factory: sessionmaker[Session], service: str, region: str, state: NodeState) -> None:
    node_id = f"n-{uuid.uuid4().hex[:10]}"
    now = utcnow()
    reg = Registration(
        node_id=node_id,
        service=service,
        region=region,
        address="10.0.0.1",
        token_hash=uuid.uuid4().hex * 2,
    )
    with transaction(factory) as session:
        register_node(session, reg, now, TIMEOUT)
    if state is not NodeState.IDLE:
        with transaction(factory) as session:
            set_lifecycle_state(session, node_id, state, "test", now)


@pytest.fixture
def service() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def test_node_counts_come_from_the_store(engine: Engine, service: str) -> None:
    factory = make_sessionmaker(engine)
    for region, state in [
        ("jp", NodeState.ACTIVE),
        ("jp", NodeState.ACTIVE),
        ("jp", NodeState.DRAIN),
        ("us", NodeState.IDLE),
        ("us", NodeState.WARM),
    ]:
        add_node(factory, service, region, state)
    add_node(factory, "other", "jp", NodeState.ACTIVE)

    with metrics_server(factory, max_age=0) as url:
        response, samples = scrape(url)
        assert response.headers["content-type"].startswith("text/plain")
        assert value(samples, "xplane_store_up") == 1
        expected = {
            ("jp", "active"): 2,
            ("jp", "drain"): 1,
            ("jp", "idle"): 0,  # every state is listed, empty ones as 0
            ("jp", "warm"): 0,
            ("jp", "delete"): 0,
            ("us", "idle"): 1,
            ("us", "warm"): 1,
            ("us", "active"): 0,
        }
        for (region, state_name), n in expected.items():
            got = value(samples, "xplane_nodes", service=service, region=region, state=state_name)
            assert got == n, (region, state_name, got)
        assert value(samples, "xplane_nodes", service="other", region="jp", state="active") == 1

        # Once the answer is older than max_age (0 here), a scrape sees the store as it is.
        add_node(factory, service, "jp", NodeState.ACTIVE)
        _, samples = scrape(url)
        assert value(samples, "xplane_nodes", service=service, region="jp", state="active") == 3


class CountingSessions:
    """The real session factory, counting the sessions (node-count queries) it opens."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory, self.opened = factory, 0

    def __call__(self) -> Session:
        self.opened += 1
        return self.factory()


def test_scrapes_share_one_node_count_query_per_interval(engine: Engine, service: str) -> None:
    factory = make_sessionmaker(engine)
    add_node(factory, service, "jp", NodeState.ACTIVE)
    counting = CountingSessions(factory)
    with metrics_server(counting, max_age=1.5) as url:
        for _ in range(10):
            _, samples = scrape(url)
        assert counting.opened == 1  # ten scrapes, one GROUP BY
        add_node(factory, service, "jp", NodeState.ACTIVE)
        _, samples = scrape(url)
        assert value(samples, "xplane_nodes", service=service, region="jp", state="active") == 1
        time.sleep(1.6)  # the answer is now too old: the next scrape asks the store
        _, samples = scrape(url)
        assert value(samples, "xplane_nodes", service=service, region="jp", state="active") == 2
        assert counting.opened == 2


def test_metrics_token_is_required_when_set(service: str) -> None:
    token = f"scrape-{uuid.uuid4().hex}"
    with metrics_server(None, token=token) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            refused = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "xplane_" not in refused.text
        allowed = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert allowed.status_code == 200 and "xplane_heartbeat_batch_size" in allowed.text


def test_api_reads_the_metrics_token_from_the_environment(tmp_path: Path) -> None:
    from xplane.api import create_app
    from xplane.api.settings import ApiSettings

    token = f"scrape-{uuid.uuid4().hex}"
    settings = ApiSettings.from_env(
        {"XPLANE_METRICS_TOKEN": token}, db_url=f"sqlite:///{tmp_path}/x.db"
    )
    with serve_in_thread(create_app(settings)) as served:
        assert httpx.get(f"{served.url}/metrics", timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{served.url}/metrics", headers=auth, timeout=10).status_code == 200


def test_counters_histogram_and_gauges(service: str) -> None:
    with metrics_server(None) as url:
        _, before = scrape(url)
        batches_before = value(before, "xplane_heartbeat_batch_size_count") or 0
        small_before = value(before, "xplane_heartbeat_batch_size_bucket", le="4.0") or 0

        metrics.heartbeats_ingested(service, "jp", 3)
        metrics.heartbeats_ingested(service, "jp", 2)
        metrics.heartbeats_ingested(service, "us", 1)
        metrics.heartbeats_ingested(service, "us", 0)  # nothing stored: no change
        metrics.heartbeat_batch(3)
        metrics.heartbeat_batch(200)
        provider = f"{service}/powerdns"
        metrics.dns_apply(provider, ok=True, writes=4)
        metrics.dns_apply(provider, ok=True, writes=0)
        metrics.dns_apply(provider, ok=False)
        metrics.autoscale_decision(service, "jp", "up")
        metrics.autoscale_decision(service, "jp", "up")
        metrics.autoscale_decision(service, "jp", "none")
        metrics.autoscale_commit(service, "jp")
        metrics.set_region_weights(service, {"jp": 70.0, "us": 30.0}, fail_open=False)

        _, after = scrape(url)

    def got(name: str, **labels: str) -> float | None:
        return value(after, name, **labels)

    assert got("xplane_heartbeats_ingested_total", service=service, region="jp") == 5
    assert got("xplane_heartbeats_ingested_total", service=service, region="us") == 1
    assert got("xplane_heartbeat_batch_size_count") == batches_before + 2
    assert got("xplane_heartbeat_batch_size_bucket", le="4.0") == small_before + 1
    assert got("xplane_dns_applies_total", provider=provider, result="ok") == 2
    assert got("xplane_dns_applies_total", provider=provider, result="error") == 1
    assert got("xplane_dns_record_writes_total", provider=provider) == 4
    assert (
        got("xplane_autoscale_decisions_total", service=service, region="jp", direction="up") == 2
    )
    assert (
        got("xplane_autoscale_decisions_total", service=service, region="jp", direction="none") == 1
    )
    assert got("xplane_autoscale_commits_total", service=service, region="jp") == 1
    assert got("xplane_gtm_effective_weight", service=service, region="jp") == 70
    assert got("xplane_gtm_effective_weight", service=service, region="us") == 30
    assert got("xplane_gtm_fail_open", service=service) == 0
    assert (got("xplane_gtm_weights_updated_timestamp_seconds", service=service) or 0) > 0
    # No store collector on this router: no node series at all.
    assert not any(name == "xplane_nodes" for name, _ in after)


def test_weights_of_a_dropped_region_disappear_and_fail_open_shows(service: str) -> None:
    metrics.set_region_weights(service, {"jp": 50.0, "us": 50.0}, fail_open=False)
    metrics.set_region_weights(service, {"jp": 100.0}, fail_open=True)
    samples = parse(metrics.generate_latest(metrics.REGISTRY).decode())
    assert value(samples, "xplane_gtm_effective_weight", service=service, region="jp") == 100
    assert value(samples, "xplane_gtm_effective_weight", service=service, region="us") is None
    assert value(samples, "xplane_gtm_fail_open", service=service) == 1


def test_webhook_deliveries_and_closed_label_sets(service: str) -> None:
    samples = parse(metrics.generate_latest(metrics.REGISTRY).decode())
    before = value(samples, "xplane_webhook_deliveries_total", kind="git", result="stale") or 0
    metrics.webhook_delivery("git", "stale")
    metrics.webhook_delivery("terraform", "accepted")
    samples = parse(metrics.generate_latest(metrics.REGISTRY).decode())
    assert value(samples, "xplane_webhook_deliveries_total", kind="git", result="stale") == (
        before + 1
    )
    with pytest.raises(ValueError, match="result must be one of"):
        metrics.webhook_delivery("git", "ok")
    with pytest.raises(ValueError, match="kind must be one of"):
        metrics.webhook_delivery("gitlab", "accepted")
    with pytest.raises(ValueError, match="direction must be one of"):
        metrics.autoscale_decision(service, "jp", "sideways")


def test_loop_lag_grows_from_the_last_success(service: str) -> None:
    loop = f"gtm-{service}"
    metrics.observe_loop(loop, utcnow() - timedelta(seconds=90))
    metrics.observe_loop(loop, utcnow() - timedelta(seconds=300))  # older report: ignored
    samples = parse(metrics.generate_latest(metrics.REGISTRY).decode())
    lag = value(samples, "xplane_loop_lag_seconds", loop=loop)
    assert lag is not None and 90 <= lag < 150
    stamp = value(samples, "xplane_loop_last_success_timestamp_seconds", loop=loop)
    assert stamp is not None and abs(stamp + 90 - utcnow().timestamp()) < 60
    metrics.forget_loop(loop)
    samples = parse(metrics.generate_latest(metrics.REGISTRY).decode())
    assert value(samples, "xplane_loop_lag_seconds", loop=loop) is None
    with pytest.raises(ValueError, match="timezone-aware"):
        metrics.observe_loop(loop, utcnow().replace(tzinfo=None))


def test_a_broken_store_still_answers_the_scrape(tmp_path: Path) -> None:
    """No tables: the node query fails, the scrape reports store_up 0 and the rest."""
    engine = make_engine(f"sqlite:///{tmp_path}/empty.db")
    try:
        with metrics_server(make_sessionmaker(engine)) as url:
            _, samples = scrape(url)
    finally:
        engine.dispose()
    assert value(samples, "xplane_store_up") == 0
    assert any(name == "xplane_heartbeat_batch_size_count" for name, _ in samples)


def test_worker_metrics_server_serves_the_registry(service: str) -> None:
    port = free_port()
    stop = metrics.start_metrics_server(port, host="127.0.0.1")
    try:
        metrics.autoscale_commit(service, "eu")
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        stop()
    samples = parse(response.text)
    assert value(samples, "xplane_autoscale_commits_total", service=service, region="eu") == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_worker_metrics_server_requires_the_metrics_token_when_set(service: str) -> None:
    """``xplane worker`` serves /metrics on XPLANE_METRICS_PORT; with XPLANE_METRICS_TOKEN
    set it answers 401 to a scrape without that bearer token, as the API does."""
    token = f"scrape-{uuid.uuid4().hex}"
    port = free_port()
    env = {"XPLANE_METRICS_PORT": str(port), "XPLANE_METRICS_TOKEN": token}
    assert metrics.worker_metrics_server({}, host="127.0.0.1") is None  # no port: none
    stop = metrics.worker_metrics_server(env, host="127.0.0.1")
    assert stop is not None
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        metrics.autoscale_commit(service, "eu")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            refused = httpx.get(url, headers=headers, timeout=10)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"] == "Bearer"
            assert "xplane_" not in refused.text
        allowed = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    finally:
        stop()
    assert allowed.status_code == 200
    samples = parse(allowed.text)
    assert value(samples, "xplane_autoscale_commits_total", service=service, region="eu") == 1
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)
