"""Benchmark: the GTM tick's active health checks at fleet size.

N nodes in SQLite at their own loopback addresses (127.x.y.z, one shared port); one
asyncio server on its own thread answers ``GET`` with 200, and never answers for the
``--dead`` share of nodes, which have also stopped heartbeating (a failed region: the
probes that would wait out their timeout). Timed, in the same sitting:

* every node probed (what each tick did before): ``probe_all`` over all of them;
* ``GtmActivities.check_node_health`` as the tick calls it: nodes out by heartbeat
  skipped, probes started within the probe budget, the round resumed next tick.

``python -m bench.gtm_probe --nodes 1000 --dead 0.05`` prints both and returns them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import threading
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import insert

import xplane.store.tables  # noqa: F401  (registers every table)
from activities.gtm import DEFAULT_PROBE_BUDGET_S, GtmActivities, HealthCheckRequest
from bench.fleet import node_address
from xplane.config.models import HealthCheck
from xplane.gtm.health_checks import CheckState, ProbeTarget
from xplane.heartbeat import HeartbeatSettings
from xplane.netutil import free_port
from xplane.probes.health import probe_all
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.node_tables import NodeRow


def _serve(port: int, dead: set[str]) -> None:
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung = writer.get_extra_info("sockname")[0] in dead
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                if hung:
                    await asyncio.sleep(3600)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def run() -> None:
        loop.run_until_complete(asyncio.start_server(answer, "0.0.0.0", port, backlog=4096))
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)


async def _run(nodes: int, dead_share: float, ticks: int) -> dict[str, Any]:
    port = free_port()
    n_dead = int(nodes * dead_share)
    dead = {node_address(i) for i in range(n_dead)}
    _serve(port, dead)
    engine = make_engine("sqlite://")
    Base.metadata.create_all(engine)
    factory = make_sessionmaker(engine)
    now = utcnow()
    with transaction(factory) as session:
        session.execute(
            insert(NodeRow),
            [
                {
                    "id": f"n{i:05d}",
                    "service": "svc",
                    "region": f"r{i % 20:02d}",
                    "address": node_address(i),
                    "port": port,
                    "token_hash": hashlib.sha256(str(i).encode()).hexdigest(),
                    "state": "active",
                    "reported_status": "up",
                    "last_heartbeat_at": now - timedelta(minutes=5 if i < n_dead else 0),
                }
                for i in range(nodes)
            ],
        )
    check = HealthCheck.model_validate({"interval": "5s", "timeout": "2s"})
    targets = [
        ProbeTarget(node_id=f"n{i:05d}", address=node_address(i), port=port) for i in range(nodes)
    ]
    started = time.perf_counter()
    await probe_all(targets, check)
    every_node_s = time.perf_counter() - started

    acts = GtmActivities(factory, HeartbeatSettings())
    states: dict[str, CheckState] = {}
    tick_s: list[float] = []
    probed: list[int] = []
    for _ in range(ticks):
        started = time.perf_counter()
        result = await acts.check_node_health(
            HealthCheckRequest(service="svc", check=check, states=states)
        )
        tick_s.append(time.perf_counter() - started)
        probed.append(result.probed)
        states = result.states
    engine.dispose()  # the server's thread is a daemon: it ends with the process
    out = {
        "nodes": nodes,
        "dead": n_dead,
        "every_node_s": round(every_node_s, 2),
        "tick_s": [round(t, 2) for t in tick_s],
        "probed_per_tick": probed,
        "budget_s": DEFAULT_PROBE_BUDGET_S,
    }
    print(
        f"{nodes} nodes, {n_dead} silent and hung: every node probed {every_node_s:.2f} s; "
        f"check_node_health per tick {', '.join(f'{t:.2f}' for t in tick_s)} s "
        f"(probed {probed}, budget {DEFAULT_PROBE_BUDGET_S} s)"
    )
    return out


def run(nodes: int = 1000, dead: float = 0.05, ticks: int = 3) -> dict[str, Any]:
    # The hung answers are still pending when the process ends: not worth a warning.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    return asyncio.run(_run(nodes, dead, ticks))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--dead", type=float, default=0.05)
    parser.add_argument("--ticks", type=int, default=3)
    args = parser.parse_args()
    run(args.nodes, args.dead, args.ticks)
