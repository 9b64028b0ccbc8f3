"""Registration, heartbeats and reads over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine

from tests.support.waiting import until
from tests.test_api_support import (
    ADMIN,
    BOOT,
    DB_BACKENDS,
    JP_BOOT,
    Api,
    bearer,
    module_database,
    reset_database,
    running_api,
)
from xplane.api.settings import ApiSettings
from xplane.domain import NodeState
from xplane.store import nodes as store
from xplane.store.db import make_sessionmaker, transaction, utcnow
from xplane.store.events import list_events
from xplane.store.registration import revoke_token
from xplane.store.samples import metric_samples


@pytest.fixture(scope="module", params=DB_BACKENDS)
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Engine]]:
    yield from module_database(request.param, str(tmp_path_factory.mktemp("api")))


@pytest.fixture(scope="module")
def server(database: tuple[str, Engine]) -> Iterator[Api]:
    with running_api(database[1], database[0]) as running:
        yield running


@pytest.fixture
def api(server: Api) -> Api:
    reset_database(server.engine)
    return server


@pytest.fixture
def fresh(database: tuple[str, Engine]) -> tuple[str, Engine]:
    """The shared database, emptied and seeded, for tests that start their own servers."""
    reset_database(database[1])
    return database


def test_register_heartbeat_list(api: Api) -> None:
    response = api.register(hostname="n1.local", labels={"az": "a"}, port=8443, agent_version="1.2")
    assert response.status_code == 200
    reg = response.json()
    assert reg["node_id"].startswith("jp-") and reg["state"] == "idle"
    assert reg["heartbeat_interval_seconds"] == 10.0

    probes = [{"target": "1.1.1.1", "ok": True, "rtt_ms": 3}, {"target": "x", "ok": False}]
    beat = api.heartbeat(reg["node_id"], reg["token"], qps=40.0, probes=probes)
    assert beat.status_code == 200, beat.text
    assert beat.json() == {
        "state": "idle",
        "status": "up",
        "action": "none",
        "heartbeat_interval_seconds": 10.0,
    }

    listed = api.admin("GET", "/nodes", params={"service": "web", "region": "jp"}).json()
    assert [n["id"] for n in listed] == [reg["node_id"]]
    node = listed[0]
    assert (node["cpu"], node["rtt_ms"], node["qps"]) == (0.5, 12.0, 40.0)
    assert (node["probes_ok"], node["probes_total"]) == (1, 2)
    assert (node["hostname"], node["labels"], node["port"]) == ("n1.local", {"az": "a"}, 8443)
    assert "token" not in str(node) and "token_hash" not in node
    assert api.admin("GET", "/nodes", params={"region": "sg-east"}).json() == []
    assert api.admin("GET", "/nodes", params={"state": "active"}).json() == []
    assert api.admin("GET", f"/nodes/{reg['node_id']}").json()["address"] == "10.0.0.1"

    with make_sessionmaker(api.engine)() as session:
        samples = metric_samples(session, "web", "jp", utcnow().replace(year=2000))
    assert [(s.node_id, s.cpu, s.probes_ok, s.probes_total) for s in samples] == [
        (reg["node_id"], 0.5, 1, 2)
    ]


def test_reregistration_is_idempotent_and_replaces_the_token(api: Api) -> None:
    node_id, first = api.registered(node_id="jp-n1", address="10.0.0.7")
    assert api.heartbeat(node_id, first).status_code == 200  # caches the first token
    again, second = api.registered(node_id="jp-n1", address="10.0.0.7", agent_version="2")
    assert again == node_id and second != first
    assert api.counts()[0] == 1
    # The replaced token stops at once even though this replica cached it.
    stale = api.heartbeat(node_id, first)
    assert stale.status_code == 401
    assert stale.json()["detail"][0]["field"] == "authorization"
    assert api.heartbeat(node_id, second).status_code == 200
    assert api.admin("GET", f"/nodes/{node_id}").json()["agent_version"] == "2"


def test_other_address_for_live_node_is_409_and_changes_nothing(api: Api) -> None:
    node_id, token = api.registered(node_id="jp-n1", address="10.0.0.1")
    api.heartbeat(node_id, token)
    before = api.counts()
    response = api.register(node_id="jp-n1", address="2001:db8::1")
    assert response.status_code == 409
    assert response.json()["detail"][0]["field"] == "address"
    assert "10.0.0.1" not in response.text  # where the node lives is nobody else's business
    assert api.counts() == before
    assert api.admin("GET", f"/nodes/{node_id}").json()["address"] == "10.0.0.1"
    assert api.heartbeat(node_id, token).status_code == 200  # old token still valid


def test_deleted_node_id_can_be_taken_by_a_new_address(api: Api) -> None:
    node_id, _ = api.registered(node_id="jp-n1", address="10.0.0.1")
    with transaction(make_sessionmaker(api.engine)) as session:
        store.set_lifecycle_state(session, node_id, NodeState.DELETE, "scaled down", utcnow())
    response = api.register(node_id="jp-n1", address="10.0.0.2")
    assert response.status_code == 200
    node = api.admin("GET", f"/nodes/{node_id}").json()
    assert (node["address"], node["state"]) == ("10.0.0.2", "idle")


def test_per_region_bootstrap_token(api: Api) -> None:
    assert api.register(token=JP_BOOT, region="jp").status_code == 200
    refused = api.register(token=JP_BOOT, region="sg-east")
    assert refused.status_code == 401
    assert "sg-east" in refused.json()["detail"][0]["message"]
    assert api.register(token=BOOT, region="sg-east").status_code == 200
    assert api.register(token="nope", region="jp").status_code == 401
    assert api.counts()[0] == 2


def test_region_token_from_environment() -> None:
    env = {"XPLANE_BOOTSTRAP_TOKEN_SG_EAST": "s", "XPLANE_API_PORT": "9999"}
    settings = ApiSettings.from_env(env, db_url="sqlite://")
    assert settings.bootstrap_tokens_for("sg-east") == ["s"]
    assert settings.bootstrap_tokens_for("jp") == []
    assert settings.port == 9999 and settings.db_url == "sqlite://"


def test_unknown_service_or_region_is_422_naming_it(api: Api) -> None:
    response = api.register(service="nope")
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "service"
    assert "'nope'" in response.json()["detail"][0]["message"]
    response = api.register(service="api", region="sg-east")
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "region"
    assert api.counts() == (0, 0, 0)


def test_heartbeat_auth_errors(api: Api) -> None:
    a, token_a = api.registered(node_id="jp-a")
    b, _ = api.registered(node_id="jp-b", address="10.0.0.2")
    before = api.counts()
    assert api.heartbeat(b, token_a).status_code == 403
    assert api.heartbeat("jp-ghost", token_a).status_code == 404
    assert api.heartbeat(a, "unknown-token").status_code == 401
    no_header = api.http.post("/nodes/heartbeat", json={"node_id": a})
    assert no_header.status_code == 401
    assert no_header.json()["detail"][0]["field"] == "authorization"
    assert api.counts() == before


def test_a_stored_drain_request_tells_the_agent(api: Api) -> None:
    """The autoscaler (and the lifecycle's drain) ask through the store: the heartbeat's
    answer tells the agent. An operator's drain is a Workflow Update (test_api_actions):
    without Temporal it is a 503, after the body was checked."""
    node_id, token = api.registered()
    with transaction(make_sessionmaker(api.engine)) as session:
        store.request_drain(session, node_id, by="autoscaler", reason="maintenance")
    beat = api.heartbeat(node_id, token).json()
    assert (beat["status"], beat["action"]) == ("drain", "drain")
    with make_sessionmaker(api.engine)() as session:
        events = list_events(session, node_id=node_id, kind_prefix="node.drain")
    assert [(e.kind, e.data["reason"]) for e in events] == [("node.drain_requested", "maintenance")]
    response = api.admin("POST", f"/nodes/{node_id}/drain", json={"reason": "maintenance"})
    assert response.status_code == 503
    assert response.json()["error"] == "operator actions need Temporal"
    missing = api.admin("POST", f"/nodes/{node_id}/drain")
    assert missing.status_code == 422 and missing.json()["detail"][0]["field"] == "body"


def test_node_reported_drain_and_delete_action(api: Api) -> None:
    node_id, token = api.registered()
    assert api.heartbeat(node_id, token, status="drain").json()["status"] == "drain"
    assert api.heartbeat(node_id, token, status="up").json()["status"] == "up"
    failing = [{"target": "gw", "ok": False}]
    assert api.heartbeat(node_id, token, probes=failing).json()["status"] == "down"
    with transaction(make_sessionmaker(api.engine)) as session:
        store.set_lifecycle_state(session, node_id, NodeState.DELETE, "scaled in", utcnow())
    assert api.heartbeat(node_id, token).json()["action"] == "deregister"


def test_a_node_given_up_that_comes_back_registers_again_for_a_new_life(api: Api) -> None:
    """Given up (grace expired): its token is revoked, so the agent is not told to
    deregister but refused (401), registers again and starts over from idle."""
    node_id, token = api.registered(node_id="jp-back", address="10.0.0.7")
    assert api.heartbeat(node_id, token).status_code == 200
    with transaction(make_sessionmaker(api.engine)) as session:
        store.set_lifecycle_state(session, node_id, NodeState.DELETE, "given up", utcnow())
        revoke_token(session, node_id)
    refused = api.heartbeat(node_id, token)
    assert refused.status_code == 401, refused.text
    again, new_token = api.registered(node_id="jp-back", address="10.0.0.7")
    assert again == node_id and new_token != token
    assert api.heartbeat(node_id, new_token).json()["action"] == "none"
    assert api.admin("GET", f"/nodes/{node_id}").json()["state"] == "idle"


def test_a_region_token_cannot_take_over_another_regions_node(api: Api) -> None:
    """jp's bootstrap token with an sg-east node's id and address: refused, whatever the
    body claims and even once the node was given up; the node keeps its region and token."""
    node_id, token = api.registered(node_id="edge-1", region="sg-east", address="10.0.1.1")
    assert api.heartbeat(node_id, token).status_code == 200

    def untouched() -> None:
        node = api.admin("GET", f"/nodes/{node_id}").json()
        assert (node["region"], node["address"]) == ("sg-east", "10.0.1.1")
        assert api.heartbeat(node_id, token).status_code == 200

    before = api.counts()
    takeover = api.register(token=JP_BOOT, node_id=node_id, region="jp", address="10.0.1.1")
    assert takeover.status_code == 403, takeover.text
    assert takeover.json()["detail"][0]["field"] == "node_id"
    claimed = api.register(token=JP_BOOT, node_id=node_id, region="sg-east", address="10.0.1.1")
    assert claimed.status_code == 401
    # A token good for both regions may re-register it, but never move it.
    moved = api.register(node_id=node_id, region="jp", address="10.0.1.1")
    assert moved.status_code == 409
    assert moved.json()["detail"][0]["field"] == "region"
    assert all("10.0.1.1" not in answer.text for answer in (takeover, claimed, moved))
    assert "sg-east" not in takeover.text + moved.text
    untouched()
    assert api.counts()[::2] == before[::2]  # no node, no event (heartbeats add samples)

    with transaction(make_sessionmaker(api.engine)) as session:
        store.set_lifecycle_state(session, node_id, NodeState.DELETE, "given up", utcnow())
        revoke_token(session, node_id)
    assert api.register(token=JP_BOOT, node_id=node_id, region="jp").status_code == 403
    # A bootstrap token for its own service and region still gives it a new life.
    again, new_token = api.registered(node_id=node_id, region="sg-east", address="10.0.1.2")
    assert again == node_id
    assert api.heartbeat(node_id, new_token).status_code == 200
    node = api.admin("GET", f"/nodes/{node_id}").json()
    assert (node["region"], node["address"], node["state"]) == ("sg-east", "10.0.1.2", "idle")


def test_a_node_registers_again_with_its_own_token(api: Api) -> None:
    """An agent restarting (no bootstrap token at hand) re-registers with its node token:
    same node, lifecycle kept, old token replaced. A node token opens nothing else."""
    node_id, token = api.registered(token=JP_BOOT, node_id="jp-own", address="10.0.0.7")
    other, other_token = api.registered(node_id="jp-other", address="10.0.0.8")
    with transaction(make_sessionmaker(api.engine)) as session:
        store.set_lifecycle_state(session, node_id, NodeState.ACTIVE, "warmed up", utcnow())
    assert api.heartbeat(node_id, token).status_code == 200

    again, new_token = api.registered(token=token, node_id=node_id, address="10.0.0.7")
    assert again == node_id and new_token != token
    assert api.heartbeat(node_id, token).status_code == 401
    assert api.heartbeat(node_id, new_token).json()["state"] == "active"

    for body in ({"node_id": other, "address": "10.0.0.8"}, {"node_id": "jp-new"}, {}):
        refused = api.register(token=new_token, **body)
        assert refused.status_code == 401, (body, refused.text)
    assert api.heartbeat(other, other_token).status_code == 200
    moved = api.register(token=new_token, node_id=node_id, address="10.0.0.7", region="sg-east")
    assert moved.status_code == 409 and moved.json()["detail"][0]["field"] == "region"
    assert api.counts()[0] == 2


def test_regions_counts_and_health(api: Api) -> None:
    up, token_up = api.registered(node_id="jp-up")
    api.heartbeat(up, token_up)
    api.registered(node_id="jp-silent", address="10.0.0.2")  # never heartbeats: down
    drained, token_d = api.registered(node_id="jp-drained", address="10.0.0.3")
    api.heartbeat(drained, token_d, status="drain")
    regions = {(r["service"], r["region"]): r for r in api.admin("GET", "/regions").json()}
    jp = regions[("web", "jp")]
    assert jp["nodes"] == 3
    assert jp["by_status"] == {"up": 1, "down": 1, "drain": 1}
    assert jp["by_state"] == {"idle": 3}
    assert jp["health"] == 0.5  # 1 up of 2 not drained
    assert regions[("web", "sg-east")]["nodes"] == 0 and ("api", "jp") in regions


def test_read_endpoints_need_admin_token(api: Api) -> None:
    for path in ("/nodes", "/nodes/x", "/regions"):
        assert api.http.get(path).status_code == 401
        assert api.http.get(path, headers=bearer(BOOT)).status_code == 401
    assert api.http.post("/nodes/x/drain", headers=bearer(BOOT)).status_code == 401
    assert api.http.get("/healthz").json() == {"status": "ok"}
    assert api.http.get("/readyz").status_code == 200
    assert "/nodes/heartbeat" in api.http.get("/openapi.json").json()["paths"]
    assert api.admin("GET", "/nodes", params={"state": "bogus"}).json()["detail"][0]["field"] == (
        "state"
    )
    assert ADMIN not in api.http.get("/openapi.json").text


class RecordingNotifier:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail

    async def node_registered(self, node_id: str, service: str, region: str) -> None:
        await asyncio.sleep(0)
        self.calls.append((node_id, service, region))
        if self.fail:
            raise RuntimeError("temporal is down")


@pytest.mark.parametrize("fail", [False, True])
def test_notifier_is_told_after_registration_and_its_failure_is_retried(
    fresh: tuple[str, Engine], fail: bool
) -> None:
    notifier = RecordingNotifier(fail=fail)
    retry = timedelta(milliseconds=50)
    with running_api(fresh[1], fresh[0], notifier=notifier, delivery_retry_max=retry) as api:
        node_id, _ = api.registered(region="sg-east")
        until(lambda: len(notifier.calls) >= (3 if fail else 1), "the notifier's calls", 10)
    assert set(notifier.calls) == {(node_id, "web", "sg-east")}


def test_two_replicas_share_one_store(fresh: tuple[str, Engine]) -> None:
    url, engine = fresh
    with running_api(engine, url) as one, running_api(engine, url) as two:
        node_id, first = one.registered(node_id="jp-n1")
        assert two.heartbeat(node_id, first).status_code == 200  # two caches the token
        _, second = one.registered(node_id="jp-n1")  # new token, issued by replica one
        assert two.heartbeat(node_id, first).status_code == 401
        assert two.heartbeat(node_id, second).status_code == 200
        assert one.counts()[1] == 2


def test_cli_nodes_list_and_drain(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from xplane.cli.main import app

    node_id, _ = api.registered(node_id="jp-cli", address="10.0.0.5")
    monkeypatch.setenv("XPLANE_ADMIN_TOKEN", ADMIN)
    monkeypatch.setenv("COLUMNS", "200")  # rich would shorten cells on 80 columns
    runner = CliRunner()
    listed = runner.invoke(app, ["nodes", "list", "--server", api.url, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [n["id"] for n in json.loads(listed.output)] == [node_id]
    table = runner.invoke(app, ["nodes", "list", "--server", api.url])
    assert table.exit_code == 0 and "jp-cli" in table.output
    # The drain itself is a Workflow Update (tests/test_api_actions.py): here, no Temporal.
    drained = runner.invoke(app, ["nodes", "drain", node_id, "--server", api.url])
    assert drained.exit_code == 1 and "operator actions need Temporal" in drained.output
    monkeypatch.setenv("XPLANE_ADMIN_TOKEN", "wrong")
    denied = runner.invoke(app, ["nodes", "list", "--server", api.url])
    assert denied.exit_code == 1 and "401" in denied.output
