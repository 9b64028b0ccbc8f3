"""Every bad request is a 4xx naming the field, and stores nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_api_support import (
    BOOT,
    DB_BACKENDS,
    Api,
    bearer,
    module_database,
    reset_database,
    running_api,
)


@pytest.fixture(scope="module", params=DB_BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    for url, engine in module_database(request.param, str(tmp_path_factory.mktemp("api"))):
        reset_database(engine)
        with running_api(engine, url, max_body_bytes=4096) as running:
            yield running


@pytest.fixture
def node(server: Api) -> tuple[str, str]:
    """A registered node (id, token); node rows persist across this module's tests."""
    return server.registered(node_id="jp-fixed", address="10.9.9.9")


def post_raw(api: Api, path: str, content: bytes, token: str) -> Any:
    headers = {**bearer(token), "Content-Type": "application/json"}
    return api.http.post(path, content=content, headers=headers)


def good_beat(node_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    """A valid heartbeat with ``changes`` applied (``...`` drops a field)."""
    body: dict[str, Any] = {"node_id": node_id, "cpu": 0.5, "rtt_ms": 10, "error_rate": 0.0}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


BAD_HEARTBEATS = [
    ({"cpu": 1.5}, "cpu"),
    ({"cpu": -0.1}, "cpu"),
    ({"cpu": "0.5"}, "cpu"),
    ({"cpu": True}, "cpu"),
    ({"cpu": None}, "cpu"),
    ({"rtt_ms": -1}, "rtt_ms"),
    ({"error_rate": 2}, "error_rate"),
    ({"qps": -3}, "qps"),
    ({"cpu": ...}, "cpu"),
    ({"node_id": ...}, "node_id"),
    ({"surprise": 1}, "surprise"),
    ({"status": "down"}, "status"),
    ({"probes": [{"target": "x", "ok": "yes"}]}, "probes[0].ok"),
    ({"probes": [{"target": "x", "ok": True, "rtt_ms": -1}]}, "probes[0].rtt_ms"),
    ({"probes": [{"target": "x", "ok": True, "extra": 1}]}, "probes[0].extra"),
    ({"probes": {"target": "x"}}, "probes"),
]


@pytest.mark.parametrize(("change", "field"), BAD_HEARTBEATS)
def test_bad_heartbeat_fields(server: Api, node: tuple[str, str], change: dict, field: str) -> None:
    node_id, token = node
    before = server.counts()
    response = server.http.post(
        "/nodes/heartbeat", json=good_beat(node_id, change), headers=bearer(token)
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] and field in [d["field"] for d in body["detail"]]
    assert server.counts() == before


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_422(server: Api, node: tuple[str, str], token: str) -> None:
    node_id, node_token = node
    before = server.counts()
    raw = f'{{"node_id": "{node_id}", "cpu": 0.1, "rtt_ms": {token}, "error_rate": 0}}'
    response = post_raw(server, "/nodes/heartbeat", raw.encode(), node_token)
    assert response.status_code == 422
    assert response.json()["detail"] == [{"field": "rtt_ms", "message": "must be a finite number"}]
    raw = f'{{"service": "web", "region": "jp", "address": "10.0.0.1", "port": {token}}}'
    assert post_raw(server, "/nodes/register", raw.encode(), BOOT).status_code == 422
    assert server.counts() == before


@pytest.mark.parametrize(
    "content", [b"", b"{", b'{"node_id": "a",}', b"[]", b"null", b'"text"', b"\xff\xfe"]
)
def test_malformed_json_is_422(server: Api, node: tuple[str, str], content: bytes) -> None:
    before = server.counts()
    for path, token in (("/nodes/heartbeat", node[1]), ("/nodes/register", BOOT)):
        response = post_raw(server, path, content, token)
        assert response.status_code == 422, (path, content, response.text)
        assert response.json()["detail"][0]["field"] == "body"
    assert server.counts() == before


def test_oversized_bodies_are_413(server: Api, node: tuple[str, str]) -> None:
    before = server.counts()
    padding = "x" * 5000
    body = json.dumps(
        {"service": "web", "region": "jp", "address": "10.0.0.1", "hostname": padding}
    )
    response = post_raw(server, "/nodes/register", body.encode(), BOOT)
    assert response.status_code == 413
    assert response.json()["detail"][0]["field"] == "body"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        yield b'{"node_id": "jp-fixed", "cpu": 0.1, "probes": ['
        for _ in range(200):
            yield b'{"target": "t", "ok": true},'
        yield b"]}"

    response = server.http.post("/nodes/heartbeat", content=chunks(), headers={**bearer(node[1])})
    assert response.status_code == 413
    assert server.counts() == before


BAD_REGISTRATIONS = [
    ({"address": "10.0.0.300"}, "address"),
    ({"address": "example.com"}, "address"),
    ({"address": 167772161}, "address"),
    ({"service": "Web!"}, "service"),
    ({"region": ""}, "region"),
    ({"node_id": "UPPER"}, "node_id"),
    ({"port": 0}, "port"),
    ({"port": 70000}, "port"),
    ({"port": 80.5}, "port"),
    ({"labels": {"a": 1}}, "labels.a"),
    ({"labels": ["a"]}, "labels"),
    ({"secret": "x"}, "secret"),
]


@pytest.mark.parametrize(("change", "field"), BAD_REGISTRATIONS)
def test_bad_registration_fields(server: Api, change: dict, field: str) -> None:
    before = server.counts()
    response = server.register(**change)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in response.json()["detail"]]
    assert server.counts() == before


def test_ipv6_address_accepted_and_normalised(server: Api) -> None:
    node_id, _ = server.registered(node_id="jp-v6", address="2001:DB8:0:0::1")
    assert server.admin("GET", f"/nodes/{node_id}").json()["address"] == "2001:db8::1"


def test_unknown_routes_and_methods_use_the_error_shape(server: Api) -> None:
    missing = server.http.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"]
    wrong = server.http.get("/nodes/heartbeat", headers=bearer("x"))
    assert wrong.status_code in (401, 405) and wrong.json()["error"]


# ---------------------------------------------------------------- property tests
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
REGISTER_KEYS = [
    "node_id",
    "service",
    "region",
    "address",
    "hostname",
    "labels",
    "agent_version",
    "port",
]
HEARTBEAT_KEYS = ["node_id", "cpu", "rtt_ms", "error_rate", "qps", "probes", "status"]


def bodies(keys: list[str], base: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid body with fields replaced, dropped or added; or any JSON; or raw bytes."""
    mutated = st.fixed_dictionaries(
        {},
        optional={k: json_values for k in [*keys, "extra"]},
    ).map(lambda changes: {**base, **changes})
    dropped = st.sets(st.sampled_from(list(base))).map(
        lambda gone: {k: v for k, v in base.items() if k not in gone}
    )
    as_json = (mutated | dropped | json_values).map(lambda v: json.dumps(v).encode())
    return as_json | st.binary(max_size=64)


FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(content=bodies(REGISTER_KEYS, {"service": "web", "region": "jp", "address": "10.1.1.1"}))
def test_register_fuzz_never_5xx(server: Api, content: bytes) -> None:
    before = server.counts()
    response = post_raw(server, "/nodes/register", content, BOOT)
    assert response.status_code < 500, (content, response.text)
    assert "error" in response.json() if response.status_code >= 400 else True
    if response.status_code != 200:
        assert server.counts() == before


@FUZZ
@given(
    content=bodies(
        HEARTBEAT_KEYS, {"node_id": "jp-fixed", "cpu": 0.2, "rtt_ms": 1, "error_rate": 0}
    )
)
def test_heartbeat_fuzz_never_5xx(server: Api, node: tuple[str, str], content: bytes) -> None:
    before = server.counts()
    response = post_raw(server, "/nodes/heartbeat", content, node[1])
    assert response.status_code < 500, (content, response.text)
    nodes, samples, events = server.counts()
    if response.status_code == 200:
        assert (nodes, samples, events) == (before[0], before[1] + 1, before[2])
    else:
        assert response.json()["error"]
        assert (nodes, samples, events) == before
