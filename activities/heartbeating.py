"""Heartbeat a long activity while its blocking work runs, so a dead worker is noticed fast.

An activity scheduled with a ``heartbeat_timeout`` (workflows/policies.py) must
report within it, or Temporal gives it up and retries it on another worker. A
``git push`` or a DNS apply is one blocking call that cannot report from inside,
so :func:`heartbeating` reports beside it, at a third of the timeout:

* ``with heartbeating():`` in a plain ``def`` activity (the worker's thread pool):
  a daemon thread beats with the activity's context;
* ``async with heartbeating():`` in an ``async def`` activity: a task on its loop.

A process that dies takes its beats with it: that is the point. Outside an
activity (the CLI calls the same code) or without a heartbeat timeout it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import activity

# Beats per timeout: one late beat (a busy thread pool, a slow encode) is no death.
BEATS_PER_TIMEOUT = 3
MIN_PERIOD = 0.05  # seconds; guards against a zero or absurd timeout

Details = Callable[[], Any] | None


def beat_period(heartbeat_timeout: timedelta | None) -> float | None:
    """Seconds between beats for an activity with this heartbeat timeout (None: none needed)."""
    if not heartbeat_timeout:
        return None
    return max(MIN_PERIOD, heartbeat_timeout.total_seconds() / BEATS_PER_TIMEOUT)


def _period() -> float | None:
    if not activity.in_activity():
        return None
    return beat_period(activity.info().heartbeat_timeout)


def _beat(details: Details) -> None:
    if details is None:
        activity.heartbeat()
    else:
        activity.heartbeat(details())


class Heartbeating:
    """Beats for one block: a thread (``with``) or a task (``async with``).

    ``details``: called at each beat; its value is the beat's details (progress a
    retry can read from ``activity.info().heartbeat_details``).
    """

    def __init__(self, details: Details = None) -> None:
        self._details = details
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ sync activities
    def __enter__(self) -> Heartbeating:
        period = _period()
        if period is None:
            return self
        context = contextvars.copy_context()  # the activity's context, for another thread
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None

        def send() -> None:
            if loop is None:  # a thread-pool activity: its heartbeat is thread-safe
                context.run(_beat, self._details)
            else:  # blocking code on an async activity's loop: beat on that loop
                loop.call_soon_threadsafe(_beat, self._details, context=context)

        self._thread = threading.Thread(
            target=self._run_thread, args=(send, period), name="heartbeat", daemon=True
        )
        send()  # at once: the attempt is alive before its first period has passed
        self._thread.start()
        return self

    def _run_thread(self, send: Callable[[], None], period: float) -> None:
        while not self._stop.wait(period):
            with contextlib.suppress(Exception):  # a finished activity refuses beats
                send()

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # ----------------------------------------------------------- async activities
    async def __aenter__(self) -> Heartbeating:
        period = _period()
        if period is not None:
            # No beat at once: the heartbeat timeout runs from the attempt's start anyway,
            # and short blocks (most scans) then send none. Measured: an immediate beat
            # made the gate's integration tests 50x slower on the time-skipping server.
            self._task = asyncio.create_task(self._run_task(period), name="heartbeat")
        return self

    async def _run_task(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            _beat(self._details)

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def heartbeating(details: Details = None) -> Heartbeating:
    """Heartbeat the current activity until the block exits (``with`` or ``async with``)."""
    return Heartbeating(details)
