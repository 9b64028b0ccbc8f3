"""API tokens: created through the API (and ``xplane tokens``), shown once, stored
hashed, refused once expired or revoked; plus the pure rules of roles and scopes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from tests.test_api_support import (
    ADMIN,
    Api,
    bearer,
    module_database,
    reset_database,
    running_api,
    settings_for,
)
from xplane.api import create_app
from xplane.api.serve import serve_in_thread
from xplane.auth.roles import (
    Grant,
    Identity,
    Permission,
    Role,
    Scope,
    Target,
    claim_names,
    grants_for,
    parse_role_map,
)
from xplane.cli.main import app as cli
from xplane.netutil import free_port
from xplane.store import api_tokens
from xplane.store.db import make_sessionmaker, transaction, utcnow
from xplane.store.events import EventRow
from xplane.up import admin_login


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Engine]]:
    yield from module_database("sqlite", str(tmp_path_factory.mktemp("tokens")))


@pytest.fixture(scope="module")
def server(database: tuple[str, Engine]) -> Iterator[Api]:
    with running_api(database[1], database[0]) as running:
        yield running


@pytest.fixture
def api(server: Api) -> Api:
    reset_database(server.engine)
    return server


def _cli(api: Api, *args: str, token: str = ADMIN) -> tuple[int, str, str]:
    env = {"XPLANE_API_URL": api.url, "XPLANE_ADMIN_TOKEN": token}
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_cli_creates_lists_and_revokes_a_token(api: Api) -> None:
    code, out, err = _cli(api, "tokens", "create", "deploy-bot", "--role", "operator",
                          "--scope", "web/jp", "--expires-in", "2h", "--reason", "CI")  # fmt: skip
    assert code == 0, err
    secret = out.strip()
    assert secret.startswith("xpt_") and "shown once" in err
    assert api.http.get("/nodes", headers=bearer(secret)).status_code == 200
    assert api.http.get("/tokens", headers=bearer(secret)).status_code == 403  # operator

    code, out, err = _cli(api, "tokens", "list", "--json")
    assert code == 0, err
    [listed] = json.loads(out)
    assert (listed["name"], listed["role"], listed["scopes"], listed["state"]) == (
        "deploy-bot", "operator", ["web/jp"], "active",
    )  # fmt: skip
    assert listed["created_by"] == "admin-token"
    assert secret not in out

    code, out, err = _cli(api, "tokens", "revoke", "deploy-bot", "--reason", "leaked")
    assert code == 0, err
    assert "deploy-bot: revoked at" in out
    assert api.http.get("/nodes", headers=bearer(secret)).status_code == 401
    assert api.admin("GET", "/tokens").json()[0]["state"] == "revoked"


def test_cli_without_admin_rights_fails_with_the_reason(api: Api) -> None:
    code, _out, err = _cli(api, "tokens", "list", token="nonsense")
    assert code == 1 and "401" in err


def test_names_are_never_reused_and_bad_input_names_the_field(api: Api) -> None:
    body = {"name": "bot", "role": "viewer"}
    assert api.admin("POST", "/tokens", json=body).status_code == 201
    api.admin("DELETE", "/tokens/bot")
    again = api.admin("POST", "/tokens", json=body)
    assert again.status_code == 409 and again.json()["detail"][0]["field"] == "name"
    for bad, field in (
        ({"name": "x", "role": "root"}, "role"),
        ({"name": "x", "role": "viewer", "scopes": ["a/b/c"]}, "scopes[0]"),
        ({"name": "x", "role": "viewer", "expires_in": "100y"}, "expires_in"),
        ({"name": "x", "role": "viewer", "expires_in": "0s"}, "expires_in"),
        ({"name": "UPPER", "role": "viewer"}, "name"),
    ):
        response = api.admin("POST", "/tokens", json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["detail"][0]["field"] == field, response.json()
    assert [t["name"] for t in api.admin("GET", "/tokens").json()] == ["bot"]
    assert api.admin("DELETE", "/tokens/nobody").status_code == 404


def test_expired_token_is_refused(api: Api) -> None:
    with transaction(make_sessionmaker(api.engine)) as session:
        old = api_tokens.create_token(
            session, "old", "admin", [], utcnow() - timedelta(seconds=1), "t"
        ).token
        live = api_tokens.create_token(
            session, "live", "admin", [], utcnow() + timedelta(minutes=5), "t"
        ).token
    assert api.http.get("/tokens", headers=bearer(old)).status_code == 401
    listed = {t["name"]: t["state"] for t in api.http.get("/tokens", headers=bearer(live)).json()}
    assert listed == {"old": "expired", "live": "active"}


def test_only_the_hash_is_stored(api: Api) -> None:
    created = api.admin("POST", "/tokens", json={"name": "bot", "role": "viewer"}).json()
    with make_sessionmaker(api.engine)() as session:
        row = session.get(api_tokens.ApiTokenRow, "bot")
        assert row is not None
        assert row.token_hash == api_tokens.hash_token(created["token"])
        assert created["token"] not in repr(vars(row))


# ------------------------------------------------------------------ pure rules
def test_roles_include_the_lower_ones_and_scopes_limit_them() -> None:
    jp = Target("svc-plus", "jp", "jp-1")
    sg = Target("svc-plus", "sg", "sg-1")
    op_jp = Identity("t", "s", "n", (Grant(Role.operator, Scope.parse("svc-plus/jp")),))
    assert op_jp.allows(Permission.operate, jp) and op_jp.allows(Permission.read, jp)
    assert not op_jp.allows(Permission.operate, sg)
    assert not op_jp.allows(Permission.admin, jp)
    assert not op_jp.allows(Permission.operate, Target())  # service-less: unscoped only
    svc = Identity("t", "s", "n", (Grant(Role.viewer, Scope.parse("svc-plus")),))
    assert svc.allows(Permission.read, sg) and not svc.allows(Permission.read, Target("other"))
    admin = Identity("t", "s", "n", (Grant(Role.admin),))
    assert all(admin.allows(p, Target()) for p in Permission)
    assert not Identity("t", "s", "n").allows(Permission.read, jp)


def test_casdoor_roles_and_groups_map_to_grants() -> None:
    claims = {
        "roles": [{"name": "jp-oncall", "owner": "built-in"}, "viewer", {"no": "name"}, 3],
        "groups": ["built-in/sre"],
    }
    names = claim_names(claims)
    assert names == ["jp-oncall", "viewer", "built-in/sre"]
    mapping = parse_role_map("jp-oncall=operator@svc-plus/jp, built-in/sre=admin")
    assert grants_for(names, mapping) == (
        Grant(Role.operator, Scope("svc-plus", "jp")),
        Grant(Role.viewer),
        Grant(Role.admin),
    )
    assert claim_names({"xroles": "admin"}, "xroles") == ["admin"]
    for bad in ("nope", "a=emperor", "a=viewer@x/y/z"):
        with pytest.raises(ValueError):
            parse_role_map(bad)


def test_up_prints_a_working_admin_login_and_replaces_it_next_run(api: Api, tmp_path: Path) -> None:
    said: list[str] = []
    factory = make_sessionmaker(api.engine)
    first = admin_login(factory, tmp_path, api.url, said.append)
    old = first.read_text().strip()
    assert first.stat().st_mode & 0o777 == 0o600
    assert f"XPLANE_ADMIN_TOKEN=$(cat {first})" in said[0] and api.url in said[0]
    assert api.http.get("/tokens", headers=bearer(old)).status_code == 200  # admin

    second = admin_login(factory, tmp_path, api.url, said.append)
    new = second.read_text().strip()
    assert new != old
    assert api.http.get("/tokens", headers=bearer(old)).status_code == 401
    assert api.http.get("/tokens", headers=bearer(new)).status_code == 200


def test_cli_writes_the_store_directly_with_db_and_is_audited(
    api: Api, database: tuple[str, Engine]
) -> None:
    code, out, err = _cli(api, "tokens", "create", "first-admin", "--role", "admin",
                          "--db", database[0], "--reason", "bootstrap", token="")  # fmt: skip
    assert code == 0, err
    secret = out.strip()
    assert api.http.get("/tokens", headers=bearer(secret)).status_code == 200
    code, out, err = _cli(api, "tokens", "create", "first-admin", "--role", "admin",
                          "--db", database[0], token="")  # fmt: skip
    assert code == 1 and "exists" in err
    code, out, err = _cli(api, "tokens", "revoke", "first-admin", "--db", database[0], token="")
    assert code == 0, err
    assert api.http.get("/tokens", headers=bearer(secret)).status_code == 401
    with make_sessionmaker(api.engine)() as session:
        audit = [
            (e.kind, e.source, e.data["who"]["kind"], e.data["reason"])
            for e in session.scalars(select(EventRow).order_by(EventRow.id))
            if e.kind.startswith("audit.")
        ]
    assert audit == [
        ("audit.token.create", "cli", "cli", "bootstrap"),
        ("audit.token.revoke", "cli", "cli", None),
    ]
    assert secret not in json.dumps(audit)


def test_store_down_while_authorizing_is_503_not_500() -> None:
    url = f"postgresql+psycopg://xplane@127.0.0.1:{free_port()}/nowhere?connect_timeout=2"
    app = create_app(settings_for(url))
    with serve_in_thread(app) as served, httpx.Client(base_url=served.url, timeout=30) as http:
        response = http.get("/nodes", headers=bearer("xpt_" + "x" * 43))
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        # The shared admin token needs no store to be known; the node lookup then fails.
        assert http.get("/nodes/jp-1", headers=bearer(ADMIN)).status_code == 503
