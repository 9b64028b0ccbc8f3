"""Benchmark: one GTM tick's observe and one world-state scan at fleet size, in-process.

A store seeded as a fleet run starts (``seed_repos_and_store`` with the scale stack's
config: 100 regions of ``web``, an HTTP health check on a shared port, PowerDNS) plus
N nodes written straight into it: active, beating within the last interval, recorded
up, each on its own loopback address. A small server in a child process answers the
health checks (on every 127/8 address), as the fleet simulator does.

Timed by calling the activities directly (no Temporal): ``observe_gtm`` as the GTM
loop calls it each tick (health states and RTT averages carried from one tick to the
next), split into the active checks (bounded by the probe budget) and the rest (store
and weights); ``scan_node_transitions`` idle and after a region of nodes fell silent
(signals to the node lifecycles stubbed out: they need Temporal). Also the size of the
payloads the GTM loop's history carries: the observe result, the next tick's observe
request, one provider's ``apply_dns`` request and the loop's continue-as-new input.

``python -m bench.gtm_observe_scale [nodes] [regions]``; SQLite, and PostgreSQL when
it runs at 127.0.0.1:5432 (a throwaway database, dropped at the end).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

ROOT = Path(__file__).resolve().parent.parent
NODES = 10_000
REGIONS = 100
REPEAT = 5
GOAL_S = 1.0
PAYLOADS = ("observe_result", "observe_request", "apply_dns_desired", "loop_params")
NOTE = (
    f"{NODES:,} nodes in {REGIONS} regions seeded straight into the store (all active and "
    "beating), the activities called in-process: observe_gtm as the loop calls it (health "
    "states and RTT carried over; split into active checks and store + weights) and "
    "scan_node_transitions idle and after one region's 100 nodes fell silent (signals "
    "stubbed). Payloads: the pydantic data converter's bytes. Goals: <= 1 s each, "
    "payloads well under Temporal's 2 MiB."
)

# Answers every health check with 200, on whatever 127/8 address it was reached.
_HEALTH_SERVER = """
import asyncio, sys

async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\r\\n\\r\\n")
            writer.write(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
            await writer.drain()
    except Exception:
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(serve, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


@contextmanager
def _health_server(port: int) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HEALTH_SERVER, str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _stats(times: list[float]) -> dict[str, float]:
    return {
        "best_s": round(min(times), 3),
        "median_s": round(statistics.median(times), 3),
        "max_s": round(max(times), 3),
    }


def _seed(db_url: str, work: Path, nodes: int, regions: int, health_port: int) -> list[str]:
    """The stack's config and pools, then ``nodes`` fresh nodes; the region names."""
    from bench.fleet import node_address, spread
    from bench.scale_stack import ScaleSettings, config_files
    from tests.support.fault_stack import seed_repos_and_store
    from xplane.netutil import free_port
    from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow
    from xplane.store.node_tables import NodeRow

    sizes = spread(nodes, regions)
    settings = ScaleSettings(regions=sizes)
    files = config_files(settings, free_port(), health_port)
    seed_repos_and_store(files, sizes, work, work / "config", work / "infra.git", db_url)
    rnd = random.Random(16)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for region in sorted(sizes):
        base_rtt = rnd.uniform(5, 120)
        for i in range(sizes[region]):
            node_id = f"{region}-n{i:05d}"
            rows.append(
                {
                    "id": node_id,
                    "service": "web",
                    "region": region,
                    "address": node_address(len(rows)),
                    "labels": {},
                    "token_hash": hashlib.sha256(node_id.encode()).hexdigest(),
                    "registered_at": now - timedelta(hours=1),
                    "state": "active",
                    "reported_status": "up",
                    "last_heartbeat_at": now - timedelta(seconds=rnd.uniform(0, 9)),
                    "cpu": rnd.uniform(0.2, 0.6),
                    "rtt_ms": base_rtt * rnd.uniform(0.8, 1.2),
                    "error_rate": rnd.choice([0.0, 0.001, 0.002, 0.01]),
                    "probes_ok": 1,
                    "probes_total": 1,
                    "health_check_ok": True,
                    "recorded_status": "up",
                    "recorded_status_at": now - timedelta(minutes=30),
                }
            )
    engine = make_engine(db_url)
    with transaction(make_sessionmaker(engine)) as session:
        for start in range(0, len(rows), 5_000):
            session.execute(insert(NodeRow), rows[start : start + 5_000])
    engine.dispose()
    return sorted(sizes)


def _payload_bytes(value: Any) -> int:
    from temporalio.contrib.pydantic import pydantic_data_converter

    return int(pydantic_data_converter.payload_converter.to_payloads([value])[0].ByteSize())


def _timed_checks(acts: Any, spent: list[float]) -> None:
    """Time each ``check_node_health`` call into ``spent`` (the probe part of a tick)."""
    inner = acts.check_node_health

    async def timed(request: Any) -> Any:
        started = time.perf_counter()
        try:
            return await inner(request)
        finally:
            spent.append(time.perf_counter() - started)

    acts.check_node_health = timed


class _Clock:
    """Wall and this process's CPU seconds of each timed call."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    @contextmanager
    def timing(self) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)

    def stats(self) -> dict[str, float]:
        return {**_stats(self.wall), "median_cpu_s": round(statistics.median(self.cpu), 3)}


async def _measure(db_url: str, names: list[str]) -> dict[str, Any]:
    """The timings, in one event loop (as the worker runs its activities)."""
    from activities.gtm import GtmActivities, ObserveRequest
    from activities.nodes import NodeActivities, ScanRequest
    from workflows.gtm_loop import GtmLoopParams, ProviderApply
    from xplane.config.models import GtmPolicy
    from xplane.dns.plan import desired_for_provider, digest
    from xplane.gtm.deadband import published
    from xplane.gtm.health_checks import CheckState
    from xplane.heartbeat import HeartbeatSettings
    from xplane.store import nodes as node_store
    from xplane.store.db import make_engine, make_sessionmaker, transaction, utcnow
    from xplane.store.node_tables import NodeRow

    signalled: list[str] = []

    class Scan(NodeActivities):
        async def _signal_node(self, t: Any, now: Any) -> None:
            signalled.append(t.node_id)

        async def _wake_gtm(self, service: str) -> None:
            signalled.append(service)

    engine = make_engine(db_url)
    factory = make_sessionmaker(engine)
    heartbeat = HeartbeatSettings(interval=timedelta(seconds=10))
    scan = Scan(factory, client=None, task_queue="bench", heartbeat=heartbeat)  # type: ignore[arg-type]
    gtm = GtmActivities(factory, heartbeat=heartbeat)
    probes: list[float] = []
    _timed_checks(gtm, probes)
    # A loop in its steady state: every node checked and healthy before (no flips to
    # write), so a tick probes its share of the round in turn.
    with factory() as session:
        ids = [c.id for c in node_store.probe_candidates(session, "web")]
    steady = CheckState(healthy=True, consecutive_ok=1)
    request = ObserveRequest(service="web", health=dict.fromkeys(ids, steady))
    probed: list[int] = []

    async def scans(repeat: int) -> _Clock:
        clock = _Clock()
        for _ in range(repeat):
            with clock.timing():
                await scan.scan_node_transitions(ScanRequest())
        return clock

    async def observes(repeat: int) -> tuple[_Clock, Any]:
        nonlocal request
        clock, result = _Clock(), None
        for _ in range(repeat):
            with clock.timing():
                result = await gtm.observe_gtm(request)
            assert result.health is not None and result.weights is not None
            probed.append(result.health.probed)
            # The loop carries the health states and RTT averages to the next tick.
            request = ObserveRequest(
                service="web", health=result.health.states, rtt=result.rtt or {}, at=utcnow()
            )
        return clock, result

    out: dict[str, Any] = {}
    out["scan_idle"] = (await scans(REPEAT)).stats()  # the first writes the gate's decision
    probes.clear()
    clock, result = await observes(REPEAT)
    out["observe"] = clock.stats()
    out["observe_checks"] = _stats(probes)
    out["observe_store_and_weights"] = _stats(
        [a - b for a, b in zip(clock.wall, probes, strict=True)]
    )
    out["probed_per_tick"] = int(statistics.median(probed))
    policy: GtmPolicy = result.policy
    desired = desired_for_provider(policy, policy.dns_providers()[0], result.weights)
    out["records"] = len(result.weights.records)
    # What continue-as-new carries: the trackers and the last write's shares per address.
    params = GtmLoopParams(
        service="web",
        health=request.health,
        rtt=request.rtt,
        applied={
            "0:powerdns": ProviderApply(
                at=utcnow().isoformat(), digest=digest(desired), summary="", write_calls=1,
                published=published(desired),
            )
        },
    )  # fmt: skip
    out["payload_bytes"] = {
        "observe_result": _payload_bytes(result),
        "observe_request": _payload_bytes(request),
        "apply_dns_desired": _payload_bytes(desired),
        "loop_params": _payload_bytes(params),
    }

    # One region falls silent: the scan finds its nodes (and the gate judges them).
    with transaction(factory) as session:
        session.execute(
            update(NodeRow)
            .where(NodeRow.region == names[0])
            .values(last_heartbeat_at=utcnow() - timedelta(minutes=5))
        )
    signalled.clear()
    out["scan_region_silent"] = {**(await scans(1)).stats(), "signals": len(signalled)}
    clock, result = await observes(2)
    out["observe_region_silent"] = clock.stats()
    out["records_region_silent"] = len(result.weights.records)
    engine.dispose()
    return out


def measure(db_url: str, nodes: int = NODES, regions: int = REGIONS) -> dict[str, Any]:
    from xplane.netutil import free_port

    health_port = free_port("0.0.0.0")
    with tempfile.TemporaryDirectory() as tmp, _health_server(health_port):
        started = time.perf_counter()
        names = _seed(db_url, Path(tmp), nodes, regions, health_port)
        seed_s = time.perf_counter() - started
        out = asyncio.run(_measure(db_url, names))
    return {"nodes": nodes, "regions": regions, "seed_s": round(seed_s, 1), **out}


def _pg() -> tuple[str | None, Callable[[], None]]:
    from tests.conftest import POSTGRES_AVAILABLE, _create_pg_database, _drop_pg_database

    if not POSTGRES_AVAILABLE:
        return None, lambda: None
    url = _create_pg_database()
    return url, lambda: _drop_pg_database(url)


def run(nodes: int = NODES, regions: int = REGIONS) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(
            {"backend": "sqlite", **measure(f"sqlite:///{tmp}/xplane.db", nodes, regions)}
        )
    url, drop = _pg()
    if url is not None:
        try:
            results.append({"backend": "postgresql", **measure(url, nodes, regions)})
        finally:
            drop()
    print(
        "| backend | nodes | observe_gtm median (checks + store/weights; CPU) | scan idle / "
        "region silent | observe result / request / apply_dns / loop params | goal |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        p, o = r["payload_bytes"], r["observe"]
        print(
            f"| {r['backend']} | {r['nodes']:,} | {o['median_s']} s "
            f"({r['observe_checks']['median_s']} + {r['observe_store_and_weights']['median_s']}"
            f"; {o['median_cpu_s']}) | {r['scan_idle']['median_s']} / "
            f"{r['scan_region_silent']['median_s']} s | "
            + " / ".join(f"{p[k] / 1024:.0f}" for k in PAYLOADS)
            + f" KiB | <= {GOAL_S:g} s; < 2 MiB |"
        )
    return results


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    args = [int(a) for a in sys.argv[1:3]]
    run(*args)
