"""The console in a real browser: Debian's Chromium driven by Playwright, against a real
``xplane api`` process on a seeded store.

Screenshots of every page at desktop (1280x800) and phone (390x844) widths are taken
on every run; with ``XPLANE_UI_SCREENSHOTS=docs/ui`` they are written there (the
committed ones in README come from that).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import playwright.async_api as playwright_api
import pytest
from sqlalchemy import update

from tests.support.console_seed import REJECTED_ISSUE, Seeded, add_event, seed_console_store
from tests.support.stack import BIN
from tests.support.tools import needs_tool
from xplane.netutil import free_port
from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.migrate import upgrade
from xplane.store.node_tables import NodeRow

CHROMIUM = Path("/usr/bin/chromium")
ADMIN = "browser-admin-token"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

# Debian's chromium (scripts/setup.sh installs it): skipped without it, failed in CI.
pytestmark = needs_tool("chromium")


@dataclass
class Console:
    url: str
    db_url: str
    seeded: Seeded
    shots: Path
    problems: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    work = tmp_path_factory.mktemp("console")
    db_url = f"sqlite:///{work}/xplane.db"
    upgrade(db_url)
    engine = make_engine(db_url)
    seeded = seed_console_store(make_sessionmaker(engine), regions=6, nodes_per_region=5)
    engine.dispose()
    port = free_port()
    env = {**os.environ, "XPLANE_ADMIN_TOKEN": ADMIN}
    env.pop("XPLANE_TEMPORAL_ADDRESS", None)  # the console reads the store only
    log = (work / "api.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "xplane"), "api", "--db", db_url, "--port", str(port), "--no-migrate"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, work / "api.log")
        shots = Path(os.environ.get("XPLANE_UI_SCREENSHOTS") or work / "shots")
        shots.mkdir(parents=True, exist_ok=True)
        yield Console(url=url, db_url=db_url, seeded=seeded, shots=shots)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"xplane api exited: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
async def browser(console: Console) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


async def _page(browser: Any, console: Console, viewport: dict[str, int]) -> Any:
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    page.on(
        "console",
        lambda msg: (
            console.problems.append(f"console {msg.type}: {msg.text}")
            if msg.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda err: console.problems.append(f"page error: {err}"))
    page.on(
        "response",
        lambda r: console.problems.append(f"{r.status} {r.url}") if r.status >= 400 else None,
    )
    return page


async def _login(page: Any, console: Console) -> None:
    await page.goto(console.url + "/ui")
    assert page.url.endswith("/ui/login")
    await page.fill("#token", ADMIN)
    await page.click("#login button[type=submit]")
    await page.wait_for_url(console.url + "/ui")


async def _shot(page: Any, console: Console, name: str, width: str) -> None:
    await page.screenshot(path=str(console.shots / f"{name}-{width}.png"), full_page=False)


async def _fits(page: Any, viewport: dict[str, int]) -> None:
    """Nothing but the scrolling tables is wider than the screen."""
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= viewport["width"] + 1, f"page is {width}px wide at {viewport['width']}px"


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
async def test_every_page_renders_without_console_errors(
    browser: Any, console: Console, viewport: dict[str, int]
) -> None:
    width = "desktop" if viewport is DESKTOP else "phone"
    console.problems.clear()
    page = await _page(browser, console, viewport)
    await page.goto(console.url + "/ui/login")
    await _shot(page, console, "login", width)
    await _login(page, console)
    seeded = console.seeded

    # Overview: every region with its weights and reasons, the grid and the chart.
    rows = page.locator("table.regions tr.region")
    assert await rows.count() == len(seeded.regions)
    slow = page.locator(f"tr.region[data-region='{seeded.slow_region}']")
    assert "latency 180 ms > target 100 ms" in await slow.inner_text()
    assert await slow.locator("td.effective").inner_text() == "55.6"
    thin = page.locator(f"tr.region[data-region='{seeded.thin_region}']")
    assert "1 ready node(s) < min_ready_nodes 2" in await thin.inner_text()
    assert "down" in (await thin.get_attribute("class") or "")
    assert "powerdns" in await slow.inner_text()
    assert await page.locator(".grid .tile.down").count() == 1
    await page.wait_for_selector(".chart canvas")  # uPlot drew
    await _fits(page, viewport)
    await _shot(page, console, "overview", width)

    # Region page: its nodes with state, status and metrics; autoscale and terraform.
    await page.click(f"table.regions a[href='/ui/regions/web/{seeded.regions[0]}']")
    await page.wait_for_selector("table.nodes")
    assert await page.locator("table.nodes tr.node").count() == 5
    text = await page.inner_text("main")
    assert "pool 4 -> 5" in text and "terraform for 0badf00d succeeded" in text
    assert (
        await page.locator(f"tr.node[data-node='{seeded.drained_node}'] .badge.drain").count() == 1
    )
    await _fits(page, viewport)
    await _shot(page, console, "region", width)

    # Node page: the lifecycle timeline with the reason of each step.
    node = seeded.nodes[seeded.regions[0]][0]
    await page.click(f"a[href='/ui/nodes/{node}']")
    await page.wait_for_selector("ol.timeline")
    steps = await page.locator("ol.timeline li").all_inner_texts()
    assert any("idle → warm" in s and "health checks passed" in s for s in steps), steps
    assert any("warm → active" in s for s in steps), steps
    await _fits(page, viewport)
    await _shot(page, console, "node", width)

    # Config: the rejected revision's file, field and message.
    await page.click("nav a[href='/ui/config']")
    rejected = page.locator("#rejected")
    for part in (REJECTED_ISSUE.file, REJECTED_ISSUE.path, REJECTED_ISSUE.message):
        assert part in await rejected.inner_text()
    await _fits(page, viewport)
    await _shot(page, console, "config", width)

    # Held DNS plans: none without Temporal (the GTM loops' status says which are held).
    await page.click("nav a[href='/ui/plans']")
    await page.wait_for_selector("#no-plans")
    await _fits(page, viewport)

    # Events: live over server-sent events.
    await page.click("nav a[href='/ui/events']")
    await page.wait_for_selector("#live[data-state='live']")
    engine = make_engine(console.db_url)
    message = f"operator alice drained {node} ({width})"
    add_event(make_sessionmaker(engine), message)
    engine.dispose()
    await page.wait_for_selector(f"#events tr.ev.new:has-text('{message}')", timeout=10_000)
    await _fits(page, viewport)
    await _shot(page, console, "events", width)

    await page.context.close()
    assert console.problems == [], console.problems


async def test_a_node_action_posts_its_reason_and_shows_the_answer(
    browser: Any, console: Console
) -> None:
    console.problems.clear()
    page = await _page(browser, console, DESKTOP)
    await _login(page, console)
    node = console.seeded.nodes[console.seeded.regions[1]][0]
    await page.goto(f"{console.url}/ui/nodes/{node}")
    form = page.locator("form.action[data-action='drain']")
    await form.locator("input[name=reason]").fill("kernel upgrade")
    await form.locator("button").click()
    answer = page.locator(".answer")
    await answer.wait_for(state="visible")
    status = await answer.get_attribute("data-status")
    text = await answer.inner_text()
    # Past the authorization (cookie + CSRF): the route answers; this API has no Temporal
    # for the drain Update (tests/test_console_acceptance.py drains on a running stack).
    assert status == "503", text
    assert "operator actions need Temporal" in text
    await page.context.close()
    expected = {  # the refused call itself, as the network and the browser's console log it
        f"503 {console.url}/nodes/{node}/drain",
        "console error: Failed to load resource: the server responded with a status of 503 "
        "(Service Unavailable)",
    }
    assert set(console.problems) == expected, console.problems


async def test_the_overview_follows_the_store_without_a_reload(
    browser: Any, console: Console
) -> None:
    """Agents of a region stop heartbeating: its weight, reason and colour change in place."""
    console.problems.clear()
    page = await _page(browser, console, DESKTOP)
    await _login(page, console)
    region = console.seeded.regions[4]
    row = page.locator(f"tr.region[data-region='{region}']")
    assert "full weight" in await row.locator(".why").inner_text()
    engine = make_engine(console.db_url)
    with transaction(make_sessionmaker(engine)) as session:
        session.execute(
            update(NodeRow)
            .where(NodeRow.region == region)
            .values(last_heartbeat_at=utcnow() - timedelta(minutes=10))
        )
    engine.dispose()
    # A locator wait: the CSP forbids the string evaluation wait_for_function would use.
    await playwright_api.expect(row.locator(".why")).to_have_text(
        re.compile(r"^0 ready node\(s\) < min_ready_nodes 2"), timeout=20_000
    )
    assert await row.locator(".effective").inner_text() == "0.0"
    assert "down" in (
        await page.locator(f".tile[data-region='{region}']").get_attribute("class") or ""
    )
    await page.context.close()
    assert console.problems == [], console.problems
