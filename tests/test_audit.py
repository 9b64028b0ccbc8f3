"""The audit trail: exactly one ``audit.<action>`` event per mutating call, whatever
its outcome (ok, refused 401/403, failed), with who, role, target, reason and
request id; never a token or secret; listed by ``xplane events --kind audit.``;
never pruned with ordinary events."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from tests.test_api_support import (
    ADMIN,
    BOOT,
    DB_BACKENDS,
    Api,
    bearer,
    module_database,
    reset_database,
    running_api,
    settings_for,
)
from xplane.api import create_app
from xplane.cli.main import app as cli
from xplane.store import api_tokens
from xplane.store.db import make_sessionmaker, transaction, utcnow
from xplane.store.events import EventRow, prune_events, record_event


@pytest.fixture(scope="module", params=DB_BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Engine]]:
    yield from module_database(request.param, str(tmp_path_factory.mktemp("audit")))


@pytest.fixture(scope="module")
def server(database: tuple[str, Engine]) -> Iterator[Api]:
    with running_api(database[1], database[0]) as running:
        yield running


@pytest.fixture
def api(server: Api) -> Api:
    reset_database(server.engine)
    return server


def _token(api: Api, name: str, role: str, scopes: list[str] | None = None) -> str:
    with transaction(make_sessionmaker(api.engine)) as session:
        expires = utcnow() + timedelta(hours=1)
        return api_tokens.create_token(session, name, role, scopes or [], expires, "t").token


def _audit(api: Api) -> list[EventRow]:
    with make_sessionmaker(api.engine)() as session:
        query = select(EventRow).where(EventRow.kind.startswith("audit.")).order_by(EventRow.id)
        return list(session.scalars(query))


def test_one_event_per_action_with_who_what_why_and_request_id(api: Api) -> None:
    # The gate is the store's (no Temporal needed): an action answered here, in full.
    operator = _token(api, "ci-operator", "operator")

    response = api.http.post(
        "/gate/close",
        json={"reason": "kernel upgrade"},
        headers={**bearer(operator), "X-Request-ID": "req-42"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-42"

    [event] = _audit(api)
    assert event.kind == "audit.gate.close"
    assert event.correlation_id == "req-42"
    assert event.data["who"] == {
        "kind": "api-token",
        "subject": "ci-operator",
        "name": "ci-operator",
    }
    assert event.data["role"] == "operator"
    assert event.data["outcome"] == "ok" and event.data["status"] == 200
    assert event.data["reason"] == "kernel upgrade"
    assert "ci-operator" in event.message and "kernel upgrade" in event.message


def test_an_action_on_a_node_names_its_target(api: Api) -> None:
    # Without Temporal the drain cannot be answered (503): audited as failed, with its node.
    node_id, _ = api.registered()
    operator = _token(api, "ci-operator", "operator", ["web/jp"])
    response = api.http.post(
        f"/nodes/{node_id}/drain", json={"reason": "kernel upgrade"}, headers=bearer(operator)
    )
    assert response.status_code == 503, response.text

    [event] = _audit(api)
    assert event.kind == "audit.node.drain"
    assert (event.service, event.region, event.node_id) == ("web", "jp", node_id)
    assert event.data["role"] == "operator@web/jp"
    assert event.data["outcome"] == "failed" and event.data["status"] == 503
    assert event.data["target"] == {"service": "web", "region": "jp", "node_id": node_id}


def test_refused_calls_are_audited_once_each(api: Api) -> None:
    node_id, _ = api.registered()
    viewer = _token(api, "dashboard", "viewer")
    elsewhere = _token(api, "sg-ops", "operator", ["web/sg-east"])

    assert api.http.post(f"/nodes/{node_id}/drain", json={}).status_code == 401
    assert (
        api.http.post(f"/nodes/{node_id}/drain", json={}, headers=bearer("wrong")).status_code
        == 401
    )
    assert (
        api.http.post(f"/nodes/{node_id}/drain", json={}, headers=bearer(viewer)).status_code == 403
    )
    assert (
        api.http.post(f"/nodes/{node_id}/drain", json={}, headers=bearer(elsewhere)).status_code
        == 403
    )

    events = _audit(api)
    assert [e.data["outcome"] for e in events] == ["refused"] * 4
    assert [e.data["status"] for e in events] == [401, 401, 403, 403]
    assert [e.data["who"]["name"] for e in events] == [
        "anonymous",
        "anonymous",
        "dashboard",
        "sg-ops",
    ]
    assert all(e.node_id == node_id for e in events)


def test_failed_calls_are_audited(api: Api) -> None:
    assert api.admin("POST", "/nodes/jp-nope/drain", json={"reason": "x"}).status_code == 503
    assert api.admin("POST", "/nodes/jp-nope/drain", json={"reason": 7}).status_code == 422
    assert (
        api.admin("POST", "/tokens", json={"name": "Bad Name", "role": "viewer"}).status_code == 422
    )

    events = _audit(api)
    assert [(e.kind, e.data["outcome"], e.data["status"]) for e in events] == [
        ("audit.node.drain", "failed", 503),  # this API has no Temporal to answer
        ("audit.node.drain", "failed", 422),
        ("audit.token.create", "failed", 422),
    ]
    assert events[0].data["who"] == {
        "kind": "admin-token",
        "subject": "admin-token",
        "name": "admin-token",
    }


def test_reads_are_not_audited(api: Api) -> None:
    api.registered()
    for path in ("/nodes", "/regions", "/tokens"):
        assert api.admin("GET", path).status_code == 200
    assert _audit(api) == []


def test_no_token_or_secret_in_any_audit_event(api: Api) -> None:
    created = api.admin(
        "POST", "/tokens", json={"name": "deploy-bot", "role": "operator", "reason": "CI"}
    )
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    _node, node_token = api.registered()
    bot = api.http.post("/gate/close", json={"reason": "deploy"}, headers=bearer(secret))
    assert bot.status_code == 200, bot.text
    revoked = api.http.delete(
        "/tokens/deploy-bot", headers={**bearer(ADMIN), "X-XPlane-Reason": "rotated"}
    )
    assert revoked.status_code == 200
    assert (
        api.http.post("/gate/open", json={"reason": "x"}, headers=bearer(secret)).status_code == 401
    )

    events = _audit(api)
    assert [(e.kind, e.data["outcome"]) for e in events] == [
        ("audit.token.create", "ok"),
        ("audit.gate.close", "ok"),
        ("audit.token.revoke", "ok"),
        ("audit.gate.open", "refused"),
    ]
    assert events[0].data["reason"] == "CI" and events[2].data["reason"] == "rotated"
    assert events[1].data["who"]["name"] == "deploy-bot"
    dumped = json.dumps([[e.message, e.data] for e in events])
    for value in (secret, secret[len(api_tokens.PREFIX) :], ADMIN, BOOT, node_token):
        assert value not in dumped
    with make_sessionmaker(api.engine)() as session:
        stored: Any = session.get(api_tokens.ApiTokenRow, "deploy-bot")
        assert stored.token_hash == api_tokens.hash_token(secret) != secret


def test_event_pruning_never_deletes_audit_events(api: Api) -> None:
    long_ago = utcnow() - timedelta(days=400)
    with transaction(make_sessionmaker(api.engine)) as session:
        record_event(session, "node.down", "old", source="t", at=long_ago)
        record_event(session, "audit.node.drain", "old audit", source="api", at=long_ago)
        record_event(session, "node.up", "recent", source="t")
    with transaction(make_sessionmaker(api.engine)) as session:
        assert prune_events(session, utcnow() - timedelta(days=30)) == 1
    with make_sessionmaker(api.engine)() as session:
        left = sorted(e.message for e in session.scalars(select(EventRow)))
    assert left == ["old audit", "recent"]


def test_events_cli_lists_audit_events(api: Api, database: tuple[str, Engine]) -> None:
    assert api.admin("POST", "/gate/close", json={"reason": "cli"}).status_code == 200

    result = CliRunner().invoke(
        cli, ["events", "--kind", "audit.", "--db", database[0], "--output", "json"]
    )
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [e["kind"] for e in listed] == ["audit.gate.close"]
    assert listed[0]["data"]["reason"] == "cli"


def test_gate_cli_switches_are_audited(api: Api, database: tuple[str, Engine]) -> None:
    for verb in ("close", "open"):
        result = CliRunner().invoke(
            cli, ["gate", verb, "--reason", "db failover", "--db", database[0]]
        )
        assert result.exit_code == 0, result.output

    events = _audit(api)
    assert [(e.kind, e.source, e.data["reason"]) for e in events] == [
        ("audit.gate.close", "cli", "db failover"),
        ("audit.gate.open", "cli", "db failover"),
    ]
    assert events[0].data["who"]["name"].startswith("cli:")


def test_control_characters_in_what_callers_send_are_stored_harmlessly(api: Api) -> None:
    assert api.admin("POST", "/nodes/jp%00x/drain", json={}).status_code == 422
    forged = {"X-XPlane-Reason": "ok\tthen", "X-Request-ID": "bad id with spaces"}
    assert (
        api.http.post("/nodes/jp-x/drain", json={}, headers={**bearer(ADMIN), **forged}).status_code
        == 422
    )
    assert api.admin("POST", "/nodes/jp-x/drain", json={"reason": "a\nb\u0000c"}).status_code == 422

    events = _audit(api)
    assert [e.data["outcome"] for e in events] == ["failed"] * 3
    assert events[0].node_id == "jp?x"
    assert events[1].data["reason"] == "ok?then"
    assert events[1].data["request_id"] != "bad id with spaces"  # replaced by a generated one
    assert events[2].data["reason"] == "a?b?c"


def test_the_api_pruning_loop_prunes_events_only_with_a_retention(
    api: Api, database: tuple[str, Engine]
) -> None:
    from xplane.api.app import _prune

    long_ago = utcnow() - timedelta(days=400)
    with transaction(make_sessionmaker(api.engine)) as session:
        record_event(session, "node.down", "old", source="t", at=long_ago)
        record_event(session, "audit.token.create", "old audit", source="api", at=long_ago)
    kept = create_app(settings_for(database[0]))
    _prune(kept.state.ctx, utcnow())
    kept.state.ctx.engine.dispose()
    assert len(_all_events(api)) == 2  # no retention set: events are kept
    pruning = create_app(settings_for(database[0], event_retention=timedelta(days=90)))
    _prune(pruning.state.ctx, utcnow())
    pruning.state.ctx.engine.dispose()
    assert _all_events(api) == ["old audit"]


def _all_events(api: Api) -> list[str]:
    with make_sessionmaker(api.engine)() as session:
        return [e.message for e in session.scalars(select(EventRow))]
