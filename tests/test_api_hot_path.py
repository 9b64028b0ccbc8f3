"""The heartbeat hot path answers exactly as the FastAPI route does, over real HTTP.

Two apps on one SQLite store: one serves heartbeats in front of FastAPI (the
default), the other with the hot path off, so its FastAPI route serves them.
Every case goes to both; status, body and the headers an agent acts on must
match.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import xplane.store.tables  # noqa: F401  (registers every table)
from tests.test_api_support import BOOT, bearer, seed_config, settings_for
from xplane.api import create_app
from xplane.api.serve import serve_in_thread
from xplane.store.db import Base, make_engine

MAX_BODY = 2048


@pytest.fixture(scope="module")
def apis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    db_url = f"sqlite:///{tmp_path_factory.mktemp('hot') / 'xplane.db'}"
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    seed_config(engine)
    hot = create_app(settings_for(db_url, max_body_bytes=MAX_BODY))
    routed = create_app(settings_for(db_url, max_body_bytes=MAX_BODY))
    routed.hot_path = False  # type: ignore[attr-defined]
    with (
        serve_in_thread(hot) as hot_served,
        serve_in_thread(routed) as routed_served,
        httpx.Client(base_url=hot_served.url, timeout=30) as hot_http,
        httpx.Client(base_url=routed_served.url, timeout=30) as routed_http,
    ):
        nodes = {}
        for name, address in (("a", "10.0.0.1"), ("b", "10.0.0.2")):
            body = {"node_id": f"jp-{name}", "service": "web", "region": "jp", "address": address}
            answer = hot_http.post("/nodes/register", json=body, headers=bearer(BOOT)).json()
            nodes[name] = (answer["node_id"], answer["token"])
        yield {"hot": (hot, hot_http), "routed": (routed, routed_http), "nodes": nodes}
    engine.dispose()


def beat(node_id: str, **changes: Any) -> dict[str, Any]:
    return {"node_id": node_id, "cpu": 0.5, "rtt_ms": 10.0, "error_rate": 0.0, **changes}


def both(apis: dict[str, Any], **request: Any) -> tuple[httpx.Response, httpx.Response]:
    answers = []
    for key in ("hot", "routed"):
        content = request.get("content")
        if callable(content):  # a fresh generator per request (chunked bodies)
            content = content()
        sent = {**request, "content": content} if content is not None else request
        answers.append(apis[key][1].post("/nodes/heartbeat", **sent))
    return answers[0], answers[1]


def assert_same(hot: httpx.Response, routed: httpx.Response, status: int) -> dict[str, Any]:
    assert (hot.status_code, routed.status_code) == (status, status), (hot.text, routed.text)
    assert without_parser_wording(hot.json()) == without_parser_wording(routed.json())
    for header in ("content-type", "www-authenticate", "retry-after"):
        assert hot.headers.get(header) == routed.headers.get(header), header
    body: dict[str, Any] = hot.json()
    return body


def without_parser_wording(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON parsers differ (pydantic's vs the json module's) in how they word a syntax
    error; the field and the "malformed JSON" prefix must still match."""
    detail = [
        {**d, "message": d["message"].split(":")[0]}
        if d.get("message", "").startswith("malformed JSON:")
        else d
        for d in body.get("detail", [])
    ]
    return {**body, "detail": detail}


def test_a_good_heartbeat_is_stored_and_answered_alike(apis: dict[str, Any]) -> None:
    node_id, token = apis["nodes"]["a"]
    body = assert_same(*both(apis, json=beat(node_id, qps=3.0), headers=bearer(token)), 200)
    assert body == {
        "state": "idle",
        "status": "up",
        "action": "none",
        "heartbeat_interval_seconds": 10.0,
    }
    node = apis["hot"][1].get(f"/nodes/{node_id}", headers=bearer("admin-secret")).json()
    assert node["cpu"] == 0.5 and node["qps"] == 3.0


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, "missing bearer token"),
        ({"Authorization": "Basic abc"}, "missing bearer token"),
        ({"Authorization": "Bearer"}, "missing bearer token"),
        ({"Authorization": "Bearer not-a-token"}, "invalid node token"),
    ],
)
def test_authentication_errors(apis: dict[str, Any], headers: dict[str, str], error: str) -> None:
    node_id, _ = apis["nodes"]["a"]
    body = assert_same(*both(apis, json=beat(node_id), headers=headers), 401)
    assert body["error"] == error and body["detail"][0]["field"] == "authorization"


def test_another_nodes_token_and_an_unknown_node(apis: dict[str, Any]) -> None:
    (_, a_token), (b_id, _) = apis["nodes"]["a"], apis["nodes"]["b"]
    body = assert_same(*both(apis, json=beat(b_id), headers=bearer(a_token)), 403)
    assert body["detail"] == [{"field": "node_id", "message": "not your node"}]
    body = assert_same(*both(apis, json=beat("jp-nobody"), headers=bearer(a_token)), 404)
    assert "jp-nobody" in body["detail"][0]["message"]


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"  ", "body"),
        (b"[]", "body"),
        (json.dumps(beat("jp-a", cpu=2)).encode(), "cpu"),
        (json.dumps(beat("jp-a", probes=[{"target": "x", "ok": "no?"}])).encode(), "probes[0].ok"),
        (json.dumps({**beat("jp-a"), "extra": 1}).encode(), "extra"),
    ],
)
def test_body_errors_name_the_field(apis: dict[str, Any], content: bytes, field: str) -> None:
    _, token = apis["nodes"]["a"]
    headers = {**bearer(token), "Content-Type": "application/json"}
    body = assert_same(*both(apis, content=content, headers=headers), 422)
    assert field in [d["field"] for d in body["detail"]], body


def test_authentication_comes_before_the_body(apis: dict[str, Any]) -> None:
    assert_same(*both(apis, content=b"{not json", headers={}), 401)


def test_oversized_bodies(apis: dict[str, Any]) -> None:
    node_id, token = apis["nodes"]["a"]
    big = json.dumps(beat(node_id, probes=[{"target": "t" * 200, "ok": True}] * 20)).encode()
    assert len(big) > MAX_BODY
    assert_same(*both(apis, content=big, headers=bearer(token)), 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: the bytes themselves are counted
        yield big[:1000]
        yield big[1000:]

    body = assert_same(*both(apis, content=chunked, headers=bearer(token)), 413)
    assert body["detail"][0]["field"] == "body"


def test_an_unexpected_failure_is_a_logged_500(
    apis: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(_beat: Any) -> None:
        raise RuntimeError("disk on fire")

    for key in ("hot", "routed"):
        monkeypatch.setattr(apis[key][0].state.ctx.writer, "submit", broken)
    node_id, token = apis["nodes"]["a"]
    body = assert_same(*both(apis, json=beat(node_id), headers=bearer(token)), 500)
    assert body == {"error": "internal error", "detail": []}
    logged = [r for r in caplog.records if "unhandled error on POST /nodes/heartbeat" in r.message]
    assert len(logged) == 2 and all("disk on fire" in (r.exc_text or "") for r in logged)


def test_other_requests_still_go_through_fastapi(apis: dict[str, Any]) -> None:
    hot_http = apis["hot"][1]
    # Only POST is the hot path: a GET is FastAPI's /nodes/{node_id} (admin-only).
    assert hot_http.get("/nodes/heartbeat").status_code == 401
    answer = hot_http.get("/nodes/heartbeat", headers=bearer("admin-secret"))
    assert answer.status_code == 404 and "heartbeat" in answer.json()["detail"][0]["message"]
    schema = hot_http.get("/openapi.json").json()
    assert "post" in schema["paths"]["/nodes/heartbeat"]  # still documented
