"""Route x role matrix: every route of the API, for no credentials, a bad token, the
shared admin token, each role, and roles scoped to another region: 401, 403 or 2xx.

Routes come from the app itself (``app.routes``, included routers too), so a new
route is in the matrix at once; one without a rule in ``xplane/api/authz.py`` stops
``create_app`` and fails here.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from sqlalchemy import Engine

from tests.test_api_support import (
    ADMIN,
    DB_BACKENDS,
    Api,
    bearer,
    module_database,
    reset_database,
    running_api,
    settings_for,
)
from xplane.api import create_app
from xplane.api.authz import (
    RULES,
    Call,
    Rule,
    action_target,
    loop_target,
    route_keys,
    rule_for,
)
from xplane.auth.roles import Permission, Scope, Target
from xplane.store import api_tokens
from xplane.store.db import make_sessionmaker, transaction, utcnow

_names = itertools.count()
# Path parameters of the routes, all pointing at web/jp (the node under test is there).
PATH_PARAMS = {
    "name": "victim",
    "workflow_id": "autoscale-web-jp",
    "service": "web",
    "region": "jp",
    "update_id": "0" * 32,
}


@dataclass(frozen=True)
class Caller:
    label: str
    token: str | None
    level: int  # 0 none, 1 viewer, 2 operator, 3 admin
    scope: Scope | None = None  # None: every service and region


# The least role each route needs, written out (not read from the table): a rule
# loosened by mistake fails here. True: this test serves the route fully (2xx when
# allowed); False: it needs Temporal or changes state once, so "allowed" means past
# authorization (not 401, 403 or 500).
MINIMUM_ROLE = {
    ("GET", "/nodes"): ("viewer", True),
    ("GET", "/nodes/{node_id}"): ("viewer", True),
    ("GET", "/regions"): ("viewer", True),
    ("POST", "/nodes/{node_id}/drain"): ("operator", False),  # answered by Temporal
    ("GET", "/tokens"): ("admin", True),
    ("POST", "/tokens"): ("admin", True),
    ("DELETE", "/tokens/{name}"): ("admin", True),
    ("POST", "/nodes/{node_id}/undrain"): ("operator", False),
    ("POST", "/loops/{workflow_id}/pause"): ("operator", False),
    ("POST", "/loops/{workflow_id}/resume"): ("operator", False),
    ("POST", "/sync"): ("operator", False),
    ("POST", "/regions/{service}/{region}/retry"): ("operator", False),
    ("POST", "/regions/{service}/{region}/retire"): ("admin", False),
    ("POST", "/gate/close"): ("operator", False),
    ("POST", "/gate/open"): ("operator", False),
    ("POST", "/gtm/{service}/plan/approve"): ("admin", False),
    ("POST", "/gtm/{service}/plan/reject"): ("admin", False),
    ("GET", "/actions/{workflow_id}/{update_id}"): ("viewer", False),  # answered by Temporal
    ("GET", "/console/overview"): ("viewer", True),
    ("GET", "/console/traffic"): ("viewer", True),
    ("GET", "/console/regions/{service}/{region}"): ("viewer", True),
    ("GET", "/console/nodes/{node_id}"): ("viewer", True),
    ("GET", "/console/events"): ("viewer", True),
    ("GET", "/console/events/stream"): ("viewer", False),  # an answered stream stays open
    ("GET", "/console/config"): ("viewer", True),
    ("GET", "/console/plans"): ("viewer", True),
    ("GET", "/ui"): ("viewer", True),
    ("GET", "/ui/"): ("viewer", True),
    ("GET", "/ui/regions/{service}/{region}"): ("viewer", True),
    ("GET", "/ui/nodes/{node_id}"): ("viewer", True),
    ("GET", "/ui/events"): ("viewer", True),
    ("GET", "/ui/config"): ("viewer", True),
    ("GET", "/ui/plans"): ("viewer", True),
}
LEVEL = {Permission.read: 1, Permission.operate: 2, Permission.admin: 3}
ROLE_LEVEL = {"viewer": 1, "operator": 2, "admin": 3}


@pytest.fixture(scope="module", params=DB_BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Engine]]:
    yield from module_database(request.param, str(tmp_path_factory.mktemp("matrix")))


@pytest.fixture(scope="module")
def server(database: tuple[str, Engine]) -> Iterator[Api]:
    with running_api(database[1], database[0]) as running:
        yield running


@pytest.fixture
def api(server: Api) -> Api:
    reset_database(server.engine)
    return server


def _token(engine: Engine, role: str, scopes: list[str] = (), **kw: Any) -> str:  # type: ignore[assignment]
    expires = utcnow() + timedelta(hours=1)
    with transaction(make_sessionmaker(engine)) as session:
        name = f"t{next(_names)}"
        return api_tokens.create_token(
            session, name, role, list(scopes), expires, "test", **kw
        ).token


def _callers(engine: Engine) -> list[Caller]:
    callers = [
        Caller("no credentials", None, 0),
        Caller("garbage token", "not-a-token", 0),
        Caller("shared admin token", ADMIN, 3),
    ]
    for role, scope in itertools.product(ROLE_LEVEL, (None, "web/jp", "web/sg-east")):
        label = role if scope is None else f"{role}@{scope}"
        token = _token(engine, role, [scope] if scope else [])
        callers.append(
            Caller(label, token, ROLE_LEVEL[role], Scope.parse(scope) if scope else None)
        )
    return callers


def _request(api: Api, method: str, path: str, caller: Caller, node_id: str) -> httpx.Response:
    params = dict(PATH_PARAMS, node_id=node_id)
    if "{name}" in path:  # a token to revoke, fresh for every call
        params["name"] = _victim(api.engine)
    url = path.replace("{path:path}", "console.css").format(**params)
    body: Any = {"reason": "matrix"}
    if (method, path) == ("POST", "/tokens"):
        body = {"name": f"made{next(_names)}", "role": "viewer"}
    headers = bearer(caller.token) if caller.token else {}
    if path.endswith("/stream"):  # answered, it stays open: the status line is enough
        with api.http.stream(method, url, headers=headers) as response:
            return response
    if method in ("GET", "DELETE"):
        return api.http.request(method, url, headers=headers)
    return api.http.request(method, url, headers=headers, json=body)


def _victim(engine: Engine) -> str:
    with transaction(make_sessionmaker(engine)) as session:
        name = f"victim{next(_names)}"
        api_tokens.create_token(session, name, "viewer", [], utcnow() + timedelta(hours=1), "t")
        return name


def _expected(rule: Rule, caller: Caller, target: Target) -> int | None:
    """401, 403 or 200 (any 2xx); None: the route's own credential decides."""
    if rule.kind == "public":
        return 200
    if rule.kind == "own":
        return None
    if caller.level == 0:
        return 303 if rule.page else 401  # a console page sends a browser to its login
    assert rule.permission is not None
    if caller.level < LEVEL[rule.permission]:
        return 403
    if rule.target is None:  # a listing: shown filtered to the scope
        return 200
    return 200 if caller.scope is None or caller.scope.covers(target) else 403


def test_every_route_has_a_rule_and_the_expected_least_role(api: Api) -> None:
    keys = route_keys(api.app)
    assert ("POST", "/nodes/{node_id}/drain") in keys and ("GET", "/openapi.json") in keys
    for key in keys:
        rule = rule_for(*key)
        assert rule is not None, f"{key} has no authorization rule"
        if key in MINIMUM_ROLE:
            assert rule.permission is not None
            assert LEVEL[rule.permission] == ROLE_LEVEL[MINIMUM_ROLE[key][0]], key
        elif rule.kind == "identity":
            # Every other identity route (added later) must be written into MINIMUM_ROLE.
            pytest.fail(f"{key}: add its least role to MINIMUM_ROLE")


def test_route_role_matrix(api: Api) -> None:
    node_id, _ = api.registered()  # web/jp
    callers = _callers(api.engine)
    failures = []
    for method, path in route_keys(api.app):
        rule = rule_for(method, path)
        assert rule is not None
        answers = {}
        # What the route touches (the node's web/jp, or no service at all for tokens).
        params = {k: v for k, v in dict(PATH_PARAMS, node_id=node_id).items() if f"{{{k}}}" in path}
        call = Call(params, {}, None, make_sessionmaker(api.engine))
        target = rule.target(call) if rule.target is not None else Target()
        # A route about a node, a loop or a region of web/jp is judged by web/jp.
        if rule.kind != "identity":
            pass  # the route checks its own credential (a console page: its session)
        elif any(p in path for p in ("{node_id}", "{workflow_id}", "{region}")):
            assert (target.service, target.region) == ("web", "jp"), (path, target)
        elif "{service}" in path:
            assert (target.service, target.region) == ("web", None), (path, target)
        for caller in callers:
            response = _request(api, method, path, caller, node_id)
            answers[caller.label] = response.status_code
            expected = _expected(rule, caller, target)
            if expected is None:
                continue
            got = response.status_code
            if expected != 200:
                ok = got == expected
            elif MINIMUM_ROLE.get((method, path), ("", True))[1]:
                ok = 200 <= got < 300
            else:
                ok = (got not in (401, 403) and got < 500) or got in (502, 503)
            if not ok:
                failures.append(f"{method} {path} as {caller.label}: {got}, not {expected}")
            if got == 401 and "www-authenticate" not in response.headers:
                failures.append(f"{method} {path} as {caller.label}: 401 without WWW-Authenticate")
            if rule.target is None and expected == 200 and path == "/nodes":
                shown = [n["id"] for n in response.json()]
                wanted = [node_id] if caller.scope is None or caller.scope.region == "jp" else []
                if shown != wanted:
                    failures.append(f"GET /nodes as {caller.label} showed {shown}")
        if rule.kind == "own":
            # People's identities play no part: every token gets what a garbage one gets.
            with_token = {k: v for k, v in answers.items() if k != "no credentials"}
            if len(set(with_token.values())) != 1:
                failures.append(f"{method} {path}: answers differ by caller: {answers}")
    assert failures == [], "\n".join(failures)


def test_every_written_route_has_its_rule() -> None:
    for key, (role, _served) in MINIMUM_ROLE.items():
        rule = rule_for(*key)
        assert rule is not None and rule.permission is not None, key
        assert LEVEL[rule.permission] == ROLE_LEVEL[role], key


def test_loops_are_judged_by_their_service_and_region(api: Api) -> None:
    factory = make_sessionmaker(api.engine)

    def target(loop: str) -> Target:
        return loop_target(Call({"workflow_id": loop}, {}, None, factory))

    assert target("autoscale-web-sg-east") == Target("web", "sg-east", name="autoscale-web-sg-east")
    assert target("gtm-api") == Target("api", name="gtm-api")
    assert target("gitops-sync") == Target(name="gitops-sync")  # unscoped grants only


def test_a_pending_action_is_judged_by_the_workflow_it_went_to(api: Api) -> None:
    node_id, _ = api.registered()  # web/jp
    factory = make_sessionmaker(api.engine)

    def target(workflow_id: str) -> Target:
        return action_target(Call({"workflow_id": workflow_id}, {}, None, factory))

    assert target(f"node-{node_id}") == Target("web", "jp", node_id=node_id)
    assert target("region-sg-east") == Target("web", "sg-east", name="region-sg-east")
    # Two services have jp, none has mars: only an unscoped grant covers these.
    assert target("region-jp") == Target(region="jp", name="region-jp")
    assert target("region-mars") == Target(region="mars", name="region-mars")
    assert target("autoscale-web-jp") == Target("web", "jp", name="autoscale-web-jp")
    assert target("gtm-web") == Target("web", name="gtm-web")
    assert target("autoscale-nope-jp") == Target(name="autoscale-nope-jp")


def test_a_route_without_a_rule_stops_the_app(api: Api) -> None:
    extra = APIRouter()

    @extra.get("/unruled")
    def unruled() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="/unruled"):
        create_app(settings_for("sqlite://"), extra_routers=[extra])


def test_a_rule_removed_at_run_time_answers_500(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(RULES, ("GET", "/regions"))
    response = api.admin("GET", "/regions")
    assert response.status_code == 500
    assert api.admin("GET", "/nodes").status_code == 200
