"""CI webhooks over real HTTP: only a valid, fresh, first delivery reaches the workflows,
stored first and delivered by the API's dispatcher until the workflow side takes it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.test_api_support import module_database, reset_database, settings_for
from xplane.api import create_app
from xplane.api.routes_webhooks import LoopNotRunning, TerraformWebhook
from xplane.api.serve import serve_in_thread
from xplane.api.settings import ApiSettings
from xplane.store.db import make_sessionmaker, transaction, utcnow
from xplane.store.events import EventRow
from xplane.store.webhook_deliveries import WebhookDeliveryRow
from xplane.webhooks.signature import sign, verify

SECRET = "ci-secret"
GIT_SECRET = "git-secret"


class Recorder:
    def __init__(self) -> None:
        self.terraform: list[TerraformWebhook] = []
        self.terraform_tries = 0
        self.temporal_down = False  # terraform_finished fails as when Temporal is unreachable
        self.refusing = False  # terraform_finished is refused (as a missing workflow is)
        self.syncs = 0
        self.failing_syncs = 0  # the next N sync_now calls fail (Temporal unreachable)

    async def terraform_finished(self, hook: TerraformWebhook) -> None:
        self.terraform_tries += 1
        if self.temporal_down:
            raise RuntimeError("temporal unreachable")
        if self.refusing:
            raise LoopNotRunning("autoscale-web-jp")
        self.terraform.append(hook)

    async def sync_now(self) -> None:
        if self.failing_syncs:
            self.failing_syncs -= 1
            raise RuntimeError("temporal unreachable")
        self.syncs += 1


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    yield from module_database("sqlite", str(tmp_path_factory.mktemp("hooks")))


@pytest.fixture
def api(
    database: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[httpx.Client, Recorder]]:
    url, engine = database
    reset_database(engine)
    monkeypatch.setenv("XPLANE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("XPLANE_GIT_WEBHOOK_SECRET", GIT_SECRET)
    recorder = Recorder()
    settings = settings_for(url, delivery_retry_max=timedelta(milliseconds=100))
    app = create_app(settings, webhook_notifier=recorder)
    with serve_in_thread(app) as served, httpx.Client(base_url=served.url) as http:
        yield http, recorder


def _body(**overrides: Any) -> bytes:
    body = {
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "service": "web",
        "region": "jp",
        "status": "succeeded",
        "run_url": "https://ci.example/run/1",
        "timestamp": int(time.time()),
        **overrides,
    }
    return json.dumps(body).encode()


def _post(http: httpx.Client, body: bytes, delivery: str, secret: str = SECRET) -> httpx.Response:
    return http.post(
        "/webhooks/terraform",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-XPlane-Signature-256": sign(secret, body),
            "X-XPlane-Delivery": delivery,
        },
    )


def test_signature_helpers() -> None:
    assert verify(SECRET, b"x", sign(SECRET, b"x"))
    assert not verify(SECRET, b"y", sign(SECRET, b"x"))
    assert not verify(SECRET, b"x", sign("other", b"x"))
    assert not verify(SECRET, b"x", None)
    assert not verify(SECRET, b"x", "md5=abc")


def _until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_valid_delivery_reaches_the_workflow_once(api: tuple[httpx.Client, Recorder]) -> None:
    http, recorder = api
    body = _body()
    first = _post(http, body, "d-1")
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "accepted"
    _until("the signal", lambda: recorder.terraform)
    assert [h.commit for h in recorder.terraform] == ["0123456789abcdef0123456789abcdef01234567"]
    assert recorder.terraform[0].status == "succeeded"
    replay = _post(http, body, "d-1")
    assert replay.status_code == 200 and replay.json()["status"] == "delivered"
    time.sleep(0.3)
    assert len(recorder.terraform) == 1


def test_a_delivery_made_while_temporal_is_down_is_retried_until_it_succeeds(
    api: tuple[httpx.Client, Recorder],
) -> None:
    http, recorder = api
    recorder.temporal_down = True
    body = _body()
    first = _post(http, body, "d-down")
    assert first.status_code == 202, first.text  # acknowledged: it is stored
    _until("a few tries", lambda: recorder.terraform_tries >= 3)
    retry = _post(http, body, "d-down")  # CI's retry: told the truth, not "duplicate"
    assert retry.status_code == 200 and retry.json()["status"] == "pending"
    assert recorder.terraform == []
    recorder.temporal_down = False
    _until("the delivery", lambda: recorder.terraform)
    assert _post(http, body, "d-down").json()["status"] == "delivered"
    time.sleep(0.3)
    assert len(recorder.terraform) == 1


def test_a_refused_delivery_ends_undeliverable_and_is_logged_as_an_event(
    api: tuple[httpx.Client, Recorder], database: tuple[str, Any]
) -> None:
    http, recorder = api
    recorder.refusing = True
    assert _post(http, _body(), "d-refused").status_code == 202
    _until("giving up", lambda: _post(http, _body(), "d-refused").json()["status"] != "pending")
    assert _post(http, _body(), "d-refused").json()["status"] == "undeliverable"
    tries = recorder.terraform_tries
    assert tries == 5  # bounded: not retried forever
    time.sleep(0.3)
    assert recorder.terraform_tries == tries
    with database[1].connect() as conn:
        kinds = conn.execute(sa.select(EventRow.kind, EventRow.region)).all()
    assert ("webhook.undeliverable", "jp") in [tuple(k) for k in kinds]


@pytest.mark.parametrize(
    ("case", "expected", "field"),
    [
        ("bad_signature", 401, "X-XPlane-Signature-256"),
        ("stale", 401, "timestamp"),
        ("unknown_region", 422, "region"),
        ("unknown_service", 422, "service"),
        ("bad_status", 422, "status"),
        ("not_json", 422, "body"),
    ],
)
def test_invalid_deliveries_signal_nothing(
    api: tuple[httpx.Client, Recorder], case: str, expected: int, field: str
) -> None:
    http, recorder = api
    body = {
        "bad_signature": _body(),
        "stale": _body(timestamp=int(time.time()) - 3600),
        "unknown_region": _body(region="mars"),
        "unknown_service": _body(service="nope"),
        "bad_status": _body(status="maybe"),
        "not_json": b"{not json",
    }[case]
    secret = "wrong" if case == "bad_signature" else SECRET
    response = _post(http, body, f"d-{case}", secret=secret)
    assert response.status_code == expected, response.text
    assert field in json.dumps(response.json())
    assert recorder.terraform == []
    # Nothing was recorded either: the same delivery id is still usable once valid.
    assert _post(http, _body(), f"d-{case}").status_code == 202


def _git_post(
    http: httpx.Client,
    sender: str,
    delivery: str | None,
    body: bytes = b'{"ref": "refs/heads/main"}',
) -> httpx.Response:
    if sender == "github":
        headers = {"X-Hub-Signature-256": sign(GIT_SECRET, body), "X-GitHub-Event": "push"}
        id_header = "X-GitHub-Delivery"
    else:
        headers = {"X-Gitlab-Token": GIT_SECRET, "X-Gitlab-Event": "Push Hook"}
        id_header = "X-Gitlab-Event-UUID"
    if delivery is not None:
        headers[id_header] = delivery
    return http.post("/webhooks/git", content=body, headers=headers)


def test_git_push_webhooks_github_and_gitlab(api: tuple[httpx.Client, Recorder]) -> None:
    http, recorder = api
    body = b'{"ref": "refs/heads/main"}'
    assert _git_post(http, "github", "72d3162e-cc78-11e3-81ab-4c9367dc0958").status_code == 202
    assert _git_post(http, "gitlab", "13ba1bb5-9cbd-4d4b-a3e5-5e4a0c3b2f11").status_code == 202
    bad = http.post("/webhooks/git", content=body, headers={"X-Gitlab-Token": "nope"})
    assert bad.status_code == 401
    assert recorder.syncs == 2


@pytest.mark.parametrize("sender", ["github", "gitlab"])
def test_git_webhook_replay_is_a_duplicate_and_its_id_is_required(
    api: tuple[httpx.Client, Recorder], sender: str
) -> None:
    http, recorder = api
    first = _git_post(http, sender, "d-1")
    assert first.status_code == 202, first.text
    replay = _git_post(http, sender, "d-1")
    assert replay.status_code == 200 and replay.json()["status"] == "delivered"
    assert recorder.syncs == 1
    header = "X-GitHub-Delivery" if sender == "github" else "X-Gitlab-Event-UUID"
    missing = _git_post(http, sender, None)
    assert missing.status_code == 400 and header in missing.text
    assert recorder.syncs == 1
    # The same id from the other sender is another delivery.
    other = "gitlab" if sender == "github" else "github"
    assert _git_post(http, other, "d-1").status_code == 202
    assert recorder.syncs == 2


def test_a_git_delivery_that_could_not_be_signalled_is_delivered_later(
    api: tuple[httpx.Client, Recorder],
) -> None:
    http, recorder = api
    recorder.failing_syncs = 1
    first = _git_post(http, "github", "d-retry")
    assert first.status_code == 202 and first.json()["status"] == "pending"
    _until("the dispatcher's retry", lambda: recorder.syncs == 1)
    replay = _git_post(http, "github", "d-retry")
    assert replay.status_code == 200 and replay.json()["status"] == "delivered"
    assert recorder.syncs == 1


def test_old_deliveries_are_pruned(
    database: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, engine = database
    reset_database(engine)
    monkeypatch.setenv("XPLANE_WEBHOOK_DELIVERY_RETENTION", "2h")
    settings = ApiSettings.from_env(db_url=url, prune_interval=timedelta(milliseconds=50))
    assert settings.webhook_delivery_retention == timedelta(hours=2)
    now = utcnow()
    with transaction(make_sessionmaker(engine)) as session:
        for delivery, age in [("old", timedelta(hours=3)), ("recent", timedelta(hours=1))]:
            session.add(WebhookDeliveryRow(delivery_id=delivery, kind="git", received_at=now - age))
        # Still owed to Temporal: kept however old.
        session.add(
            WebhookDeliveryRow(
                delivery_id="old-pending",
                kind="terraform",
                received_at=now - timedelta(hours=3),
                state="pending",
                next_attempt_at=now,
            )
        )
    with serve_in_thread(create_app(settings)):
        deadline = time.monotonic() + 10
        while _delivery_ids(engine) != ["old-pending", "recent"]:
            assert time.monotonic() < deadline, _delivery_ids(engine)
            time.sleep(0.05)
    with pytest.raises(ValueError, match="greater than or equal to 1 hour"):
        ApiSettings(db_url=url, webhook_delivery_retention=timedelta(minutes=5))


def _delivery_ids(engine: Any) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.select(WebhookDeliveryRow.delivery_id)).scalars())
