"""The API's outbox dispatcher: stored deliveries become Temporal signals, eventually.

Runs as an asyncio task in every API replica (started by the app's lifespan). Each
pass leases the due pending rows (:func:`~xplane.store.webhook_deliveries.claim_due`: a
replica that dies mid-delivery loses its lease, and another one takes over), calls
``deliver(kind, payload)`` with a timeout, and records the outcome: delivered, or
retried with exponential backoff. Temporal being unreachable is retried for as long
as it takes; Temporal *refusing* (:class:`DeliveryRefused`, e.g. no such workflow)
ends as ``undeliverable`` after ``max_refusals`` tries, with an event and a log line.

Delivery is at least once: a replica that signals and dies before recording it
signals again after the lease. The receivers tolerate a repeated signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from temporalio.service import RPCError, RPCStatusCode

from xplane.durations import retry_delay
from xplane.observability import metrics
from xplane.store import webhook_deliveries as store
from xplane.store.db import transaction, utcnow
from xplane.store.events import record_event

log = logging.getLogger(__name__)

Deliver = Callable[[str, dict[str, Any]], Awaitable[None]]

# Temporal answered, and retrying the same call soon will not change its answer.
REFUSED_CODES = frozenset(
    {
        RPCStatusCode.NOT_FOUND,
        RPCStatusCode.INVALID_ARGUMENT,
        RPCStatusCode.FAILED_PRECONDITION,
        RPCStatusCode.ALREADY_EXISTS,
        RPCStatusCode.UNIMPLEMENTED,
    }
)


class DeliveryRefused(Exception):
    """The receiver said no (e.g. its workflow does not exist): counted toward giving up."""


def is_refusal(exc: BaseException) -> bool:
    if isinstance(exc, DeliveryRefused | ValueError):  # ValueError: a payload that won't parse
        return True
    return isinstance(exc, RPCError) and exc.status in REFUSED_CODES


@dataclass(frozen=True)
class DispatchSettings:
    poll: timedelta = timedelta(seconds=1)  # picks up other replicas' rows and expired leases
    lease: timedelta = timedelta(seconds=30)  # longer than one attempt can take
    attempt_timeout: timedelta = timedelta(seconds=15)  # a few Temporal calls of <= 5 s each
    retry_base: timedelta = timedelta(milliseconds=500)
    retry_max: timedelta = timedelta(seconds=10)
    max_refusals: int = 5
    batch: int = 32


def new_owner_id() -> str:
    """This process's lease owner name: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class DeliveryDispatcher:
    def __init__(
        self,
        factory: sessionmaker[Session],
        deliver: Deliver,
        kinds: Collection[str],
        settings: DispatchSettings = DispatchSettings(),
        owner: str | None = None,
    ) -> None:
        self._factory = factory
        self._deliver = deliver
        self._kinds = sorted(kinds)
        self.settings = settings
        self.owner = owner or new_owner_id()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Something was stored: look now rather than at the next poll."""
        self._wake.set()

    def lease(self) -> store.Lease:
        """A lease for a caller that tries a delivery itself before the dispatcher would."""
        return store.Lease(self.owner, utcnow() + self.settings.lease)

    async def run(self) -> None:
        while True:
            self._wake.clear()  # before the claim: a wake-up during this pass is kept
            try:
                due = await asyncio.to_thread(self._claim)
            except Exception as exc:
                log.warning("claiming deliveries failed: %s: %s", type(exc).__name__, exc)
                due = []
            if due:
                await asyncio.gather(*(self.attempt(d) for d in due))
            if len(due) >= self.settings.batch:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll.total_seconds())

    def _claim(self) -> list[store.Delivery]:
        now = utcnow()
        lease = store.Lease(self.owner, now + self.settings.lease)
        with transaction(self._factory) as session:
            return store.claim_due(session, self._kinds, lease, now, self.settings.batch)

    async def attempt(self, delivery: store.Delivery) -> str | None:
        """One try of a delivery this dispatcher holds the lease of; its new state."""
        timeout = self.settings.attempt_timeout.total_seconds()
        try:
            await asyncio.wait_for(self._deliver(delivery.kind, delivery.payload), timeout)
        except Exception as exc:
            return await self.failed(delivery, exc)
        await self.delivered(delivery)
        return store.DELIVERED

    async def delivered(self, delivery: store.Delivery) -> None:
        """Record a successful try (of a delivery this dispatcher holds the lease of)."""
        await asyncio.to_thread(self._delivered, delivery)
        _count(delivery.kind, "delivered")

    async def failed(self, delivery: store.Delivery, exc: Exception) -> str | None:
        """Record a failed try: retried later (the lease is released), or given up."""
        return await asyncio.to_thread(self._failed, delivery, exc)

    def _delivered(self, delivery: store.Delivery) -> None:
        with transaction(self._factory) as session:
            store.mark_delivered(session, delivery.delivery_id, self.owner, utcnow())

    def _failed(self, delivery: store.Delivery, exc: Exception) -> str | None:
        refused = is_refusal(exc)
        error = _describe(exc)
        attempts = delivery.attempts + 1
        retry_in = retry_delay(attempts, self.settings.retry_base, self.settings.retry_max)
        with transaction(self._factory) as session:
            state = store.mark_failed(
                session,
                delivery.delivery_id,
                self.owner,
                utcnow(),
                error,
                refused=refused,
                retry_in=retry_in,
                max_refusals=self.settings.max_refusals,
            )
            if state == store.UNDELIVERABLE:
                record_event(
                    session,
                    "webhook.undeliverable",
                    f"{delivery.kind} delivery {delivery.delivery_id} given up after "
                    f"{attempts} attempts: {error}",
                    source="webhook",
                    service=_text(delivery.payload.get("service")),
                    region=_text(delivery.payload.get("region")),
                    data={"delivery": delivery.delivery_id, "kind": delivery.kind},
                )
        if state is not None:
            _count(delivery.kind, "retried" if state == store.PENDING else state)
        if state == store.UNDELIVERABLE:
            log.error(
                "%s delivery %s is undeliverable after %d attempts: %s",
                delivery.kind,
                delivery.delivery_id,
                attempts,
                error,
            )
        elif state == store.PENDING:
            log.warning(
                "%s delivery %s failed (attempt %d), retrying in %.1fs: %s",
                delivery.kind,
                delivery.delivery_id,
                attempts,
                retry_in.total_seconds(),
                error,
            )
        return state


def _describe(exc: BaseException) -> str:
    """One line naming the error (and the RPC status: what decides refusal vs retry)."""
    name = type(exc).__name__
    if isinstance(exc, RPCError):
        name += f"({exc.status.name})"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text}" if text else name


def _count(kind: str, result: str) -> None:
    if kind in metrics.WEBHOOK_KINDS:  # registrations have their own metrics
        metrics.webhook_delivery(kind, result)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
