"""Faults of the control plane itself never become outages (issue 11's acceptance test).

One stack (tests/support/fault_stack.py): 2 API replicas, 2 workers, a PostgreSQL
database of its own, the Temporal dev server, PowerDNS and 6 real agents in two
regions (3 each), heartbeating every 2 s (down after 6 s). The faults run one after
another on it; during each, PowerDNS is polled every 0.5 s and the test asserts
that DNS was never empty and no healthy node's address ever left it, that no node
was deleted and no replacement was committed to the infra repo. The last fault is
a real one -- every agent of one region killed -- and must fail over at once.

A worker killed during a git push is tests/test_worker_failover.py.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fault_stack import TIMEOUT_S, DnsWatch, FaultStack
from tests.support.tools import needs_tool

pytestmark = [pytest.mark.slow, pytest.mark.postgres, needs_tool("pdns_server")]


@pytest.fixture
def stack(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FaultStack]:
    from tests.conftest import POSTGRES_AVAILABLE

    if not POSTGRES_AVAILABLE:
        pytest.skip("PostgreSQL not running")
    s = FaultStack(tmp_path)
    try:
        s.start()
        yield s
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is None or report.failed:
            print(s.diagnostics()[-20000:])
        s.stop()


def _steady(stack: FaultStack, before: tuple[int, int], timeout: float = 60) -> int:
    """Every agent in DNS and the gate reopened after the fault (its closings returned),
    then 2 s more: the moment the gate opens is when a wrongly judged node would go."""
    stack.wait_all_in_dns(timeout)
    closings = stack.wait_gate_reopened(before, timeout)
    time.sleep(2)
    return closings


def _assert_nothing_lost(
    stack: FaultStack, watch: DnsWatch, fault: str, commits: list[str], nodes: dict[str, str]
) -> None:
    healthy = {a.address for a in stack.agents}
    seen = watch.stop()
    assert len(seen) >= 10, f"{fault}: DNS polled {len(seen)} times only"
    assert watch.empty_polls() == 0, f"{fault}: DNS empty in {watch.empty_polls()} polls"
    assert not watch.lost(healthy), f"{fault}: healthy addresses left DNS: {watch.lost(healthy)}"
    assert stack.scale_commits() == commits, f"{fault}: a commit was made: {stack.scale_commits()}"
    assert stack.node_states().keys() == nodes.keys(), f"{fault}: nodes changed"
    assert all(s != "deleted" for s in stack.node_states().values()), stack.node_states()


def _new(now: list[str], before: list[str]) -> list[str]:
    """The commits made since ``before`` (both newest first)."""
    return now[: len(now) - len(before)]


def test_control_plane_faults_never_become_outages(stack: FaultStack) -> None:
    t0 = time.monotonic()
    stack.wait_all_in_dns(120)
    stack._wait("the gate open", lambda: not stack.gate_holds(), 60)
    commits = stack.scale_commits()
    nodes = stack.node_states()
    print(f"steady at +{time.monotonic() - t0:.1f}s; commits so far: {commits}")

    # Fault 2: every agent of every region stopped past the heartbeat timeout -> held.
    before = stack.gate_counts()
    watch = stack.watch()
    stack.signal_agents(stack.agents, signal.SIGSTOP)
    time.sleep(3 * TIMEOUT_S)
    stack.signal_agents(stack.agents, signal.SIGCONT)
    closings = _steady(stack, before)
    _assert_nothing_lost(stack, watch, "all agents stopped", commits, nodes)
    assert closings > 0, "the gate never closed"
    print(f"fault 'all agents stopped' passed at +{time.monotonic() - t0:.1f}s")

    # Fault 3: kill -9 the API replica every agent talks to first.
    before = stack.gate_counts()
    watch = stack.watch()
    stack.kill_api(0)
    time.sleep(3 * TIMEOUT_S)
    _steady(stack, before)
    _assert_nothing_lost(stack, watch, "API replica killed", commits, nodes)
    stack.start_api(0)
    print(f"fault 'API replica killed' passed at +{time.monotonic() - t0:.1f}s")

    # Fault 4: the database refuses every connection for 60 s (the figure).
    before = stack.gate_counts()
    watch = stack.watch()
    with stack.database_refusing():
        time.sleep(60)
    closings = _steady(stack, before, 90)
    _assert_nothing_lost(stack, watch, "database refusing", commits, nodes)
    assert closings > 0, "the gate never closed"
    print(f"fault 'database refusing' passed at +{time.monotonic() - t0:.1f}s")

    # Faults 5 and 6: Temporal stopped; a webhook sent meanwhile is acknowledged and
    # reaches its workflow once Temporal is back; the loops resume with DNS intact.
    signalled = asyncio.run(stack.signals("autoscale-web-jp")).count("terraform_finished")
    before = stack.gate_counts()
    watch = stack.watch()
    stack.temporal.stop()
    acked = stack.webhook(stack.urls[1], "fault-ci-1", "jp", "c" * 40)
    assert acked.status_code == 202, acked.text
    time.sleep(5)
    stack.temporal.start()
    stack._wait(
        "the webhook in its workflow's history",
        lambda: (
            asyncio.run(stack.signals("autoscale-web-jp")).count("terraform_finished") > signalled
        ),
        60,
    )
    _steady(stack, before, 90)
    _assert_nothing_lost(stack, watch, "Temporal restarted", commits, nodes)
    print(f"fault 'Temporal restarted' passed at +{time.monotonic() - t0:.1f}s")

    # Fault 1, a real one: every agent of one region killed -> it leaves DNS at once,
    # the other region's addresses stay; the gate does not hold it.
    dead = [a for a in stack.agents if a.region == "sg"]
    live = {a.address for a in stack.agents if a.region != "sg"}
    watch = stack.watch()
    stack.signal_agents(dead, signal.SIGKILL)
    killed = time.monotonic()
    stack._wait(
        "the dead region out of DNS",
        lambda: not ({a.address for a in dead} & stack.published()),
        TIMEOUT_S + 12,
    )
    print(f"dead region left DNS {time.monotonic() - killed:.1f}s after the kill")
    time.sleep(2)
    watch.stop()
    assert watch.empty_polls() == 0
    assert not watch.lost(live), f"live addresses left DNS: {watch.lost(live)}"
    # The real death is still handled: the autoscaler replaces the dead nodes.
    stack._wait(
        "a replacement commit for sg",
        lambda: any(" sg " in c for c in _new(stack.scale_commits(), commits)),
        60,
    )
    print(f"faults done at +{time.monotonic() - t0:.1f}s")
