"""The console's view models, store aggregates, sessions and JSON routes (no browser).

The aggregates are checked against GTM's own weight function on the same nodes, on
SQLite and PostgreSQL: the overview must say what the GTM loop computes.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import Engine

from tests.support.console_seed import REJECTED_ISSUE, add_event, seed_console_store
from tests.support.oidc import OidcProvider, oidc_provider  # noqa: F401 (fixture)
from xplane.api import ApiSettings, create_app
from xplane.api.console_auth import (
    SESSION_COOKIE,
    make_session,
    read_session,
    session_key,
)
from xplane.api.console_views import (
    Action,
    build_config_page,
    held_plans_of,
    published_reason,
    region_weight,
    timeline,
    traffic_history,
)
from xplane.api.serve import serve_in_thread
from xplane.auth.roles import Grant, Identity, Role, Scope
from xplane.config.revisions import RevisionInfo, RevisionStatus
from xplane.gtm.weights import compute_service_weights
from xplane.store import config_store
from xplane.store import console_queries as q
from xplane.store import nodes as node_store
from xplane.store.db import make_sessionmaker, transaction, utcnow
from xplane.store.events import EventRow
from xplane.store.node_tables import NodeRow
from xplane.store.pools import list_pools

ADMIN = "console-admin"
KEY = b"k" * 32
ALICE = Identity("oidc", "u-17", "alice", (Grant(Role.operator, Scope("web", "r000")),))
TIMEOUT = timedelta(seconds=15)


def test_region_aggregates_give_gtm_weights(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    now = utcnow()
    seeded = seed_console_store(factory, regions=4, nodes_per_region=6, now=now, history=False)
    with transaction(factory) as session:  # a mix GTM must not count as ready
        rows = {r.id: r for r in node_store.list_nodes(session, region=seeded.regions[3])}
        ids = sorted(rows)
        rows[ids[0]].error_rate = 0.9  # above max_error_rate
        rows[ids[1]].health_check_ok = False
        rows[ids[2]].probes_ok = 0  # every probe failing: down
        rows[ids[3]].state = "warm"
        rows[ids[4]].reported_status = "drain"
    with factory() as session:
        config = config_store.current_config(session)
        assert config is not None
        policy = config.gtm[seeded.service]
        tallies = q.region_tallies(session, now, TIMEOUT, {seeded.service: policy.max_error_rate})
        snapshots = [
            node_store.to_snapshot(r, now, TIMEOUT) for r in node_store.list_nodes(session)
        ]
        pools = {p.region: p.node_count for p in list_pools(session)}
    gtm = compute_service_weights(policy, config.regions, snapshots, pools, TIMEOUT.total_seconds())
    for name in seeded.regions:
        ours = region_weight(policy, config, name, tallies.get((seeded.service, name)), pools[name])
        theirs = gtm.regions[name]
        assert ours.model_dump() == theirs.model_dump(), name
    assert tallies[(seeded.service, seeded.regions[3])].ready == 1
    assert gtm.regions[seeded.thin_region].reason == "1 ready node(s) < min_ready_nodes 2"


def test_published_reason_names_the_slow_start() -> None:
    assert published_reason(40.0, 100.0) == "slow start 40 %"
    assert published_reason(100.0, 100.0) == "as computed"
    assert published_reason(None, 50.0) == "not published by this provider"


def _event(id: int, kind: str, minutes_ago: int, **kw: object) -> EventRow:
    now = utcnow()
    return EventRow(
        id=id,
        kind=kind,
        at=now - timedelta(minutes=minutes_ago),
        source="t",
        message=str(kw.pop("message", kind)),
        service="web",
        region="jp",
        node_id="n1",
        data=kw.pop("data", {}),
    )


def test_timeline_keeps_every_lifecycle_step_with_its_reason() -> None:
    events = [
        _event(1, "node.registered", 9),
        _event(2, "node.warm", 8, data={"from": "idle", "event": "booted"}),
        _event(
            3,
            "node.active",
            7,
            data={"from": "warm", "event": "ready"},
            message="node n1: warm -> active (ready): checks passed",
        ),
        _event(4, "node.drain_requested", 6, message="drain requested by operator: upgrade"),
        _event(5, "node.drain", 5, data={"from": "active", "event": "drain"}),
        _event(6, "dns.applied", 4),  # not a node step
    ]
    steps = timeline(events)
    assert [(s.from_state, s.to_state) for s in steps] == [
        (None, "idle"),
        ("idle", "warm"),
        ("warm", "active"),
        (None, None),
        ("active", "drain"),
    ]
    assert steps[2].why == "ready: checks passed"
    assert "upgrade" in steps[3].why


def test_traffic_rebuilds_node_counts_backwards_through_the_hour() -> None:
    now = utcnow()
    tally = q.RegionTally(service="web", region="jp", by_state={"active": 3, "drain": 1})
    node_events = [
        _event(1, "node.registered", 50),
        _event(2, "node.active", 40, data={"from": "idle"}),
        _event(3, "node.drain", 10, data={"from": "active"}),
    ]
    applies = [_event(4, "dns.applied", 30, data={"regions": {"jp": 80.0}})]
    applies[0].service = "web"
    traffic = traffic_history(
        now=now,
        since=now - timedelta(hours=1),
        regions=[("web", "jp")],
        applies=applies,
        node_events=node_events,
        tallies={("web", "jp"): tally},
        weight_before={("web", "jp"): 50.0},
    )
    points = traffic.series[0].points
    assert (points[0].weight, points[0].active_nodes, points[0].alive_nodes) == (50.0, 3, 3)
    after_register = next(p for p in points if p.alive_nodes == 4)
    assert after_register.active_nodes == 3
    assert max(p.active_nodes or 0 for p in points) == 4  # before the drain
    assert (points[-1].weight, points[-1].active_nodes, points[-1].alive_nodes) == (80.0, 3, 4)
    assert points[-1].at == now


def test_config_page_shows_only_a_rejection_newer_than_the_revision_in_force() -> None:
    def rev(id: int, status: RevisionStatus) -> RevisionInfo:
        errors = [REJECTED_ISSUE] if status is RevisionStatus.REJECTED else []
        return RevisionInfo(
            id=id, sha=f"{id:040d}", source="s", received_at=utcnow(), status=status, errors=errors
        )

    applied, old_reject = rev(2, RevisionStatus.APPLIED), rev(1, RevisionStatus.REJECTED)
    assert build_config_page(applied, [applied, old_reject]).rejected is None
    new_reject = rev(3, RevisionStatus.REJECTED)
    page = build_config_page(applied, [new_reject, applied, old_reject])
    assert page.rejected == new_reject
    assert page.errors == [REJECTED_ISSUE]


def test_a_session_cookie_holds_the_identity_and_is_refused_when_forged_tampered_or_expired() -> (
    None
):
    cookie = make_session(ALICE, KEY)
    session = read_session(cookie, KEY)
    assert session is not None and session.identity == ALICE and session.csrf
    body, sig = cookie.split(".")
    assert read_session(cookie, b"another key" * 3) is None  # rotated key
    assert read_session(body + "x." + sig, KEY) is None
    assert read_session(body + "." + sig[:-2] + "AA", KEY) is None
    assert read_session(make_session(ALICE, KEY, now=time.time() - 10, ttl_s=5), KEY) is None
    assert read_session("garbage", KEY) is None
    capped = read_session(make_session(ALICE, KEY, not_after=time.time() + 60), KEY)
    assert capped is not None and capped.expires <= time.time() + 61


@pytest.fixture
def api(engine: Engine, db_url: str) -> object:
    seed_console_store(make_sessionmaker(engine))
    app = create_app(ApiSettings(db_url=db_url, admin_token=ADMIN))
    with serve_in_thread(app) as running:
        yield running


def test_console_routes_need_credentials_and_name_bad_input(api: object) -> None:
    url = api.url  # type: ignore[attr-defined]
    assert httpx.get(f"{url}/console/overview").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(f"{url}/console/overview", headers=wrong).status_code == 401
    auth = {"Authorization": f"Bearer {ADMIN}"}
    bad = httpx.get(f"{url}/console/events", params={"limit": 0}, headers=auth)
    assert bad.status_code == 422 and "limit" in bad.text
    missing = httpx.get(f"{url}/console/nodes/nope", headers=auth)
    assert missing.status_code == 404
    assert httpx.get(f"{url}/console/regions/web/nowhere", headers=auth).status_code == 404
    schema = httpx.get(f"{url}/openapi.json").json()
    for path in ("/console/overview", "/console/traffic", "/console/events/stream"):
        assert path in schema["paths"]
    assert not any(p.startswith("/ui") for p in schema["paths"])


def test_overview_json_has_weights_reasons_and_actions(api: object) -> None:
    url = api.url  # type: ignore[attr-defined]
    auth = {"Authorization": f"Bearer {ADMIN}"}
    view = httpx.get(f"{url}/console/overview", headers=auth).json()
    regions = {r["region"]: r for r in view["services"][0]["regions"]}
    assert regions["r001"]["reason"] == "latency 180 ms > target 100 ms"
    assert regions["r001"]["effective_weight"] == pytest.approx(55.556, abs=0.01)
    assert regions["r002"]["effective_weight"] == 0
    assert regions["r002"]["health"] == "down"
    assert regions["r000"]["pending_commit"].startswith("c0ffee12")
    assert regions["r000"]["published"][0]["provider"] == "powerdns"
    assert {a["path"] for a in view["actions"]} >= {"/sync", "/gate/close", "/loops/gtm-web/pause"}


def test_login_sets_a_strict_http_only_session_and_pages_carry_a_csp(
    api: object, engine: Engine
) -> None:
    url = api.url  # type: ignore[attr-defined]
    with httpx.Client(base_url=url) as client:
        assert client.get("/ui").headers["location"] == "/ui/login"
        refused = client.post("/ui/session", data={"token": "wrong"})
        assert refused.status_code == 303 and "error" in refused.headers["location"]
        answer = client.post("/ui/session", data={"token": ADMIN})
        cookie = answer.headers["set-cookie"]
        assert SESSION_COOKIE in cookie and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower() and "Secure" not in cookie  # plain HTTP
        page = client.get("/ui")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert "<script>" not in page.text  # no inline script
        assert client.get("/console/overview").status_code == 200  # the cookie reads JSON
        assert client.get("/ui/static/../routes_ui.py").status_code == 404
        add_event(make_sessionmaker(engine), "<script>alert(1)</script>")
        events = client.get("/ui/events").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in events and "<script>alert" not in events
        assert client.get("/ui/nodes/a%00b").status_code == 422  # NUL never reaches SQL


def test_the_event_stream_delivers_a_new_event(api: object, engine: Engine) -> None:
    url = api.url  # type: ignore[attr-defined]
    auth = {"Authorization": f"Bearer {ADMIN}"}
    received: list[dict[str, object]] = []
    with make_sessionmaker(engine)() as session:
        after = q.last_event_id(session)  # the stream starts here, however late it connects

    def listen() -> None:
        with httpx.stream(
            "GET", f"{url}/console/events/stream", params={"kind": "audit.", "after": after},
            headers=auth,
            timeout=20,
        ) as response:  # fmt: skip
            assert response.headers["content-type"].startswith("text/event-stream")
            for line in response.iter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line.removeprefix("data: ")))
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    time.sleep(0.5)  # the events come while the stream is open (or before: no matter)
    add_event(make_sessionmaker(engine), "not audit", kind="dns.applied")
    event_id = add_event(make_sessionmaker(engine), "drained r000-n00001 by alice")
    thread.join(timeout=15)
    assert received and received[0]["id"] == event_id
    assert received[0]["message"] == "drained r000-n00001 by alice"


def _session(api: object, identity: Identity) -> tuple[str, str]:
    settings = api.app.state.settings  # type: ignore[attr-defined]
    cookie = make_session(identity, session_key(settings))
    session = read_session(cookie, session_key(settings))
    assert session is not None
    return cookie, session.csrf


def test_the_session_cookie_is_an_identity_of_every_route_and_state_changes_need_csrf(
    api: object, engine: Engine
) -> None:
    """The authz middleware takes the cookie on the action routes too: without the CSRF
    token a POST is 403 (and audited as refused), with it the rule table decides, and
    the audit event names the console user. Bearer callers need no CSRF token."""
    url = api.url  # type: ignore[attr-defined]
    cookie, csrf = _session(api, ALICE)
    with make_sessionmaker(engine)() as session:
        nodes = node_store.list_nodes(session, region="r000")
        other = node_store.list_nodes(session, region="r001")[0].id
    node = nodes[0].id
    with httpx.Client(base_url=url, cookies={SESSION_COOKIE: cookie}) as client:
        assert client.get("/console/overview").status_code == 200
        no_csrf = client.post(f"/nodes/{node}/drain", json={"reason": "kernel"})
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text
        wrong = client.post(
            f"/nodes/{node}/drain", json={"reason": "kernel"}, headers={"X-CSRF-Token": "x"}
        )
        assert wrong.status_code == 403
        ok = client.post(
            f"/nodes/{node}/drain", json={"reason": "kernel"}, headers={"X-CSRF-Token": csrf}
        )
        # Past the middleware: the route answers (this API has no Temporal for the Update).
        assert ok.status_code == 503 and "Temporal" in ok.text, ok.text
        # Outside ALICE's scope (web/r000): the rule table refuses, CSRF or not.
        scoped = client.post(
            f"/nodes/{other}/drain", json={"reason": "x"}, headers={"X-CSRF-Token": csrf}
        )
        assert scoped.status_code == 403 and "alice" in scoped.text
    with make_sessionmaker(engine)() as session:
        audits = [
            e for e in session.query(EventRow).order_by(EventRow.id) if e.kind == "audit.node.drain"
        ]
    outcomes = [(e.data or {}).get("outcome") for e in audits if e.node_id == node]
    assert outcomes == ["refused", "refused", "failed"], outcomes
    assert all("alice" in e.message or (e.data or {}).get("name") == "alice" for e in audits)
    bearer = httpx.post(
        f"{url}/nodes/{nodes[1].id}/drain",
        json={"reason": "r"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert bearer.status_code == 503  # past the middleware: bearer callers need no CSRF
    expired = make_session(ALICE, session_key(api.app.state.settings), ttl_s=-5)  # type: ignore[attr-defined]
    refused = httpx.get(f"{url}/console/overview", cookies={SESSION_COOKIE: expired})
    assert refused.status_code == 401


def test_buttons_follow_the_rule_table(api: object) -> None:
    url = api.url  # type: ignore[attr-defined]
    viewer = Identity("oidc", "v", "vera", (Grant(Role.viewer),))
    cookie, _ = _session(api, viewer)
    with httpx.Client(base_url=url, cookies={SESSION_COOKIE: cookie}) as client:
        view = client.get("/console/overview").json()
        assert view["actions"] == []
        node = client.get("/console/regions/web/r000").json()["nodes"][0]
        assert node["actions"] == []
        assert 'form class="action' not in client.get(f"/ui/nodes/{node['id']}").text
    cookie, _ = _session(api, ALICE)
    with httpx.Client(base_url=url, cookies={SESSION_COOKIE: cookie}) as client:
        view = client.get("/console/overview").json()
        assert view["actions"] == []  # sync and the gate need an unscoped operator
        # A scoped grant reads its own region only: overview, traffic and events.
        assert [r["region"] for s in view["services"] for r in s["regions"]] == ["r000"]
        traffic = client.get("/console/traffic").json()
        assert {t["region"] for t in traffic["series"]} == {"r000"}
        events = client.get("/console/events").json()
        assert events and all(e["region"] == "r000" for e in events)
        mine = client.get("/console/regions/web/r000").json()
        assert [a["id"] for a in mine["nodes"][0]["actions"]] in (["drain"], ["undrain"])
        # Another region is outside ALICE's scope altogether (reads included).
        assert client.get("/console/regions/web/r001").status_code == 403


def test_tallies_count_every_node_once(engine: Engine) -> None:
    factory = make_sessionmaker(engine)
    seed_console_store(factory, regions=3, nodes_per_region=50, history=False)
    with factory() as session:
        tallies = q.region_tallies(session, utcnow(), TIMEOUT, {"web": 0.5})
        assert sum(t.total for t in tallies.values()) == 150
        assert session.query(NodeRow).count() == 150


def test_held_plans_are_diffs_of_published_against_the_plans_weights() -> None:
    status = {
        "details": {
            "held_plans": {
                "0:powerdns": {
                    "digest": "0123456789abcdef",
                    "refused": "powerdns: plan for api removes 3 of 4 published addresses "
                    "(75% > 50%); use force to apply",
                    "at": "2026-12-06T14:00:00+00:00",
                    "weights": {"jp": 0.0, "sg": 100.0, "us": 50.0},
                }
            }
        }
    }
    published = {"0:powerdns": {"jp": 60.0, "sg": 40.0, "us": 50.0}, "1:route53": {"jp": 1.0}}
    approve = Action(id="plan_approve", label="Approve", path="/gtm/web/plan/approve")
    (plan,) = held_plans_of("web", status, published, [approve])
    assert "75% > 50%" in plan.refused and plan.provider == "0:powerdns"
    assert [(c.record, c.old_weight, c.new_weight) for c in plan.changes] == [
        ("jp", 60.0, 0.0),
        ("sg", 40.0, 100.0),
    ]
    # The button decides exactly this plan: the provider and the digest seen.
    assert plan.actions[0].body == {"provider": "0:powerdns", "digest": "0123456789abcdef"}
    assert held_plans_of("web", {"details": {"held_plans": {}}}, published, [approve]) == []
    assert held_plans_of("web", None, published, [approve]) == []


def test_oidc_login_checks_state_and_opens_a_session(
    engine: Engine,
    db_url: str,
    oidc_provider: OidcProvider,  # noqa: F811
) -> None:
    seed_console_store(make_sessionmaker(engine), regions=2, nodes_per_region=2, history=False)
    oidc_provider.set_user("u-9", {"preferred_username": "olga", "roles": ["operator"]})
    settings = ApiSettings(
        db_url=db_url,
        oidc_issuer=oidc_provider.issuer,
        oidc_audience=["xplane-console"],
        console_client_secret="any",
    )
    with (
        serve_in_thread(create_app(settings)) as running,
        httpx.Client(base_url=running.url) as client,
    ):
        assert 'id="oidc-login"' in client.get("/ui/login").text
        start = client.get("/ui/oidc/login")
        assert start.status_code == 303
        authorize = start.headers["location"]
        query = parse_qs(urlsplit(authorize).query)
        assert query["code_challenge_method"] == ["S256"] and query["client_id"] == [
            "xplane-console"
        ]
        assert query["state"] and query["nonce"]
        flow = start.headers["set-cookie"]
        assert "path=/ui/oidc" in flow.lower() and "httponly" in flow.lower()
        callback = urlsplit(oidc_provider.approve(authorize, "u-9"))
        forged = client.get("/ui/oidc/callback?" + callback.query.replace("state=", "state=x"))
        assert forged.headers["location"] == "/ui/login?error=oidc"
        assert SESSION_COOKIE not in client.cookies
        # A refused callback ends the flow: the genuine code cannot be replayed with it.
        replay = client.get("/ui/oidc/callback?" + callback.query)
        assert replay.headers["location"] == "/ui/login?error=oidc"
        start = client.get("/ui/oidc/login")
        callback = urlsplit(oidc_provider.approve(start.headers["location"], "u-9"))
        done = client.get("/ui/oidc/callback?" + callback.query)
        assert done.status_code == 200 and 'http-equiv="refresh"' in done.text
        cookie = done.headers.get_list("set-cookie")
        assert any(SESSION_COOKIE in c and "samesite=strict" in c.lower() for c in cookie)
        page = client.get("/ui")
        assert page.status_code == 200 and "olga · operator" in page.text
        assert client.get("/console/overview").status_code == 200


def test_the_plans_page_shows_a_held_plan_and_only_admins_get_its_buttons(
    api: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GTM loop's status (Temporal) stood in for: what the page makes of it."""
    from xplane.api import routes_console

    held = {
        "details": {
            "held_plans": {
                "0:powerdns": {
                    "digest": "fedcba9876543210",
                    "refused": "powerdns: plan removes 3 of 4 published addresses",
                    "at": "2026-12-06T14:00:00+00:00",
                    "weights": {"r000": 0.0, "r001": 100.0},
                }
            }
        }
    }

    async def statuses(_request: object, ids: list[str]) -> dict[str, object]:
        return {i: held for i in ids if i == "gtm-web"}

    monkeypatch.setattr(routes_console, "loop_statuses", statuses)
    url = api.url  # type: ignore[attr-defined]
    admin = Identity("oidc", "a", "ada", (Grant(Role.admin),))
    operator = Identity("oidc", "o", "otto", (Grant(Role.operator),))
    cookie, _ = _session(api, admin)
    with httpx.Client(base_url=url, cookies={SESSION_COOKIE: cookie}) as client:
        (plan,) = client.get("/console/plans").json()
        assert plan["provider"] == "0:powerdns" and plan["digest"] == "fedcba9876543210"
        assert {c["record"] for c in plan["changes"]} == {"r000", "r001"}
        page = client.get("/ui/plans").text
        assert "plans removes" not in page and "plan removes 3 of 4" in page
        assert 'data-action="plan_approve"' in page and 'data-action="plan_reject"' in page
        assert "&#34;digest&#34;: &#34;fedcba9876543210&#34;" in page  # sent with the reason
    cookie, _ = _session(api, operator)
    with httpx.Client(base_url=url, cookies={SESSION_COOKIE: cookie}) as client:
        (plan,) = client.get("/console/plans").json()
        assert plan["actions"] == []
        assert "plan_approve" not in client.get("/ui/plans").text
