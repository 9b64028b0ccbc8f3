"""An agent's failover between two real ``xplane api`` replicas (shared by a test and bench/).

Two ``xplane api`` processes on one database, one ``xplane agent`` given both
URLs and heartbeating; the replica it talks to is killed with SIGKILL. The
heartbeats the store received (``node_metric_samples.at``, stamped by the API)
show the gap between the last beat before the kill and the first one after.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

import xplane.store.tables  # noqa: F401  (registers every table)
from xplane.config.models import ConfigTree, GtmPolicy, GtmRegion, Region
from xplane.netutil import free_port
from xplane.store.config_store import save_revision
from xplane.store.db import make_engine, make_sessionmaker, transaction
from xplane.store.migrate import upgrade
from xplane.store.node_tables import MetricSampleRow

BIN = Path(sys.executable).parent
BOOT = "failover-boot"


def _seed(db_url: str) -> None:
    upgrade(db_url)
    engine = make_engine(db_url)
    tree = ConfigTree(
        regions={"jp": Region(name="jp")},
        gtm={
            "web": GtmPolicy(service="web", domain="web.svc.plus", regions=[GtmRegion(name="jp")])
        },
    )
    with transaction(make_sessionmaker(engine)) as session:
        save_revision(session, "f" * 40, tree, "failover")
    engine.dispose()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the API exited with {proc.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


def _beats(db_url: str) -> list[datetime]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(MetricSampleRow.at).order_by(MetricSampleRow.at))
            return [r[0] if r[0].tzinfo else r[0].replace(tzinfo=UTC) for r in rows]
    finally:
        engine.dispose()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def measure_failover(
    db_url: str, work: Path, *, interval_s: float = 1.0, before_s: float = 4.0, after_s: float = 5.0
) -> dict[str, Any]:
    """Kill -9 the API replica the agent uses; the heartbeat gap it caused, in seconds."""
    _seed(db_url)
    token = work / "boot.token"
    token.write_text(BOOT)
    env = {**os.environ, "XPLANE_BOOTSTRAP_TOKEN": BOOT, "XPLANE_ADMIN_TOKEN": "failover-admin"}
    env.pop("XPLANE_TEMPORAL_ADDRESS", None)  # heartbeats need no Temporal
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, port in enumerate(ports):
            argv = [str(BIN / "xplane"), "api", "--db", db_url, "--port", str(port),
                    "--heartbeat-interval", str(interval_s), "--no-migrate"]  # fmt: skip
            log = (work / f"api{i + 1}.log").open("wb")
            procs.append(
                subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
            )
        for url, proc in zip(urls, procs, strict=True):
            _wait_ready(url, proc)
        agent = subprocess.Popen(
            [str(BIN / "xplane"), "agent", "--server", urls[0], "--server", urls[1],
             "--service", "web", "--region", "jp", "--token-file", str(token),
             "--address", "127.0.0.1", "--log-level", "debug"],
            stdout=(work / "agent.log").open("wb"), stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )  # fmt: skip
        procs.append(agent)
        deadline = time.monotonic() + 60
        while len(_beats(db_url)) < 2:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the agent never heartbeat; see {work / 'agent.log'}")
            time.sleep(0.2)
        time.sleep(before_s)
        killed_at = datetime.now(UTC)
        os.killpg(procs[0].pid, signal.SIGKILL)  # the replica the agent talks to: urls[0]
        procs[0].wait()
        time.sleep(after_s)
        beats = _beats(db_url)
    finally:
        for proc in reversed(procs):
            _stop(proc)
    before = [b for b in beats if b <= killed_at]
    after = [b for b in beats if b > killed_at]
    if not before or not after:
        raise RuntimeError(f"no beats around the kill: {len(before)} before, {len(after)} after")
    gap = (after[0] - before[-1]).total_seconds()
    steady = [(b - a).total_seconds() for a, b in itertools.pairwise(before)]
    return {
        "interval_s": interval_s,
        "gap_s": round(gap, 3),
        "failover_cost_s": round(gap - interval_s, 3),  # what the kill added to a beat
        # Beats that never arrived: the gap holds this many whole intervals beyond one.
        "heartbeats_lost": max(0, round(gap / interval_s) - 1),
        "max_gap_before_kill_s": round(max(steady), 3) if steady else None,
        "beats_after_kill": len(after),
        "failed_over": "failed over to" in (work / "agent.log").read_text(),
    }
