"""`xplane status` as an operator runs it: a real process over a real SQLite store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import xplane.store.tables  # noqa: F401  (registers every table)
from tests.support.gate import STALLED, store_gate
from tests.test_api_support import seed_config
from xplane.netutil import free_port
from xplane.store.db import Base, make_engine, make_sessionmaker, transaction, utcnow
from xplane.store.registration import Registration, register_node

XPLANE = Path(sys.executable).parent / "xplane"


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(XPLANE), "status", "-o", "json", *args], capture_output=True, text=True, timeout=60
    )


def test_missing_store_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    data = tmp_path / "not-up-yet"
    done = run_status("--data-dir", str(data))
    assert done.returncode == 1
    assert "no XPlane database" in done.stderr and str(data) in done.stderr
    assert not data.exists()


def test_status_reads_the_store_and_survives_temporal_down(tmp_path: Path) -> None:
    """Nodes and regions from the store; an unreachable Temporal is reported, not fatal.

    The command loads the Temporal client, so it leaves through the CLI's hard
    exit (temporalio/sdk-python#300): the JSON must still arrive whole, exit 0.
    """
    engine = make_engine(f"sqlite:///{tmp_path}/xplane.db")
    Base.metadata.create_all(engine)
    seed_config(engine)
    with transaction(make_sessionmaker(engine)) as session:
        for i, region in enumerate(("jp", "jp", "sg-east")):
            reg = Registration(f"n{i}", "web", region, f"10.0.0.{i + 1}", token_hash=f"h{i}")
            register_node(session, reg, utcnow(), timedelta(seconds=15))
    engine.dispose()

    dead_temporal = f"127.0.0.1:{free_port()}"
    done = run_status("--data-dir", str(tmp_path), "--temporal", dead_temporal)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert sorted(n["id"] for n in report["nodes"]) == ["n0", "n1", "n2"]
    regions = {(r["service"], r["region"]): r for r in report["regions"]}
    assert regions[("web", "jp")]["nodes"] == {"idle": 2}
    assert regions[("web", "sg-east")]["nodes"] == {"idle": 1}
    assert ("api", "jp") in regions and regions[("api", "jp")]["nodes"] == {}
    assert report["temporal_ui"].startswith("unreachable")
    assert report["workflows"] == []


def test_status_shows_the_gate_held_with_its_reason_then_open(tmp_path: Path) -> None:
    """The table an operator reads: one line for the gate, with why it holds."""
    engine = make_engine(f"sqlite:///{tmp_path}/xplane.db")
    Base.metadata.create_all(engine)
    seed_config(engine)
    sessions = make_sessionmaker(engine)

    def table() -> list[str]:
        done = subprocess.run(
            [str(XPLANE), "status", "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "400", "XPLANE_TEMPORAL_ADDRESS": ""},
        )
        assert done.returncode == 0, done.stderr
        return [line.strip() for line in done.stdout.splitlines() if "self-health gate" in line]

    store_gate(sessions, utcnow(), stalled=True, service="web")
    [held] = table()
    assert held.startswith("self-health gate: HELD everywhere (since ")
    assert held.endswith(f"): {STALLED}")
    store_gate(sessions, utcnow(), stalled=False, service="web")
    assert table() == ["self-health gate: open"]
    engine.dispose()
