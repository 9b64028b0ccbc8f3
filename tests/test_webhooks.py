"""CI webhooks over real HTTP: only a valid, fresh, first delivery reaches the workflows."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.test_api_support import module_database, reset_database, settings_for
from xplane.api import create_app
from xplane.api.routes_webhooks import TerraformWebhook
from xplane.api.serve import serve_in_thread
from xplane.webhooks.signature import sign, verify

SECRET = "ci-secret"
GIT_SECRET = "git-secret"


class Recorder:
    def __init__(self) -> None:
        self.terraform: list[TerraformWebhook] = []
        self.syncs = 0

    async def terraform_finished(self, hook: TerraformWebhook) -> None:
        self.terraform.append(hook)

    async def sync_now(self) -> None:
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
    app = create_app(settings_for(url), webhook_notifier=recorder)
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


def test_valid_delivery_reaches_the_workflow_once(api: tuple[httpx.Client, Recorder]) -> None:
    http, recorder = api
    body = _body()
    first = _post(http, body, "d-1")
    assert first.status_code == 202, first.text
    assert [h.commit for h in recorder.terraform] == ["0123456789abcdef0123456789abcdef01234567"]
    assert recorder.terraform[0].status == "succeeded"
    replay = _post(http, body, "d-1")
    assert replay.status_code == 200 and replay.json()["status"] == "duplicate"
    assert len(recorder.terraform) == 1


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


def test_git_push_webhooks_github_and_gitlab(api: tuple[httpx.Client, Recorder]) -> None:
    http, recorder = api
    body = b'{"ref": "refs/heads/main"}'
    github = http.post(
        "/webhooks/git",
        content=body,
        headers={"X-Hub-Signature-256": sign(GIT_SECRET, body), "X-GitHub-Event": "push"},
    )
    assert github.status_code == 202
    gitlab = http.post(
        "/webhooks/git",
        content=body,
        headers={"X-Gitlab-Token": GIT_SECRET, "X-Gitlab-Event": "Push Hook"},
    )
    assert gitlab.status_code == 202
    bad = http.post("/webhooks/git", content=body, headers={"X-Gitlab-Token": "nope"})
    assert bad.status_code == 401
    assert recorder.syncs == 2
