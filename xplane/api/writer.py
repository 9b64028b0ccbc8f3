"""The heartbeat writer: coalesces concurrent heartbeats into one transaction.

Requests put their heartbeat on a bounded queue and await a future; one task
takes whatever has queued (waiting ``max_wait`` for more, up to ``max_size``),
writes the batch in one transaction on a worker thread and resolves every
future after the commit, so a 200 answer means the heartbeat is stored. While
a batch commits, the next one accumulates: under load, batches grow instead of
transactions multiplying.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from xplane.observability import metrics
from xplane.store.db import transaction
from xplane.store.nodes import Heartbeat, HeartbeatResult, apply_heartbeats

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


class HeartbeatWriter:
    def __init__(
        self,
        factory: sessionmaker[Session],
        timeout: timedelta,
        *,
        max_size: int = 256,
        max_wait: float = 0.002,
        queue_size: int = 10_000,
    ) -> None:
        self.factory, self.timeout = factory, timeout
        self.max_size, self.max_wait = max_size, max_wait
        self.stats = WriterStats()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None

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
        try:
            self._queue.put_nowait((beat, future))
        except asyncio.QueueFull:
            raise WriterBusy from None
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while len(batch) < self.max_size:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

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
                with transaction(self.factory) as session:
                    return apply_heartbeats(session, beats, self.timeout)
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
