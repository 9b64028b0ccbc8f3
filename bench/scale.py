"""A fleet on one machine: N simulated nodes in R regions against the real control plane.

:class:`bench.scale_stack.ScaleStack` (API, worker with its loops, Temporal dev
server, PowerDNS; SQLite or PostgreSQL) and :class:`bench.fleet.Fleet` (the
nodes, one process). The fleet registers, the worker starts, every node reaches
DNS; then over an idle window it measures:

* heartbeat ingest p50/p99 as the nodes see it, and lost beats;
* world-state scan and GTM activity times (from the workflows' histories);
* NodeLifecycle workflows running; Temporal history events per node per idle
  hour (every execution's history length, before and after the window);
* CPU (cores, averaged over the window) and resident memory of each process;
* database growth per hour (extrapolated from the window).

Then, with ``failures``, three faults in a row: one whole region and 5 % of the
rest spread over every region, each timed from the kill to the moment no killed
address is left in the published record; then 45 % of the rest spread over every
region, which the self-health gate must hold (beats arrive at 55 % of the rate the
nodes should send): timed from the kill to the hold, which must come before the
first killed node's silence reaches the heartbeat timeout (2 intervals after the
kill at the earliest), then watched for a timeout more. Gate verdicts (with the
downs held back), replacement commits, and whether any live address ever left DNS
are recorded; ``as_expected`` says whether each step did what it should. GTM's
active checks act on their own: killed addresses they took out before the hold are
counted, and those published again at the end (a held region does not trust a
failing check).

    .venv/bin/python -m bench.scale --nodes 10000 --regions 100 --interval 10 \
        --backend sqlite --window 120 [--failures]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import procstat
from bench.fleet import Fleet, spread
from bench.scale_stack import ScaleSettings, ScaleStack, region_token

NOTE = (
    "bench/scale.py: N simulated nodes (bench/fleet.py, one process) against one `xplane "
    "api`, one `xplane worker` (with its loops), the Temporal dev server and PowerDNS, "
    "on this machine. Ingest latency is what the nodes see (send to whole answer). Scan "
    "and GTM times are activity durations from the workflows' histories. Events per "
    "node-hour and database growth are extrapolated from the idle window. Goals: ingest "
    "p99 <= 50 ms, 0 lost beats, scan <= 1 s, GTM tick <= 1 s, worker < 1 core idle; "
    "a killed region out of DNS within the heartbeat timeout + 3 s."
)


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 3) if values else 0.0


async def activity_times(client: Any, workflow_id: str, since: datetime) -> dict[str, Any]:
    """Durations (scheduled -> completed, s) of each activity type in the workflow's
    current run, for those scheduled after ``since``."""
    from temporalio.api.enums.v1 import EventType

    history = await client.get_workflow_handle(workflow_id).fetch_history()
    scheduled: dict[int, tuple[str, datetime]] = {}
    out: dict[str, list[float]] = {}
    for e in history.events:
        at = e.event_time.ToDatetime(tzinfo=UTC)
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[e.event_id] = (
                e.activity_task_scheduled_event_attributes.activity_type.name,
                at,
            )
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            name, start = scheduled.get(
                e.activity_task_completed_event_attributes.scheduled_event_id, ("?", at)
            )
            if start >= since:
                out.setdefault(name, []).append((at - start).total_seconds())
    return {
        name: {
            "count": len(v),
            "p50_s": _pct(v, 0.5),
            "p99_s": _pct(v, 0.99),
            "max_s": round(max(v), 3),
        }
        for name, v in out.items()
    }


async def events_in_window(
    client: Any, since: datetime, until: datetime, node_sample: int = 100
) -> dict[str, float]:
    """History events written between ``since`` and ``until``, per workflow type.

    Every loop's history is read; node lifecycles are sampled (``node_sample`` of
    them) and scaled to all. The dev server's visibility does not update a running
    workflow's history length, so the events are counted by their time. Only each
    workflow's latest run is read: a loop that continued-as-new in the window is
    counted from its new run (a small undercount)."""
    from xplane import ids

    executions: dict[str, list[str]] = {}
    async for wf in client.list_workflows("ExecutionStatus='Running'", page_size=1000):
        executions.setdefault(wf.workflow_type, []).append(wf.id)
    out: dict[str, float] = {}
    for kind, wf_ids in sorted(executions.items()):
        read = wf_ids[:node_sample] if kind == ids.NODE_LIFECYCLE else wf_ids
        counted = 0
        for wf_id in read:
            history = await client.get_workflow_handle(wf_id).fetch_history()
            counted += sum(
                1 for e in history.events if since <= e.event_time.ToDatetime(tzinfo=UTC) <= until
            )
        out[kind] = round(counted * len(wf_ids) / max(1, len(read)), 1)
    return out


async def count_running(client: Any, workflow_type: str) -> int:
    query = f"WorkflowType='{workflow_type}' AND ExecutionStatus='Running'"
    return int((await client.count_workflows(query)).count)


def sample(stack: ScaleStack) -> dict[str, procstat.Usage]:
    import os

    samples = {name: procstat.usage(pid) for name, pid in stack.pids().items()}
    samples["fleet (bench process)"] = procstat.usage(os.getpid(), descendants=False)
    return samples


async def watch_out_of_dns(
    stack: ScaleStack, fleet: Fleet, killed: set[str], timeout: float
) -> dict[str, Any]:
    """Poll the published record until no killed address is left; whether any live
    address was missing from some poll meanwhile."""
    t0 = time.monotonic()
    live_missing: set[str] = set()
    first_missing: dict[str, float] = {}
    polls = 0
    while time.monotonic() - t0 < timeout:
        published = await asyncio.to_thread(stack.published)
        polls += 1
        missing = fleet.live_addresses() - published
        for address in missing - live_missing:
            first_missing[address] = round(time.monotonic() - t0, 1)
        live_missing |= missing
        if not killed & published:
            return {
                "out_of_dns_s": round(time.monotonic() - t0, 1),
                "live_addresses_missing": len(live_missing),
                "live_missing_sample": dict(sorted(first_missing.items())[:5]),
                "polls": polls,
            }
        await asyncio.sleep(0.5)
    left = len(killed & await asyncio.to_thread(stack.published))
    return {
        "out_of_dns_s": None,
        "still_published_after_timeout": left,
        "live_addresses_missing": len(live_missing),
        "polls": polls,
    }


async def watch_held(
    stack: ScaleStack, fleet: Fleet, killed: set[str], timeout: float
) -> dict[str, Any]:
    """Poll until the gate holds everywhere, then for ``timeout`` more: when it held,
    killed addresses that left the published record before it held (GTM's active
    checks act on their own) and those published at the end (in a held region a
    failing check is not trusted), and whether any live address went missing."""
    t0 = time.monotonic()
    held_after: float | None = None
    reason = ""
    left_before_hold: set[str] = set()
    live_missing: set[str] = set()
    published: set[str] = set()
    polls = 0
    while time.monotonic() - t0 < (held_after or 0.0) + timeout:
        published = await asyncio.to_thread(stack.published)
        polls += 1
        live_missing |= fleet.live_addresses() - published
        if held_after is None:
            left_before_hold |= killed - published
            holds = await asyncio.to_thread(stack.gate_holds)
            if "*" in holds:
                held_after, reason = round(time.monotonic() - t0, 1), holds["*"]
        await asyncio.sleep(0.5)
    return {
        "held_after_s": held_after,
        "held_reason": reason[:300],
        "watched_s": round(time.monotonic() - t0, 1),
        "killed_left_dns_before_hold": len(left_before_hold),
        "killed_published_at_end": len(killed & published),
        "live_addresses_missing": len(live_missing),
        "polls": polls,
    }


async def gate_summary(client: Any) -> Any:
    from workflows.world_state import WorldStateWorkflow
    from xplane import ids

    status = await client.get_workflow_handle(ids.WORLD_STATE_ID).query(WorldStateWorkflow.status)
    details = status.details
    return {"gate": details.get("gate"), "held_count": details.get("gate_held_count")}


async def faults(stack: ScaleStack, fleet: Fleet, client: Any, settle_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    timeout = stack.s.timeout_s + 60
    commits0 = len(stack.infra_commits())
    first = sorted({n.region for n in fleet.nodes})[0]
    # A region and a 5 % spread are real failures (they fail over); a 45 % spread in
    # every region is the gate's to hold (beats far under what the nodes should send).
    steps = [
        (f"region {first}", "fails over", lambda: fleet.kill_region(first)),
        ("5% spread", "fails over", lambda: fleet.kill_fraction(0.05, exclude=[first])),
        ("45% spread", "held", lambda: fleet.kill_fraction(0.45, exclude=[first])),
    ]
    for name, expect, kill in steps:
        await stack.await_("the self-health gate open", stack.gate_open, 180)
        fleet.take_window()
        killed = {n.address for n in kill()}
        if expect == "held":
            result = await watch_held(stack, fleet, killed, stack.s.timeout_s + 10)
            # Held before the first killed node's silence could reach the timeout (the
            # world state then judges none of them down; held_count in "gate" says
            # how many downs it held back).
            held = result["held_after_s"]
            ok = held is not None and held < stack.s.timeout_s - stack.s.interval_s
        else:
            result = await watch_out_of_dns(stack, fleet, killed, timeout)
            ok = result["out_of_dns_s"] is not None
        result["expected"] = expect
        result["as_expected"] = ok and result["live_addresses_missing"] == 0
        result["killed"] = len(killed)
        result["beats"] = fleet.take_window()
        result["gate"] = await gate_summary(client)
        result["replacement_commits_so_far"] = len(stack.infra_commits()) - commits0
        out[name] = result
        print(f"scale: {name}: {json.dumps(result)}", flush=True)
    if settle_s > 0:
        # Killed nodes are given up after the down grace, then the autoscalers commit
        # replacements: wait for those, and show what was committed.
        await asyncio.sleep(settle_s)
        commits = stack.infra_commits()
        out["replacement_commits"] = len(commits) - commits0
        out["replacement_commit_titles"] = commits[: len(commits) - commits0][:10]
        out["node_states_after"] = stack.node_states()
        out["gate_after"] = await gate_summary(client)
    return out


async def measure_async(
    settings: ScaleSettings,
    work: Path,
    window_s: float,
    with_faults: bool,
    settle: bool = True,
    ingest_only: bool = False,
) -> dict[str, Any]:
    from xplane import ids
    from xplane.temporal.client import connect

    stack = ScaleStack(work, settings)
    nodes = sum(settings.regions.values())
    result: dict[str, Any] = {
        "backend": settings.backend,
        "nodes": nodes,
        "regions": len(settings.regions),
        "heartbeat_interval_s": settings.interval_s,
        "heartbeat_timeout_s": settings.timeout_s,
    }
    fleet: Fleet | None = None
    try:
        stack.start_platform()  # main thread: see ScaleStack._spawn
        fleet = Fleet(
            stack.api_url,
            settings.regions,
            region_token,
            interval_s=settings.interval_s,
            health_port=stack.health_port,
        )
        t0 = time.monotonic()
        await fleet.start()
        result["registration_s"] = round(time.monotonic() - t0, 1)
        if ingest_only:
            return await _ingest_only(stack, fleet, result, window_s)
        # Every lifecycle starts at once here (a worst case: a fleet meets a new control
        # plane); measured at ~6 lifecycles/s on a loaded 2-core machine, hence the waits.
        stack.start_worker()
        t0 = time.monotonic()
        want = {n.address for n in fleet.nodes}
        wait_s = 120 + nodes * 0.3
        await stack.await_("every node in DNS", lambda: want <= stack.published(), wait_s)
        result["worker_start_to_all_in_dns_s"] = round(time.monotonic() - t0, 1)
        await stack.await_(
            "every node active", lambda: stack.node_states() == {"active": nodes}, wait_s
        )
        await stack.await_("the self-health gate open", stack.gate_open, 180)
        result["worker_start_to_gate_open_s"] = round(time.monotonic() - t0, 1)
        client = await connect(stack.temporal.address)
        await asyncio.sleep(min(20.0, settings.interval_s * 2))  # let the first rush settle

        # The idle window.
        fleet.take_window()
        since = datetime.now(UTC)
        usage0, size0, t0 = sample(stack), stack.database_bytes(), time.monotonic()
        await asyncio.sleep(window_s)
        seconds = time.monotonic() - t0
        usage1, size1 = sample(stack), stack.database_bytes()
        result["ingest"] = fleet.take_window()
        added = await events_in_window(client, since, datetime.now(UTC))
        result["window_s"] = round(seconds, 1)
        result["processes"] = procstat.rates(usage0, usage1, seconds)
        result["database_mib"] = round(size1 / 2**20, 1)
        result["database_growth_mib_per_hour"] = round((size1 - size0) / 2**20 * 3600 / seconds, 1)
        result["world_state_activities"] = await activity_times(client, ids.WORLD_STATE_ID, since)
        result["gtm_activities"] = await activity_times(client, ids.gtm_id("web"), since)
        result["node_lifecycles_running"] = await count_running(client, ids.NODE_LIFECYCLE)
        result["temporal_events_in_window"] = added
        result["temporal_events_per_node_per_idle_hour"] = round(
            sum(added.values()) * 3600 / seconds / nodes, 2
        )
        result["node_states"] = stack.node_states()
        print(f"scale: steady: {json.dumps(result)}", flush=True)
        if with_faults:
            wait = settings.down_grace_s + 2 * settings.autoscale_interval_s if settle else 0
            result["faults"] = await faults(stack, fleet, client, wait)
    except BaseException:
        print(stack.logs_tail())
        raise
    finally:
        try:
            if fleet is not None:
                await fleet.stop()
        finally:
            stack.stop()
    return result


async def _ingest_only(
    stack: ScaleStack, fleet: Fleet, result: dict[str, Any], window_s: float
) -> dict[str, Any]:
    """The API and its store under the fleet's beats, no worker: what ingest costs alone."""
    await asyncio.sleep(min(10.0, fleet.interval))
    fleet.take_window()
    usage0, size0, t0 = sample(stack), stack.database_bytes(), time.monotonic()
    await asyncio.sleep(window_s)
    seconds = time.monotonic() - t0
    usage1, size1 = sample(stack), stack.database_bytes()
    result["ingest"] = fleet.take_window()
    result["window_s"] = round(seconds, 1)
    result["processes"] = procstat.rates(usage0, usage1, seconds)
    result["database_mib"] = round(size1 / 2**20, 1)
    result["database_growth_mib_per_hour"] = round((size1 - size0) / 2**20 * 3600 / seconds, 1)
    print(f"scale: ingest only: {json.dumps(result)}", flush=True)
    return result


def measure(
    nodes: int = 10_000,
    regions: int = 100,
    backend: str = "sqlite",
    interval_s: float = 10.0,
    window_s: float = 120.0,
    with_faults: bool = True,
    ingest_only: bool = False,
    settle: bool = True,
) -> dict[str, Any]:
    settings = ScaleSettings(
        regions=spread(nodes, regions),
        backend=backend,
        interval_s=interval_s,
        check_interval_s=max(2.0, interval_s),
        down_grace_s=max(10.0, 3 * interval_s),
    )
    with tempfile.TemporaryDirectory() as tmp:
        return asyncio.run(
            measure_async(
                settings, Path(tmp), window_s, with_faults, settle=settle, ingest_only=ingest_only
            )
        )


def run(nodes: int = 10_000, regions: int = 100, window_s: float = 120.0) -> list[dict[str, Any]]:
    """``make bench``: both stores, faults on each."""
    from tests.conftest import POSTGRES_AVAILABLE

    backends = ["sqlite", "postgresql"] if POSTGRES_AVAILABLE else ["sqlite"]
    results = [measure(nodes, regions, b, window_s=window_s) for b in backends]
    print(
        "| store | nodes | ingest p50/p99 ms | lost | scan p50/max s | worker cores "
        "| events/node/h |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        scan = r["world_state_activities"].get("scan_node_transitions", {})
        print(
            f"| {r['backend']} | {r['nodes']} | {r['ingest']['p50_ms']}/{r['ingest']['p99_ms']} | "
            f"{r['ingest']['lost']} | {scan.get('p50_s')}/{scan.get('max_s')} | "
            f"{r['processes'].get('worker', {}).get('cpu_cores')} | "
            f"{r['temporal_events_per_node_per_idle_hour']} |"
        )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--regions", type=int, default=100)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=120.0)
    parser.add_argument("--failures", action="store_true")
    parser.add_argument("--ingest-only", action="store_true", help="API and store, no worker")
    parser.add_argument("--no-settle", action="store_true", help="skip waiting for replacements")
    args = parser.parse_args()
    print(json.dumps(measure(args.nodes, args.regions, args.backend, args.interval,
                             args.window, args.failures, args.ingest_only,
                             settle=not args.no_settle), indent=2))  # fmt: skip
