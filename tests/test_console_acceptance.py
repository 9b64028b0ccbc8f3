"""The console's acceptance in a real browser, logging in through a real OIDC provider.

Debian's Chromium (Playwright) with ``oidc-provider-mock`` as the issuer. On a seeded
store: an operator logs in through the provider's authorize form (authorization code +
PKCE) and sees the regions and weights change when a region's agents stop
heartbeating; a viewer sees no action buttons and a forged POST carrying a valid viewer
session and CSRF token gets 403; a rejected config revision shows its error. On
``xplane up`` (Temporal, PowerDNS, real agents): the overview follows a killed agent and
a drain from the node page (a Workflow Update) puts the node in ``drain`` in Temporal,
audited under the operator's name. No console errors on any of the console's pages.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import playwright.async_api as playwright_api
import pytest
from sqlalchemy import update

from tests.support.console_seed import REJECTED_ISSUE, Seeded, seed_console_store
from tests.support.oidc import OidcProvider, oidc_provider  # noqa: F401 (fixture)
from tests.support.stack import BIN, Stack, kill_leftover_agents, wait_for
from tests.support.tools import needs_tool
from tests.test_console_browser import CHROMIUM, DESKTOP, _wait_ready
from workflows.node_lifecycle import NodeLifecycleWorkflow
from xplane import ids
from xplane.domain import NodeState
from xplane.netutil import free_port
from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.migrate import upgrade
from xplane.store.node_tables import NodeRow
from xplane.temporal.client import connect

ADMIN = "acceptance-admin-token"
CLIENT_ID = "xplane-console"

# Debian's chromium (scripts/setup.sh installs it): skipped without it, failed in CI.
pytestmark = needs_tool("chromium")


class Api:
    def __init__(self, url: str, db_url: str, seeded: Seeded) -> None:
        self.url, self.db_url, self.seeded = url, db_url, seeded
        self.problems: list[str] = []

    def admin(self, path: str, **params: Any) -> Any:
        answer = httpx.get(
            self.url + path, params=params, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        answer.raise_for_status()
        return answer.json()


@pytest.fixture
def api(tmp_path: Path, oidc_provider: OidcProvider) -> Iterator[Api]:  # noqa: F811
    db_url = f"sqlite:///{tmp_path}/xplane.db"
    upgrade(db_url)
    engine = make_engine(db_url)
    seeded = seed_console_store(make_sessionmaker(engine), regions=4, nodes_per_region=3)
    engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "XPLANE_ADMIN_TOKEN": ADMIN,
        "XPLANE_OIDC_ISSUER": oidc_provider.issuer,
        "XPLANE_OIDC_AUDIENCE": CLIENT_ID,
        "XPLANE_CONSOLE_CLIENT_SECRET": "mock-provider-wants-any-secret",
    }
    env.pop("XPLANE_TEMPORAL_ADDRESS", None)
    log = (tmp_path / "api.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "xplane"), "api", "--db", db_url, "--port", str(port), "--no-migrate"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, tmp_path / "api.log")
        oidc_provider.set_user("olga", {"preferred_username": "olga", "roles": ["operator"]})
        oidc_provider.set_user("vic", {"preferred_username": "vic", "roles": ["viewer"]})
        yield Api(url, db_url, seeded)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


async def _log_in(browser: Any, api: Api | Any, sub: str) -> Any:
    """A fresh browser context logged in as ``sub`` through the provider's form."""
    context = await browser.new_context(viewport=DESKTOP)
    page = await context.new_page()

    def ours(url: str) -> bool:
        return url.startswith(api.url)

    page.on(
        "console",
        lambda msg: (
            api.problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning") and ours(msg.location.get("url", ""))
            else None
        ),
    )
    page.on("pageerror", lambda err: api.problems.append(f"page error: {err}"))
    page.on(
        "response",
        lambda r: (
            api.problems.append(f"{r.status} {r.url}") if r.status >= 400 and ours(r.url) else None
        ),
    )
    await page.goto(api.url + "/ui")
    assert page.url.endswith("/ui/login")
    await page.click("#oidc-login")
    await page.wait_for_selector("input[name=sub]")  # the provider's authorize form
    await page.fill("input[name=sub]", sub)
    await page.click("form button[type=submit]:has-text('Authorize')")
    await page.wait_for_url(api.url + "/ui")
    assert sub in await page.inner_text("header .who")
    return page


async def test_operator_and_viewer_through_oidc(browser: Any, api: Api) -> None:
    seeded = api.seeded
    page = await _log_in(browser, api, "olga")
    assert "operator" in await page.inner_text("header .who")

    # The overview shows the live regions and weights, and follows the store.
    rows = page.locator("table.regions tr.region")
    assert await rows.count() == len(seeded.regions)
    region = seeded.regions[3]
    row = page.locator(f"tr.region[data-region='{region}']")
    assert "full weight" in await row.locator(".why").inner_text()
    engine = make_engine(api.db_url)
    with transaction(make_sessionmaker(engine)) as session:  # the region's agents go silent
        session.execute(
            update(NodeRow)
            .where(NodeRow.region == region)
            .values(last_heartbeat_at=utcnow() - timedelta(minutes=10))
        )
    engine.dispose()
    await playwright_api.expect(row.locator(".why")).to_have_text(
        re.compile(r"^0 ready node\(s\) < min_ready_nodes"), timeout=20_000
    )
    assert await row.locator(".effective").inner_text() == "0.0"

    # The rejected revision's error, on the config page.
    await page.click("nav a[href='/ui/config']")
    rejected = await page.locator("#rejected").inner_text()
    for part in (REJECTED_ISSUE.file, REJECTED_ISSUE.path, REJECTED_ISSUE.message):
        assert part in rejected
    await page.click("nav a[href='/ui/plans']")
    await page.wait_for_selector("#no-plans")  # no Temporal here: nothing is held
    await page.context.close()

    # A viewer: no action buttons anywhere; a forged POST with a valid session is 403.
    page = await _log_in(browser, api, "vic")
    assert await page.locator("form.action").count() == 0
    other = seeded.nodes[seeded.regions[0]][0]
    await page.goto(f"{api.url}/ui/nodes/{other}")
    await page.wait_for_selector("ol.timeline")
    assert await page.locator("form.action").count() == 0
    csrf = await page.locator("meta[name=csrf-token]").get_attribute("content")
    assert csrf
    forged = await page.context.request.post(
        f"{api.url}/nodes/{other}/drain",
        data={"reason": "forged"},
        headers={"X-CSRF-Token": csrf},
    )
    assert forged.status == 403, await forged.text()
    assert "vic (viewer) may not operate" in await forged.text()
    refused = api.admin("/console/events", kind="audit.node.drain", node=other)
    assert len(refused) == 1 and refused[0]["message"].startswith("vic (viewer)")
    await page.context.close()
    assert api.problems == [], api.problems


async def test_on_a_running_stack_a_killed_agent_and_a_drain_show_through_temporal(
    tmp_path: Path,
    oidc_provider: OidcProvider,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    browser: Any,
) -> None:
    """``xplane up`` (Temporal, PowerDNS, real agents) with the OIDC provider: the
    overview follows a killed agent, and a drain from the node page reaches the node's
    lifecycle workflow in Temporal, audited under the operator's name."""

    for key, value in {
        "XPLANE_OIDC_ISSUER": oidc_provider.issuer,
        "XPLANE_OIDC_AUDIENCE": CLIENT_ID,
        "XPLANE_CONSOLE_CLIENT_SECRET": "mock-provider-wants-any-secret",
    }.items():
        monkeypatch.setenv(key, value)
    oidc_provider.set_user("olga", {"preferred_username": "olga", "roles": ["operator"]})
    oidc_provider.set_user("vic", {"preferred_username": "vic", "roles": ["viewer"]})
    stack = Stack(tmp_path, pin_cpu=0.5)
    try:
        wait_for("XPlane is up", lambda: "XPlane is up" in stack.output(), 120)
        info = stack.info()
        token = (stack.data / "secrets" / "admin-api.token").read_text().strip()
        view = Api(info["api_url"], "", Seeded(service="svc-plus", regions=[]))
        wait_for("jp in DNS", lambda: "jp" in _published_regions(view.url, token), 90)
        page = await _log_in(browser, view, "olga")
        jp = page.locator("tr.region[data-region='jp']")
        await playwright_api.expect(jp.locator(".why")).not_to_have_text(
            re.compile(r"ready node\(s\) <"), timeout=30_000
        )
        before = await jp.locator(".effective").inner_text()
        assert float(before) > 0

        node = next(n for n in stack.status()["nodes"] if n["region"] == "jp")
        killed = subprocess.run(
            [str(BIN / "xplane"), "demo", "fail-node", "--node", node["id"],
             "--data-dir", str(stack.data)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert killed.returncode == 0, killed.stderr
        await playwright_api.expect(jp.locator(".effective")).to_have_text("0.0", timeout=40_000)

        target = next(
            n for n in stack.status()["nodes"] if n["id"] != node["id"] and n["state"] == "active"
        )
        await page.goto(f"{view.url}/ui/nodes/{target['id']}")
        form = page.locator("form.action[data-action='drain']")
        await form.locator("input[name=reason]").fill("acceptance drain")
        await form.locator("button").click()
        answer = page.locator(".answer")
        await answer.wait_for(state="visible")
        assert await answer.get_attribute("data-status") == "200", await answer.inner_text()

        client = await connect(info["temporal_address"])

        async def drained() -> bool:
            handle = client.get_workflow_handle(ids.node_workflow_id(target["id"]))
            status = await handle.query(NodeLifecycleWorkflow.status)
            return any(t.to_state is NodeState.DRAIN for t in status.history)

        for _ in range(60):
            if await drained():
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"node-{target['id']} never went to drain")
        audits = httpx.get(
            f"{view.url}/console/events",
            params={"kind": "audit.node.drain", "node": target["id"]},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert len(audits) == 1 and audits[0]["message"].startswith("olga (operator)"), audits
        await page.context.close()

        # A viewer of the same stack: no buttons; a forged drain with its session is 403.
        page = await _log_in(browser, view, "vic")
        await page.goto(f"{view.url}/ui/nodes/{target['id']}")
        await page.wait_for_selector("ol.timeline")
        assert await page.locator("form.action").count() == 0
        csrf = await page.locator("meta[name=csrf-token]").get_attribute("content")
        forged = await page.context.request.post(
            f"{view.url}/nodes/{node['id']}/drain",
            data={"reason": "forged"},
            headers={"X-CSRF-Token": csrf or ""},
        )
        assert forged.status == 403, await forged.text()
        await page.context.close()
        assert view.problems == [], view.problems
    finally:
        stack.stop()
        kill_leftover_agents(stack)


def _published_regions(url: str, token: str) -> set[str]:
    overview = httpx.get(
        f"{url}/console/overview", headers={"Authorization": f"Bearer {token}"}
    ).json()
    return {
        r["region"]
        for s in overview.get("services", [])
        for r in s["regions"]
        if r["effective_weight"] > 0
    }
