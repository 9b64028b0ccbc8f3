"""activities/heartbeating.py: beats within the heartbeat timeout while blocking work runs.

Through the SDK's ActivityEnvironment (the activity context, beats counted); the
real thing -- a killed worker given up on missed beats -- is tests/test_worker_failover.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from datetime import timedelta

from temporalio.testing import ActivityEnvironment

from activities.heartbeating import heartbeating

TIMEOUT = timedelta(seconds=0.6)
WORK = 2.0  # seconds of blocking work: more than three heartbeat timeouts


def _env(timeout: timedelta | None = TIMEOUT) -> tuple[ActivityEnvironment, list[float]]:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timeout)
    beats: list[float] = []
    env.on_heartbeat = lambda *_details: beats.append(time.monotonic())
    return env, beats


def _assert_never_silent_for_a_timeout(beats: list[float], began: float, ended: float) -> None:
    edges = [began, *beats, ended]
    gaps = [b - a for a, b in itertools.pairwise(edges)]
    assert max(gaps) < TIMEOUT.total_seconds(), gaps


def test_a_blocking_sync_activity_beats_from_a_thread_and_stops_with_the_block() -> None:
    env, beats = _env()

    def activity() -> int:
        with heartbeating():
            time.sleep(WORK)  # a git push: no chance to beat from inside
        return threading.active_count()

    began = time.monotonic()
    threads_after = env.run(activity)
    ended = time.monotonic()
    _assert_never_silent_for_a_timeout(beats, began, ended)
    count = len(beats)
    time.sleep(3 * TIMEOUT.total_seconds())
    assert len(beats) == count  # the beating thread ended with the block
    assert threads_after == threading.active_count()


async def test_an_async_activity_beats_from_a_task_on_its_loop() -> None:
    env, beats = _env()

    async def activity() -> None:
        async with heartbeating():
            await asyncio.sleep(WORK)

    began = time.monotonic()
    await env.run(activity)
    ended = time.monotonic()
    _assert_never_silent_for_a_timeout(beats, began, ended)
    count = len(beats)
    await asyncio.sleep(3 * TIMEOUT.total_seconds())
    assert len(beats) == count


def test_progress_details_go_with_each_beat() -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=TIMEOUT)
    seen: list[object] = []
    env.on_heartbeat = lambda *details: seen.append(details)
    done = [0]

    def activity() -> None:
        with heartbeating(details=lambda: done[0]):
            for _ in range(5):
                time.sleep(0.1)
                done[0] += 1

    env.run(activity)
    assert seen[0] == (0,) and max(d[0] for d in seen) >= 3  # type: ignore[index]


def test_nothing_beats_without_a_heartbeat_timeout_or_outside_an_activity() -> None:
    env, beats = _env(timeout=None)

    def activity() -> None:
        with heartbeating():
            time.sleep(0.2)

    env.run(activity)
    assert beats == []
    before = threading.active_count()
    with heartbeating():  # the CLI runs the same code with no activity around it
        assert threading.active_count() == before
