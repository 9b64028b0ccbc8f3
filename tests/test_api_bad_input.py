"""No 5xx from bad input (SQLite and PostgreSQL): each case is a 4xx naming the field or
header, stores nothing, and logs exactly one line without a traceback.

A real API on a free port, a real Temporal dev server behind its webhooks (no
gitops-sync loop running), raw sockets where the client itself misbehaves.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from tests.test_api_support import (
    ADMIN,
    BOOT,
    DB_BACKENDS,
    Api,
    bearer,
    module_database,
    reset_database,
    settings_for,
)
from xplane.api import create_app
from xplane.api.serve import serve_in_thread
from xplane.store.webhook_deliveries import WebhookDeliveryRow
from xplane.temporal.dev import TemporalDevServer
from xplane.temporal.notifier import TemporalNotifier
from xplane.webhooks.signature import sign

SECRET = "ci-secret"
GIT_SECRET = "git-secret"
BODY_TIMEOUT = 1.0
MAX_CONCURRENCY = 2


@pytest.fixture(scope="module")
def temporal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporalDevServer]:
    server = TemporalDevServer(tmp_path_factory.mktemp("temporal"), ui=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=DB_BACKENDS)
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    temporal: TemporalDevServer,
) -> Iterator[Api]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XPLANE_WEBHOOK_SECRET", SECRET)
        env.setenv("XPLANE_GIT_WEBHOOK_SECRET", GIT_SECRET)
        for url, engine in module_database(request.param, str(tmp_path_factory.mktemp("api"))):
            reset_database(engine)
            notifier = TemporalNotifier(None, "bad-input", address=temporal.address)
            settings = settings_for(
                url,
                body_read_timeout=timedelta(seconds=BODY_TIMEOUT),
                max_concurrency=MAX_CONCURRENCY,
            )
            app = create_app(settings, notifier=notifier, webhook_notifier=notifier)
            with serve_in_thread(app) as served, httpx.Client(base_url=served.url) as http:
                yield Api(url=served.url, engine=engine, http=http, app=app)


@pytest.fixture
def node(server: Api) -> tuple[str, str]:
    return server.registered(node_id="jp-bad-input", address="10.7.7.7")


class Lines(logging.Handler):
    """Log records of the API (xplane.* and uvicorn.*) while a test runs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def one_line(self) -> str:
        """The single line logged for one request: no traceback, no newline."""
        lines = [r for r in self.records if r.name.startswith(("xplane", "uvicorn"))]
        assert len(lines) == 1, [r.getMessage() for r in lines]
        record = lines[0]
        assert record.exc_info is None and record.levelno < logging.ERROR
        assert "\n" not in record.getMessage()
        self.records.clear()
        return record.getMessage()


@pytest.fixture
def logs() -> Iterator[Lines]:
    handler = Lines()
    loggers = [logging.getLogger("xplane"), logging.getLogger("uvicorn")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(handler)
            lg.setLevel(level)


def stored(api: Api) -> tuple[int, ...]:
    """(nodes, samples, events, webhook deliveries) rows, and the nodes' text columns."""
    with api.engine.connect() as conn:
        deliveries = conn.scalar(select(func.count()).select_from(WebhookDeliveryRow)) or 0
    return (*api.counts(), deliveries)


def assert_refused(
    api: Api, logs: Lines, response: httpx.Response, before: tuple[int, ...], status: int, name: str
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] and name in [d["field"] for d in body["detail"]], body
    assert stored(api) == before
    logs.one_line()
    return body


def terraform_body(**changes: Any) -> bytes:
    body = {
        "commit": "0123456789abcdef",
        "service": "web",
        "region": "jp",
        "status": "succeeded",
        "timestamp": int(time.time()),
        **changes,
    }
    return json.dumps(body).encode()


def post_terraform(
    api: Api, body: bytes, signature: str | bytes | None = None, delivery: str = "d-1"
) -> httpx.Response:
    headers: dict[str, Any] = {
        "Content-Type": "application/json",
        "X-XPlane-Signature-256": sign(SECRET, body) if signature is None else signature,
        "X-XPlane-Delivery": delivery,
    }
    return api.http.post("/webhooks/terraform", content=body, headers=headers)


# ------------------------------------------------------------------ headers compared as bytes
NON_ASCII = "sha256=caf\u00e9".encode()


@pytest.mark.parametrize(
    ("path", "header"),
    [
        ("/webhooks/terraform", "X-XPlane-Signature-256"),
        ("/webhooks/git", "X-Hub-Signature-256"),
        ("/webhooks/git", "X-Gitlab-Token"),
    ],
)
def test_non_ascii_signature_header_is_401(
    server: Api, logs: Lines, path: str, header: str
) -> None:
    before = stored(server)
    response = server.http.post(
        path,
        content=terraform_body(),
        headers=[
            (b"Content-Type", b"application/json"),
            (header.encode(), NON_ASCII),
            (b"X-XPlane-Delivery", b"d"),
        ],
    )
    # The git route names both of its headers in one field entry.
    named = "X-XPlane-Signature-256" if path == "/webhooks/terraform" else "X-Hub-Signature-256"
    assert_refused(server, logs, response, before, 401, named)


# ------------------------------------------------------------------ NUL bytes
@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"hostname": "web\x001"}, "hostname"),
        ({"agent_version": "1.0\x00"}, "agent_version"),
        ({"labels": {"zone": "a\x00"}}, "labels.zone"),
    ],
)
def test_nul_in_registration_is_422(server: Api, logs: Lines, change: dict, field: str) -> None:
    before = stored(server)
    assert_refused(server, logs, server.register(**change), before, 422, field)


def test_nul_in_probe_target_is_422(server: Api, logs: Lines, node: tuple[str, str]) -> None:
    before = stored(server)
    response = server.heartbeat(*node, probes=[{"target": "x\x00", "ok": True}])
    assert_refused(server, logs, response, before, 422, "probes[0].target")


def test_nul_in_drain_reason_is_422(server: Api, logs: Lines, node: tuple[str, str]) -> None:
    before = stored(server)
    response = server.admin("POST", f"/nodes/{node[0]}/drain", json={"reason": "x\x00y"})
    assert_refused(server, logs, response, before, 422, "reason")
    assert server.admin("GET", f"/nodes/{node[0]}").json()["drain_requested"] is False
    logs.records.clear()


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/nodes/jp%00x", "node_id"),
        ("POST", "/nodes/jp%00x/drain", "node_id"),
        ("GET", "/nodes?service=web%00", "service"),
        ("GET", "/nodes?region=jp%00", "region"),
        ("GET", "/regions?service=web%00", "service"),
    ],
)
def test_nul_in_path_and_query_is_422(
    server: Api, logs: Lines, method: str, path: str, field: str
) -> None:
    before = stored(server)
    assert_refused(server, logs, server.admin(method, path), before, 422, field)


# ------------------------------------------------------------------ longer than the column
def test_delivery_id_longer_than_its_column_is_400(server: Api, logs: Lines) -> None:
    before = stored(server)
    response = post_terraform(server, terraform_body(), delivery="d" * 200)
    assert_refused(server, logs, response, before, 400, "X-XPlane-Delivery")


@pytest.mark.parametrize(
    ("path", "field"),
    [("/nodes/" + "n" * 129, "node_id"), ("/nodes?service=" + "s" * 129, "service")],
)
def test_path_and_query_longer_than_the_column_are_422(
    server: Api, logs: Lines, path: str, field: str
) -> None:
    before = stored(server)
    assert_refused(server, logs, server.admin("GET", path), before, 422, field)


# ------------------------------------------------------------------ timestamps and deep JSON
@pytest.mark.parametrize("timestamp", [1e20, -1e20, "0001-01-01T00:00:00+01:00"])
def test_overflowing_webhook_timestamp_is_422(
    server: Api, logs: Lines, timestamp: float | str
) -> None:
    before = stored(server)
    response = post_terraform(server, terraform_body(timestamp=timestamp))
    assert_refused(server, logs, response, before, 422, "timestamp")


DEEP = ("[" * 5000 + "]" * 5000).encode()


@pytest.mark.parametrize("route", ["register", "heartbeat", "drain", "terraform"])
def test_json_nested_5000_deep_is_422(
    server: Api, logs: Lines, node: tuple[str, str], route: str
) -> None:
    before = stored(server)
    json_type = {"Content-Type": "application/json"}
    if route == "terraform":
        response = post_terraform(server, DEEP)
    elif route == "drain":
        response = server.http.post(
            f"/nodes/{node[0]}/drain", content=DEEP, headers={**bearer(ADMIN), **json_type}
        )
    else:
        token = BOOT if route == "register" else node[1]
        response = server.http.post(
            f"/nodes/{route}", content=DEEP, headers={**bearer(token), **json_type}
        )
    assert_refused(server, logs, response, before, 422, "body")


# ------------------------------------------------------------------ media type
@pytest.mark.parametrize("hot_path", [True, False])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_heartbeat_needs_json_415(
    server: Api, logs: Lines, node: tuple[str, str], hot_path: bool, content_type: str | None
) -> None:
    before = stored(server)
    body = json.dumps({"node_id": node[0], "cpu": 0.1, "rtt_ms": 1, "error_rate": 0}).encode()
    headers = bearer(node[1]) | ({"Content-Type": content_type} if content_type else {})
    server.app.hot_path = hot_path
    try:
        response = server.http.post("/nodes/heartbeat", content=body, headers=headers)
    finally:
        server.app.hot_path = True
    assert_refused(server, logs, response, before, 415, "content-type")


# ------------------------------------------------------------------ HTTP-level limits
def raw_exchange(api: Api, data: bytes, wait: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection; (everything answered until close, seconds)."""
    host, port = api.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer, time.monotonic() - started


def test_headers_over_16k_are_431(server: Api, logs: Lines) -> None:
    ok = server.http.get("/healthz", headers={"X-Pad": "a" * 15_000})
    assert ok.status_code == 200
    for headers in ({"X-Pad": "a" * 17_000}, {f"X-Pad-{i}": "a" * 100 for i in range(200)}):
        before = stored(server)
        response = server.http.post(
            "/nodes/register",
            json={"service": "web", "region": "jp", "address": "10.0.0.9"},
            headers={**bearer(BOOT), **headers},
        )
        assert_refused(server, logs, response, before, 431, "headers")


def test_unfinished_headers_over_16k_are_431_without_waiting_for_the_end(
    server: Api, logs: Lines
) -> None:
    """A header still arriving is refused once it passes the limit: nothing is buffered
    past it while waiting for a line end that may never come."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 17_000
    answer, took = raw_exchange(server, head, wait=5)
    assert answer.startswith(b"HTTP/1.1 431"), answer
    assert took < 2
    logs.one_line()


@pytest.mark.parametrize("path", ["/nodes/heartbeat", "/nodes/register"])
def test_stalled_body_is_408(server: Api, logs: Lines, node: tuple[str, str], path: str) -> None:
    before = stored(server)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {node[1]}\r\n"
        "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    )
    answer, took = raw_exchange(server, head.encode() + b'{"node_id": ')
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + 3
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert [d["field"] for d in body["detail"]] == ["body"]
    assert stored(server) == before
    logs.one_line()


def test_requests_past_the_concurrency_limit_are_503(server: Api, logs: Lines) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        b"POST /nodes/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    stalled = [socket.create_connection((host, int(port)), timeout=10) for _ in range(2)]
    try:
        for sock in stalled:
            sock.sendall(head)
        time.sleep(0.3)  # both are now in flight, waiting for their bodies
        before = stored(server)
        busy = server.admin("GET", "/nodes")
        assert busy.headers["retry-after"] == "1"
        assert_refused(server, logs, busy, before, 503, "request")
        assert server.http.get("/healthz").status_code == 200  # liveness is exempt
    finally:
        for sock in stalled:
            sock.close()
    time.sleep(BODY_TIMEOUT + 0.5)
    assert server.admin("GET", "/nodes").status_code == 200


# ------------------------------------------------------------------ webhooks and the document
def test_git_webhook_without_a_gitops_sync_loop_is_409(server: Api, logs: Lines) -> None:
    body = b'{"ref": "refs/heads/main"}'
    response = server.http.post(
        "/webhooks/git",
        content=body,
        headers={
            "X-Hub-Signature-256": sign(GIT_SECRET, body),
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "gh-1",
        },
    )
    assert response.status_code == 409, response.text
    assert "gitops-sync" in response.json()["error"]
    assert response.json()["detail"][0]["field"] == "workflow"
    logs.one_line()


def test_openapi_documents_every_route_and_the_hot_path(server: Api) -> None:
    document = server.http.get("/openapi.json").json()
    routes = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    served = {
        (method, route.path)
        for route in server.app.routes
        for method in getattr(route, "methods", ())
        if method != "HEAD"
        and route.path not in ("/openapi.json", "/docs", "/redoc")
        and not route.path.startswith("/docs/")
        and not route.path.startswith("/ui")  # the console's HTML: its data is /console/*
    }
    assert served <= routes, served - routes
    heartbeat = document["paths"]["/nodes/heartbeat"]["post"]["responses"]
    assert {"200", "400", "401", "403", "409", "413", "415", "422", "503"} <= set(heartbeat)
    terraform = document["paths"]["/webhooks/terraform"]["post"]
    assert terraform["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"400", "401", "422", "503"} <= set(terraform["responses"])


def test_limits_come_from_the_tables() -> None:
    """One source for the API's string limits and the schema's columns."""
    from xplane.api.schemas import DrainRequest, RegisterRequest
    from xplane.store.tables import column_length

    hostname = RegisterRequest.model_json_schema()["properties"]["hostname"]["anyOf"][0]
    assert hostname["maxLength"] == column_length("nodes", "hostname") == 255
    reason = DrainRequest.model_json_schema()["properties"]["reason"]
    assert reason["maxLength"] == column_length("nodes", "drain_reason")
