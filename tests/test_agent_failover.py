"""Agents fail over between API replicas (`docs/roadmap.md` phase 6.1): real processes, SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import POSTGRES_AVAILABLE, _create_pg_database, _drop_pg_database
from tests.support.failover import measure_failover
from tests.test_agent_loop import Reply, Stub, _agent, _beat, _register_ok, _until, stubs
from xplane.netutil import free_port

__all__ = ["stubs"]  # the fixture, shared with test_agent_loop


@pytest.fixture
def shared_db(tmp_path: Path) -> Iterator[str]:
    """One database for both replicas: PostgreSQL as deployed, else a SQLite file."""
    if not POSTGRES_AVAILABLE:
        yield f"sqlite:///{tmp_path}/xplane.db"
        return
    url = _create_pg_database()
    try:
        yield url
    finally:
        _drop_pg_database(url)


def test_an_api_replica_killed_costs_the_agent_no_heartbeat(shared_db: str, tmp_path: Path) -> None:
    result = measure_failover(shared_db, tmp_path, interval_s=1.0)

    assert result["failed_over"], result
    # The next due beat arrives through the other replica: within one interval (+ jitter)
    # of the last one, so nothing was lost and the node never looked silent.
    assert result["gap_s"] < 2.0, result
    assert result["heartbeats_lost"] == 0, result
    assert result["beats_after_kill"] >= 4, result


async def test_a_5xx_moves_the_same_beat_to_the_next_url_which_is_kept(
    tmp_path: Path, stubs: list[Stub]
) -> None:
    """In-process, with scripted replicas: a 503 is retried at once on the next URL (no
    backoff, the beat is not lost), and the agent stays there once the first recovers."""
    ports = [free_port(), free_port()]
    sick = {"first": False}

    def first(path: str, body: dict[str, Any], auth: str) -> Reply:
        if path == "/nodes/register":
            return _register_ok()
        return (503, {"error": "db down"}) if sick["first"] else _beat()

    def second(path: str, body: dict[str, Any], auth: str) -> Reply:
        return _register_ok() if path == "/nodes/register" else _beat()

    stubs += [Stub(ports[0], first), Stub(ports[1], second)]
    agent, out = _agent(
        tmp_path, ports[0], server=f"http://127.0.0.1:{ports[0]},http://127.0.0.1:{ports[1]}"
    )
    task = asyncio.create_task(agent.run())
    try:
        await _until(lambda: stubs[0].paths().count("/nodes/heartbeat") >= 3)
        sick["first"] = True
        await _until(lambda: stubs[1].paths().count("/nodes/heartbeat") >= 3)
        sick["first"] = False
        on_first = stubs[0].paths().count("/nodes/heartbeat")
        await _until(lambda: stubs[1].paths().count("/nodes/heartbeat") >= 10)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert stubs[0].paths().count("/nodes/heartbeat") == on_first  # the working one is kept
    assert "control plane unavailable" not in out.getvalue()  # no backoff: failed over at once
    assert stubs[1].paths().count("/nodes/register") == 0  # the token is valid on every replica


def test_several_urls_repeated_or_comma_separated_in_order_without_duplicates() -> None:
    from pydantic import ValidationError

    from xplane.agent.config import AgentConfig

    base = {"service": "s", "region": "r", "token_file": "/t"}
    config = AgentConfig.model_validate(
        base | {"servers": ["http://a:1/", "http://b:2, https://c", "http://a:1"]}
    )
    assert config.servers == ["http://a:1", "http://b:2", "https://c"]
    assert config.server == "http://a:1"  # the state file names the first
    with pytest.raises(ValidationError, match="--server 'b:2'"):
        AgentConfig.model_validate(base | {"server": "http://a:1,b:2"})
