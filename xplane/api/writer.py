"""The heartbeat writer: coalesces concurrent heartbeats into one transaction.

Requests put their heartbeat on a bounded queue and await a future; one task
takes whatever has queued (waiting ``max_wait`` for more, up to ``max_size``),
writes the batch in one transaction on a worker thread and resolves every
future after the commit, so a 200 answer means the heartbeat is stored. While
a batch commits, the next one accumulates: under load, batches grow instead of
transactions multiplying.

At most once a second a batch's transaction also reports this replica's intake
(beats received and stored per second) to ``heartbeat_intake``: the self-health
gate reads it to tell beats that stopped arriving from beats no longer stored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from xplane.observability import metrics
from xplane.store.db import transaction, utcnow
from xplane.store.gate import report_intake
from xplane.store.heartbeats import Heartbeat, HeartbeatResult, apply_heartbeats

log = logging.getLogger(__name__)


class WriterBusy(Exception):
    """The queue is full: shed load (the agent retries on its next interval)."""


class StoreUnavailable(Exception):
    """The batch's transaction failed; nothing of it was stored."""


@dataclass
class WriterStats:
    batches: int = 0
    heartbeats: int = 0
    largest_batch: int = 0
    failed_batches: int = 0


_Item = tuple[Heartbeat, "asyncio.Future[HeartbeatResult | None]"]
INTAKE_REPORT_EVERY = 1.0  # seconds between two intake reports of one replica


class IntakeMeter:
    """Beats received and stored since the last report; thread-safe (the writes run
    on worker threads, submissions on the event loop)."""

    def __init__(self, replica: str | None = None) -> None:
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._received = self._stored = 0
        self._since = time.monotonic()

    def received(self, n: int = 1) -> None:
        with self._lock:
            self._received += n

    def stored(self, n: int) -> None:
        with self._lock:
            self._stored += n

    def take(self, every: float = INTAKE_REPORT_EVERY) -> tuple[float, float] | None:
        """(received/s, stored/s) since the last take, once ``every`` seconds; else None."""
        with self._lock:
            elapsed = time.monotonic() - self._since
            if elapsed < every:
                return None
            rates = self._received / elapsed, self._stored / elapsed
            self._received = self._stored = 0
            self._since += elapsed
            return rates


class HeartbeatWriter:
    def __init__(
        self,
        factory: sessionmaker[Session],
        timeout: timedelta,
        *,
        max_size: int = 256,
        max_wait: float = 0.002,
        queue_size: int = 10_000,
        concurrency: int = 1,
        synchronous_commit: bool = True,
    ) -> None:
        self.factory, self.timeout = factory, timeout
        # False: PostgreSQL answers a batch before its WAL reaches the disk (docs/deploy.md).
        self.synchronous_commit = synchronous_commit
        self.max_size, self.max_wait = max_size, max_wait
        self.stats = WriterStats()
        self.intake = IntakeMeter()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        # Batches in flight at once: 1 for SQLite (one writer anyway); a server
        # database commits several in parallel while the next one fills.
        self._slots = asyncio.Semaphore(concurrency)
        self._writes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="heartbeat-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def submit(self, beat: Heartbeat) -> HeartbeatResult | None:
        """Store one heartbeat; None when its token was replaced meanwhile."""
        future: asyncio.Future[HeartbeatResult | None] = asyncio.get_running_loop().create_future()
        self.intake.received()
        try:
            self._queue.put_nowait((beat, future))
        except asyncio.QueueFull:
            raise WriterBusy from None
        return await future

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            batch = [await self._queue.get()]
            self._drain_into(batch)
            if len(batch) < self.max_size and self.max_wait > 0:
                # One short sleep, not a wait per item: timers and tasks per heartbeat
                # would cost the event loop more than the write saves.
                await asyncio.sleep(self.max_wait)
                self._drain_into(batch)
            task = asyncio.create_task(self._write_and_release(batch))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write_and_release(self, batch: list[_Item]) -> None:
        try:
            await self._write(batch)
        finally:
            self._slots.release()
            for _ in batch:
                self._queue.task_done()

    def _drain_into(self, batch: list[_Item]) -> None:
        while len(batch) < self.max_size:
            try:
                batch.append(self._queue.get_nowait())
            except asyncio.QueueEmpty:
                return

    async def _write(self, batch: list[_Item]) -> None:
        beats = [beat for beat, _ in batch]
        try:
            results = await asyncio.to_thread(self._write_sync, beats)
        except Exception as exc:
            self.stats.failed_batches += 1
            log.error("heartbeat batch of %d not stored: %s", len(batch), exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(StoreUnavailable(str(exc)))
            return
        self.stats.batches += 1
        self.stats.heartbeats += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        _count(results)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # the client may have gone away
                future.set_result(result)

    def _write_sync(self, beats: list[Heartbeat]) -> list[HeartbeatResult | None]:
        for attempt in (1, 2):
            try:
                self.intake.stored(len(beats))  # counted in this report; taken back on failure
                try:
                    with transaction(self.factory) as session:
                        results = apply_heartbeats(
                            session,
                            beats,
                            self.timeout,
                            synchronous_commit=self.synchronous_commit,
                        )
                        rates = self.intake.take()
                        if rates is not None:
                            report_intake(session, self.intake.replica, utcnow(), *rates)
                except BaseException:
                    self.intake.stored(-len(beats))
                    raise
                return results
            except OperationalError:
                # SQLite "database is locked" / a PostgreSQL serialization hiccup: once more.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def _count(results: list[HeartbeatResult | None]) -> None:
    """Prometheus: one batch, and the heartbeats stored per service and region."""
    metrics.heartbeat_batch(len(results))
    per_region = Counter((r.service, r.region) for r in results if r is not None)
    for (service, region), n in per_region.items():
        metrics.heartbeats_ingested(service, region, n)
