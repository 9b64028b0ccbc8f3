"""Prometheus metrics of the API and the workers, in one module-level registry.

The registry is not prometheus_client's global default: tests (and ``/metrics``)
read exactly XPlane's series, and nothing an imported library registers leaks in.
Counters and gauges are updated through the small helpers below, called by the
code that does the work (API routes, the heartbeat writer, activities). Never
call them from workflow code: a replayed workflow would count twice.

Label values that come from code (directions, results, webhook kinds) are
checked against closed sets, so a typo raises instead of creating a new series.
Node counts are read from the store by :class:`StoreCollector` (one ``GROUP BY``),
so every API replica reports the same truth; the answer is reused for
``NODE_COUNT_MAX_AGE`` (15 s) so scrapes, however frequent or many, cost the
store at most one query per replica per interval.

``/metrics`` on the API, and on the worker's metrics port, can require
``Authorization: Bearer <XPLANE_METRICS_TOKEN>``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Protocol

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    make_wsgi_app,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from xplane.domain import NodeState
from xplane.store.node_tables import NodeRow

log = logging.getLogger(__name__)

NODE_COUNT_MAX_AGE = 15.0  # seconds a node-count answer is reused

REGISTRY = CollectorRegistry()

DIRECTIONS = frozenset({"up", "down", "none"})
WEBHOOK_KINDS = frozenset({"terraform", "git"})
WEBHOOK_RESULTS = frozenset(
    {"accepted", "duplicate", "bad_signature", "stale", "invalid"}
    | {"delivered", "retried", "undeliverable"}  # the dispatcher's outcomes
)
# Powers of two up to the writer's largest sensible batch (batch_max_size defaults to 256).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

HEARTBEATS = Counter(
    "xplane_heartbeats_ingested",
    "Heartbeats stored (committed) by this API replica.",
    ["service", "region"],
    registry=REGISTRY,
)
HEARTBEAT_BATCH = Histogram(
    "xplane_heartbeat_batch_size",
    "Heartbeats written per store transaction by the batching writer.",
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
GTM_WEIGHT = Gauge(
    "xplane_gtm_effective_weight",
    "Weight last published for a region of a service (after fail-open and ramp).",
    ["service", "region"],
    registry=REGISTRY,
)
GTM_FAIL_OPEN = Gauge(
    "xplane_gtm_fail_open",
    "1 while a service's GTM is in fail-open (no region healthy), else 0.",
    ["service"],
    registry=REGISTRY,
)
GTM_WEIGHTS_AT = Gauge(
    "xplane_gtm_weights_updated_timestamp_seconds",
    "Unix time this process last set a service's weights (pick the newest across workers).",
    ["service"],
    registry=REGISTRY,
)
DNS_APPLIES = Counter(
    "xplane_dns_applies",
    "DNS provider apply attempts by result (ok | error).",
    ["provider", "result"],
    registry=REGISTRY,
)
DNS_WRITES = Counter(
    "xplane_dns_record_writes",
    "Record changes (create/update/delete) sent to a DNS provider.",
    ["provider"],
    registry=REGISTRY,
)
AUTOSCALE_DECISIONS = Counter(
    "xplane_autoscale_decisions",
    "Autoscaler decisions by direction (up | down | none).",
    ["service", "region", "direction"],
    registry=REGISTRY,
)
AUTOSCALE_COMMITS = Counter(
    "xplane_autoscale_commits",
    "Node-pool changes committed to the infra repo.",
    ["service", "region"],
    registry=REGISTRY,
)
WEBHOOKS = Counter(
    "xplane_webhook_deliveries",
    "Webhook deliveries by kind (terraform | git) and result.",
    ["kind", "result"],
    registry=REGISTRY,
)

GATE_CLOSED = Gauge(
    "xplane_gate_closed",
    "1 while the self-health gate holds destructive steps for a scope (all | a service).",
    ["scope"],
    registry=REGISTRY,
)
GATE_CHANGES = Counter(
    "xplane_gate_changes",
    "Self-health gate changes by scope and kind (closed | opened | rate_limited | normal).",
    ["scope", "change"],
    registry=REGISTRY,
)
GATE_REGION = Gauge(
    "xplane_gate_region_verdict",
    "The gate's verdict for a region: 0 normal, 1 rate limited, 2 held.",
    ["service", "region"],
    registry=REGISTRY,
)
GATE_CHANGE_KINDS = frozenset({"closed", "opened", "rate_limited", "normal"})
GATE_VERDICTS = {"normal": 0, "rate_limited": 1, "held": 2}


def _check(name: str, value: str, allowed: frozenset[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {sorted(allowed)}, not {value!r}")


# ------------------------------------------------------------------ helpers
def heartbeats_ingested(service: str, region: str, n: int = 1) -> None:
    """Count ``n`` heartbeats of one (service, region) stored by this replica."""
    if n > 0:
        HEARTBEATS.labels(service=service, region=region).inc(n)


def heartbeat_batch(size: int) -> None:
    """Record the size of one committed heartbeat batch."""
    HEARTBEAT_BATCH.observe(size)


_weights_lock = threading.Lock()
_published_regions: dict[str, set[str]] = {}


def set_region_weights(service: str, weights: dict[str, float], fail_open: bool) -> None:
    """Publish a service's region weights; regions no longer listed lose their series."""
    with _weights_lock:
        gone = _published_regions.get(service, set()) - set(weights)
        for region in gone:
            GTM_WEIGHT.remove(service, region)
        for region, weight in weights.items():
            GTM_WEIGHT.labels(service=service, region=region).set(weight)
        _published_regions[service] = set(weights)
        GTM_FAIL_OPEN.labels(service=service).set(1 if fail_open else 0)
        GTM_WEIGHTS_AT.labels(service=service).set_to_current_time()


def dns_apply(provider: str, ok: bool, writes: int = 0) -> None:
    """Count one apply against ``provider`` (its config key) and the record writes it made."""
    DNS_APPLIES.labels(provider=provider, result="ok" if ok else "error").inc()
    if writes > 0:
        DNS_WRITES.labels(provider=provider).inc(writes)


def autoscale_decision(service: str, region: str, direction: str) -> None:
    _check("direction", direction, DIRECTIONS)
    AUTOSCALE_DECISIONS.labels(service=service, region=region, direction=direction).inc()


def autoscale_commit(service: str, region: str) -> None:
    AUTOSCALE_COMMITS.labels(service=service, region=region).inc()


TERRAFORM_RESULTS = Counter(
    "xplane_terraform_results",
    "Terraform outcomes the autoscaler waited for (succeeded | failed | timeout): alert on "
    "failed and timeout.",
    ["service", "region", "status"],
    registry=REGISTRY,
)


def terraform_result(service: str, region: str, status: str) -> None:
    TERRAFORM_RESULTS.labels(service=service, region=region, status=status).inc()


def webhook_delivery(kind: str, result: str) -> None:
    _check("kind", kind, WEBHOOK_KINDS)
    _check("result", result, WEBHOOK_RESULTS)
    WEBHOOKS.labels(kind=kind, result=result).inc()


class _LoopLag:
    """Seconds since each loop last succeeded, computed at scrape time (so it grows
    while a loop is stuck, which a gauge set on success never would)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def observe(self, loop_id: str, last_success_at: datetime) -> None:
        if last_success_at.tzinfo is None:
            raise ValueError(f"loop {loop_id!r}: last_success_at must be timezone-aware")
        at = last_success_at.timestamp()
        with self._lock:
            # Out-of-order reports (two activities of one tick) never move time backwards.
            self._last[loop_id] = max(at, self._last.get(loop_id, at))

    def forget(self, loop_id: str) -> None:
        with self._lock:
            self._last.pop(loop_id, None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.time()
        with self._lock:
            last = dict(self._last)
        lag = GaugeMetricFamily(
            "xplane_loop_lag_seconds",
            "Seconds since the loop's last successful run, as seen by this process.",
            labels=["loop"],
        )
        stamp = GaugeMetricFamily(
            "xplane_loop_last_success_timestamp_seconds",
            "Unix time of the loop's last successful run, as seen by this process.",
            labels=["loop"],
        )
        for loop_id, at in sorted(last.items()):
            lag.add_metric([loop_id], max(0.0, now - at))
            stamp.add_metric([loop_id], at)
        yield lag
        yield stamp


_LOOPS = _LoopLag()
REGISTRY.register(_LOOPS)


def gate_change(scope: str, change: str) -> None:
    """One gate change (closed | opened | rate_limited | normal) of ``scope``."""
    _check("change", change, GATE_CHANGE_KINDS)
    GATE_CHANGES.labels(scope=scope, change=change).inc()


def gate_closed(scope: str, closed: bool) -> None:
    GATE_CLOSED.labels(scope=scope).set(1 if closed else 0)


def gate_region(service: str, region: str, verdict: str) -> None:
    GATE_REGION.labels(service=service, region=region).set(GATE_VERDICTS[verdict])


def observe_loop(loop_id: str, last_success_at: datetime) -> None:
    """Record that loop ``loop_id`` (its workflow id) last succeeded at ``last_success_at``."""
    _LOOPS.observe(loop_id, last_success_at)


def forget_loop(loop_id: str) -> None:
    """Drop a loop's series (its workflow ended for good)."""
    _LOOPS.forget(loop_id)


# ---------------------------------------------------------- store collector
class _SessionFactory(Protocol):
    def __call__(self) -> Session: ...


_STATES = frozenset(s.value for s in NodeState)


class StoreCollector:
    """``xplane_nodes{service,region,state}`` read from the store, at most once per
    ``max_age`` seconds (scrapes in between get the last answer).

    Every lifecycle state of a (service, region) that has nodes is reported, with
    0 for the empty ones, so ``xplane_nodes{state="active"} == 0`` alerts work.
    A store that fails the query yields ``xplane_store_up 0`` instead of failing
    the whole scrape (a failure is not cached: the next scrape asks again).
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session] | _SessionFactory,
        max_age: float = NODE_COUNT_MAX_AGE,
    ) -> None:
        self._sessions = session_factory
        self._max_age = max_age
        # One query at a time: concurrent scrapes wait for it and share its answer.
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[tuple[str, str], dict[str, int]]] | None = None

    def _fresh_counts(self) -> dict[tuple[str, str], dict[str, int]]:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._max_age:
                return self._cached[1]
            counts = self._counts()
            self._cached = (time.monotonic(), counts)
            return counts

    def describe(self) -> Iterable[GaugeMetricFamily]:
        # Declared so registering never runs a query (auto-describe would call collect()).
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("xplane_store_up", "1 if the last node-count query succeeded.")
        nodes = GaugeMetricFamily(
            "xplane_nodes",
            "Registered nodes per lifecycle state.",
            labels=["service", "region", "state"],
        )
        try:
            counts = self._fresh_counts()
        except Exception as exc:  # a scrape must answer even when the store is down
            log.warning("metrics: node count query failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for (service, region), by_state in sorted(counts.items()):
            for known in NodeState:
                nodes.add_metric([service, region, known.value], by_state.get(known.value, 0))
            for state, n in sorted(by_state.items()):  # a state outside the enum: still shown
                if state not in _STATES:
                    nodes.add_metric([service, region, state], n)
        yield up
        yield nodes

    def _counts(self) -> dict[tuple[str, str], dict[str, int]]:
        query = select(NodeRow.service, NodeRow.region, NodeRow.state, func.count()).group_by(
            NodeRow.service, NodeRow.region, NodeRow.state
        )
        out: dict[tuple[str, str], dict[str, int]] = {}
        with self._sessions() as session:
            for service, region, state, n in session.execute(query):
                out.setdefault((service, region), {})[state] = int(n)
        return out


class _Chain:
    """Several collectors as one (the module registry plus a per-app store collector)."""

    def __init__(self, *collectors: Collector) -> None:
        self._collectors = collectors

    def collect(self) -> Iterator[object]:
        for collector in self._collectors:
            yield from collector.collect()


def exposition_registry(
    session_factory: sessionmaker[Session] | _SessionFactory | None = None,
    node_count_max_age: float = NODE_COUNT_MAX_AGE,
) -> CollectorRegistry:
    """A registry serving the module's metrics plus, given a session factory, node counts.

    A new registry per app: the module registry stays free of store collectors, so
    several apps in one process (tests, ``xplane up``) never register twice.
    """
    registry = CollectorRegistry()
    parts: list[Collector] = [REGISTRY]
    if session_factory is not None:
        parts.append(StoreCollector(session_factory, node_count_max_age))
    registry.register(_Chain(*parts))  # type: ignore[arg-type]
    return registry


def bearer_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode()
    )


def metrics_router(
    session_factory: sessionmaker[Session] | _SessionFactory | None = None,
    *,
    token: str | None = None,
    node_count_max_age: float = NODE_COUNT_MAX_AGE,
) -> APIRouter:
    """``GET /metrics`` in the Prometheus text format (mount on the API app).

    With ``token`` (``XPLANE_METRICS_TOKEN``) a scrape must send it as a bearer token:
    the metrics name every service and region, which is not for anyone who can reach
    the port.
    """
    registry = exposition_registry(session_factory, node_count_max_age)
    router = APIRouter(tags=["observability"])

    text = {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}
    responses: dict[int | str, dict[str, Any]] = {200: text}
    if token:
        responses[401] = {"description": "metrics token required"}

    @router.get("/metrics", response_class=Response, responses=responses)
    async def metrics(request: Request) -> Response:
        if token and not bearer_matches(request.headers.get("authorization"), token):
            return Response(
                content="metrics token required\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # The node-count query is blocking I/O: keep it off the event loop.
        body = await asyncio.to_thread(generate_latest, registry)
        return Response(content=body, media_type=CONTENT_TYPE_LATEST)

    return router


def start_metrics_server(
    port: int, host: str = "0.0.0.0", token: str | None = None
) -> Callable[[], None]:
    """Serve the module registry on ``host:port`` from a daemon thread (``xplane worker``).

    With ``token`` (``XPLANE_METRICS_TOKEN``) a scrape must send it as a bearer token
    (401 otherwise), as on the API. Returns a function that stops the server.
    """
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    registry_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if token and not bearer_matches(environ.get("HTTP_AUTHORIZATION"), token):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"metrics token required\n"]
        answer: Iterable[bytes] = registry_app(environ, start_response)
        return answer

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = make_server(host, port, app, Server, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, name="xplane-metrics", daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop


def worker_metrics_server(
    env: Mapping[str, str], host: str = "0.0.0.0"
) -> Callable[[], None] | None:
    """The worker's metrics server from its environment: on ``XPLANE_METRICS_PORT`` (none
    without it), requiring ``XPLANE_METRICS_TOKEN`` when that is set."""
    port = env.get("XPLANE_METRICS_PORT")
    if not port:
        return None
    return start_metrics_server(int(port), host, token=env.get("XPLANE_METRICS_TOKEN") or None)
