"""Heartbeat ingest: the XPlane API (auth + validation + batched write) vs a bare endpoint.

Both run in this process on uvicorn (one event loop each, like one ``xplane
api`` replica); wrk drives them with a Lua script that rotates over N
registered nodes, each with its own token. The bare endpoint is a default
FastAPI app whose route validates the same body model and returns a constant.

XPlane answers heartbeats in front of FastAPI's middleware and routing
(``xplane/api/hot_path.py``), so the framework work the bare endpoint pays for
is work XPlane skips: the ratio can pass 100%. What it measures is what an
operator cares about: heartbeats stored per second against what FastAPI itself
serves on this machine.

    .venv/bin/python bench/heartbeat_ingest.py [--backend sqlite|postgresql | --db URL]
        [--nodes 1000] [--connections 64] [--duration 6] [--rounds 3] [--rate 1000]
        [--synchronous-commit on|off]

``--backend postgresql`` measures PostgreSQL alone, in a throwaway database made
(and dropped) on the server of ``--pg-admin``; ``--db`` uses a given, empty one.

Against any running XPlane API (registers --nodes bench nodes there, with the
join token in XPLANE_BOOTSTRAP_TOKEN; prints saturated and paced figures):

    XPLANE_BOOTSTRAP_TOKEN=... .venv/bin/python bench/heartbeat_ingest.py \
        --url http://api:8080 --service web --region jp

Prints a table row per store (``python -m bench`` assembles BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from fastapi import FastAPI

import xplane.store.tables  # noqa: F401  (registers every table)
from xplane.api import ApiSettings, create_app
from xplane.api.schemas import HeartbeatRequest
from xplane.api.serve import serve_in_thread
from xplane.config.models import ConfigTree, GtmPolicy, GtmRegion, Region
from xplane.store.config_store import save_revision
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction
from xplane.store.samples import count_samples

BOOT, ADMIN = "bench-boot", "bench-admin"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"

LUA = """
local nodes = %s
local i = 0
request = function()
  i = i %% #nodes + 1
  local n = nodes[i]
  local body = string.format(
    '{"node_id":"%%s","cpu":0.42,"rtt_ms":12.5,"error_rate":0.01,"qps":30,'
    .. '"probes":[{"target":"10.0.0.1","ok":true,"rtt_ms":1.2}]}', n.id)
  return wrk.format("POST", "/nodes/heartbeat",
    {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. n.token}, body)
end
"""


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.post("/nodes/heartbeat")
    async def heartbeat(body: HeartbeatRequest) -> dict[str, str]:
        return {"state": "active", "status": "up", "action": "none"}

    return app


def seed(db_url: str) -> None:
    engine = make_engine(db_url)
    Base.metadata.create_all(engine)
    tree = ConfigTree(
        regions={"jp": Region(name="jp")},
        gtm={
            "web": GtmPolicy(service="web", domain="web.svc.plus", regions=[GtmRegion(name="jp")])
        },
    )
    with transaction(make_sessionmaker(engine)) as session:
        save_revision(session, "b" * 40, tree, "bench")
    engine.dispose()


def register(
    url: str, count: int, token: str = BOOT, service: str = "web", region: str = "jp"
) -> list[dict[str, str]]:
    nodes = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        for i in range(count):
            body = {"service": service, "region": region, "address": f"10.{i // 250}.{i % 250}.1"}
            data = client.post("/nodes/register", json=body).raise_for_status().json()
            nodes.append({"id": data["node_id"], "token": data["token"]})
    return nodes


def run_wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    def grab(pattern: str, default: str = "0") -> str:
        match = re.search(pattern, out)
        return match.group(1) if match else default

    return {
        "rps": float(grab(r"Requests/sec:\s+([\d.]+)")),
        "requests": float(grab(r"(\d+) requests in")),
        "p50": _ms(grab(r"50%\s+([\d.]+\w+)", "0ms")),
        "p99": _ms(grab(r"99%\s+([\d.]+\w+)", "0ms")),
        "non_2xx": float(grab(r"Non-2xx or 3xx responses: (\d+)")),
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


PACED = """
delay = function()
  return %d
end
"""


def measure(
    db_url: str | None,
    nodes: int,
    connections: int,
    duration: int,
    rounds: int = 3,
    rate: int = 1000,
    synchronous_commit: bool | None = None,
) -> dict[str, Any]:
    """Saturate the XPlane API and the bare endpoint in turns, then pace both at ``rate``/s.

    Both servers run side by side; ``rounds`` alternating wrk runs per target (so
    a noisy moment hurts both alike) and the median run of each is reported.
    The paced run gives latency at a steady load.
    """
    with tempfile.TemporaryDirectory() as tmp:
        db_url = db_url or f"sqlite:///{tmp}/bench.db"
        seed(db_url)
        commit_mode = (
            {}
            if synchronous_commit is None
            else {"heartbeat_synchronous_commit": synchronous_commit}
        )
        settings = ApiSettings(
            db_url=db_url, bootstrap_token=BOOT, admin_token=ADMIN, **commit_mode
        )
        app = create_app(settings)
        with serve_in_thread(app) as api, serve_in_thread(bare_app()) as bare_api:
            registered = register(api.url, nodes)
            script = Path(tmp) / "heartbeat.lua"
            script.write_text(LUA % _lua_table(registered))
            runs: dict[str, list[dict[str, float]]] = {"xplane": [], "bare": []}
            for _ in range(rounds):
                runs["xplane"].append(run_wrk(api.url, script, connections, duration))
                runs["bare"].append(run_wrk(bare_api.url, script, connections, duration))
            paced_conns = 20
            at_rate = {
                "xplane": run_paced(api.url, script, paced_conns, rate, duration),
                "bare": run_paced(bare_api.url, script, paced_conns, rate, duration),
            }
            stats = app.state.ctx.writer.stats
        engine = make_engine(db_url)
        with make_sessionmaker(engine)() as session:
            stored = count_samples(session)
        engine.dispose()
    xplane, bare = _median(runs["xplane"]), _median(runs["bare"])
    pg = db_url.startswith("postgresql")
    paced_x = at_rate["xplane"]
    answered = sum(r["requests"] - r["non_2xx"] for r in runs["xplane"])
    answered += paced_x["requests_all"] - paced_x["non_2xx"]
    return {
        "backend": db_url.split(":", 1)[0].split("+")[0],
        "nodes": nodes,
        "connections": connections,
        "duration_s": duration,
        "rounds": rounds,
        # PostgreSQL's heartbeat commit mode (docs/deploy.md); SQLite has none.
        "synchronous_commit": settings.heartbeat_synchronous_commit if pg else None,
        "load_average": round(os.getloadavg()[0], 2),
        "xplane": xplane,
        "bare": bare,
        "ratio": round(xplane["rps"] / bare["rps"], 3) if bare["rps"] else 0.0,
        "xplane_rps_runs": [r["rps"] for r in runs["xplane"]],
        "bare_rps_runs": [r["rps"] for r in runs["bare"]],
        "at_rate": {"target_rps": rate, "connections": paced_conns, **at_rate},
        # Every 200 answer is a stored heartbeat: samples_stored >= answered_2xx (a beat
        # still in flight when a wrk run ends is stored but not counted by wrk).
        "answered_2xx": int(answered),
        "samples_stored": stored,
        "transactions": stats.batches,
        "mean_batch": round(stats.heartbeats / max(stats.batches, 1), 1),
        "largest_batch": stats.largest_batch,
    }


def run_paced(
    url: str, script: Path, connections: int, rate: int, duration: int
) -> dict[str, float]:
    """wrk at about ``rate`` requests/s: each connection waits between requests.

    wrk's delay runs after each answer, so a connection's cycle is delay + latency;
    a short first run measures the latency and the delay is set to make up the rest.
    """
    cycle_ms = 1000 * connections / rate
    paced = script.with_name("paced.lua")
    paced.write_text(script.read_text() + PACED % round(cycle_ms))
    probe = run_wrk(url, paced, connections, 2)
    paced.write_text(script.read_text() + PACED % max(1, round(cycle_ms - probe["p50"])))
    run = run_wrk(url, paced, connections, duration)
    # What the calibration run sent counts as load too (see "answered_2xx").
    return {**run, "requests_all": run["requests"] + probe["requests"]}


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


SUMMARY_KEYS = (
    "backend",
    "ratio",
    "xplane_rps_runs",
    "bare_rps_runs",
    "answered_2xx",
    "samples_stored",
    "mean_batch",
    "synchronous_commit",
    "load_average",
)


def describe(r: dict[str, Any]) -> str:
    x, b, paced = r["xplane"], r["bare"], r["at_rate"]["xplane"]
    return (
        f"| {r['backend']} | {x['rps']:.0f} | {b['rps']:.0f} | {r['ratio']:.0%} | "
        f"{paced['rps']:.0f}/s: {paced['p50']:.1f} / {paced['p99']:.1f} | "
        f"{r['samples_stored']} in {r['transactions']} tx (mean batch {r['mean_batch']}) |"
    )


HEADER = (
    "| store | XPlane req/s | bare req/s | XPlane / bare | XPlane paced: p50 / p99 ms | "
    "heartbeats stored |\n| --- | --- | --- | --- | --- | --- |"
)


def run(
    pg_url: str | None = None, nodes: int = 1000, connections: int = 64, duration: int = 6
) -> list[dict[str, Any]]:
    """SQLite, then PostgreSQL when ``pg_url`` is given (a fresh, empty database)."""
    results = [measure(None, nodes, connections, duration)]
    if pg_url:
        results.append(measure(pg_url, nodes, connections, duration))
    print(HEADER)
    for result in results:
        print(describe(result))
    return results


def measure_url(
    url: str, service: str, region: str, nodes: int, connections: int, duration: int, rate: int
) -> dict[str, Any]:
    """Load a running XPlane API: register ``nodes`` bench nodes, saturate, then pace.

    The bootstrap token comes from ``XPLANE_BOOTSTRAP_TOKEN``. The bench nodes stay
    registered; they go down when the bench stops and their lifecycles remove them.
    """
    token = os.environ.get("XPLANE_BOOTSTRAP_TOKEN")
    if not token:
        raise SystemExit("--url needs XPLANE_BOOTSTRAP_TOKEN (a join token of that API)")
    with tempfile.TemporaryDirectory() as tmp:
        registered = register(url, nodes, token, service, region)
        script = Path(tmp) / "heartbeat.lua"
        script.write_text(LUA % _lua_table(registered))
        saturated = run_wrk(url, script, connections, duration)
        paced = run_paced(url, script, 20, rate, duration)
    return {"url": url, "nodes": nodes, "saturated": saturated, "at_rate": paced}


@contextmanager
def throwaway_pg(admin_url: str = PG_ADMIN) -> Iterator[str]:
    """A new, empty database on ``admin_url``'s server, dropped afterwards."""
    name = f"xplane_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="load this running API instead (see measure_url)")
    parser.add_argument("--service", default="web", help="with --url: a configured service")
    parser.add_argument("--region", default="jp", help="with --url: one of its regions")
    parser.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "postgresql"),
        help="sqlite: a temporary file; postgresql: a throwaway database (see --pg-admin)",
    )
    parser.add_argument("--pg-admin", default=PG_ADMIN, help="with --backend postgresql")
    parser.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        help="PostgreSQL: heartbeat batches' synchronous_commit (default: the API's, off)",
    )
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=int, default=6, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="saturating runs per target")
    parser.add_argument("--rate", type=int, default=1000, help="paced run: requests/s")
    args = parser.parse_args()
    if args.url:
        found = measure_url(
            args.url, args.service, args.region, args.nodes, args.connections, args.duration,
            args.rate,
        )  # fmt: skip
        print(json.dumps(found, indent=2))
        return
    sync = None if args.synchronous_commit is None else args.synchronous_commit == "on"
    counts = (args.nodes, args.connections, args.duration, args.rounds, args.rate, sync)
    if args.backend == "postgresql":
        with throwaway_pg(args.pg_admin) as url:
            result = measure(url, *counts)
    else:
        result = measure(None if args.backend == "sqlite" else args.db, *counts)
    print(HEADER)
    print(describe(result))
    print(json.dumps({k: result[k] for k in SUMMARY_KEYS}))


def _lua_table(nodes: list[dict[str, str]]) -> str:
    return (
        "{"
        + ",".join(f"{{id={json.dumps(n['id'])},token={json.dumps(n['token'])}}}" for n in nodes)
        + "}"
    )


if __name__ == "__main__":
    main()
