"""Per-provider-account API rate limits, and what a provider's "slow down" answer means.

Every provider caps API calls per account: Cloudflare 1,200 per 5 minutes, Route53 5
requests a second (per AWS account, all callers together). A GTM loop per service, a
retry storm after a failover or several workers in one process must not exceed them,
so every API call (reads count too) first takes a token from the account's bucket.

The bucket is a token bucket whose tokens come back one window after they were spent
(a sliding window): no window of ``per`` seconds ever holds more than ``calls`` calls.
A classic bucket refilling at ``calls/per`` with a full burst would allow up to twice
that in one window, which is exactly what trips a provider's limiter.

A call that would wait longer than ``max_wait`` is not made: :class:`DnsThrottledError`
says when to retry, and the activity turns that into Temporal's ``next_retry_delay``.
A 429 / ``Throttling`` answer pauses the bucket for its ``Retry-After``, so no other call
of the process hammers the account meanwhile.

Defaults per provider kind, overridable (and set for AliDNS / PowerDNS, unlimited by
default) with ``XPLANE_DNS_RATE_LIMIT_<KIND>=<calls>/<duration>``, e.g.
``XPLANE_DNS_RATE_LIMIT_ALIDNS=100/1s`` or ``XPLANE_DNS_RATE_LIMIT_CLOUDFLARE=off``.
Buckets live per process (one per account key), shared by every provider instance.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from xplane.dns.plan import DnsRetryableError
from xplane.durations import parse_duration

DEFAULT_MAX_WAIT_S = 10.0  # wait in-process at most this long for a token, then retry later


class DnsThrottledError(DnsRetryableError):
    """The provider (or our own bucket) says: not now. ``retry_after`` in seconds, if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RateLimit:
    calls: int
    per_seconds: float

    def __str__(self) -> str:
        return f"{self.calls} per {self.per_seconds:g} s"


DEFAULT_LIMITS: dict[str, RateLimit | None] = {
    "cloudflare": RateLimit(1200, 300.0),
    "route53": RateLimit(5, 1.0),
    "alidns": None,
    "powerdns": None,
}


def parse_limit(text: str) -> RateLimit | None:
    """``"100/1s"`` -> RateLimit(100, 1.0); ``"off"`` / ``"none"`` -> None (unlimited)."""
    value = text.strip().lower()
    if value in ("", "off", "none", "unlimited"):
        return None
    calls, _, per = value.partition("/")
    try:
        limit = RateLimit(int(calls), parse_duration(per or "1s").total_seconds())
    except (TypeError, ValueError):
        raise ValueError(f"rate limit {text!r}: expected <calls>/<duration>, e.g. 100/1s") from None
    if limit.calls < 1 or limit.per_seconds <= 0:
        raise ValueError(f"rate limit {text!r}: calls and duration must be positive")
    return limit


def limit_for(kind: str) -> RateLimit | None:
    override = os.environ.get(f"XPLANE_DNS_RATE_LIMIT_{kind.upper()}")
    return parse_limit(override) if override is not None else DEFAULT_LIMITS.get(kind)


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date; None when absent/garbled."""
    if not value:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or (lambda: datetime.now(UTC)))()).total_seconds())


class RateLimiter:
    """One account's bucket. Thread-safe; ``clock``/``sleep`` are injectable for tests."""

    def __init__(
        self,
        limit: RateLimit | None,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limit = limit
        self.name = name
        self._clock, self._sleep = clock, sleep
        self._spent: deque[float] = deque()  # when each token of the window was (or will be) used
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, max_wait: float = DEFAULT_MAX_WAIT_S) -> float:
        """Take a token, waiting up to ``max_wait`` s; returns the wait. Else DnsThrottledError."""
        with self._lock:
            now = self._clock()
            start = max(now, self._paused_until)
            if self.limit is not None:
                window = self.limit.per_seconds
                while self._spent and self._spent[0] <= now - window:
                    self._spent.popleft()
                if len(self._spent) >= self.limit.calls:
                    # The token spent calls-ago comes back one window after its use.
                    start = max(start, self._spent[-self.limit.calls] + window)
            wait = start - now
            if wait > max_wait:
                reason = (
                    "paused by the provider's Retry-After"
                    if start == self._paused_until
                    else f"rate limit {self.limit}"
                )
                raise DnsThrottledError(
                    f"{self.name}: {reason}: next call possible in {wait:.1f} s", retry_after=wait
                )
            if self.limit is not None:
                self._spent.append(start)  # reserved: concurrent callers queue behind it
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """The provider answered 429/Throttling: no call before ``seconds`` from now."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))


_LIMITERS: dict[tuple[str, str], RateLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def account_key(*parts: str | None) -> str:
    """A stable key for an account from identifying parts (credentials are hashed)."""
    return hashlib.sha256("\0".join(p or "" for p in parts).encode()).hexdigest()[:16]


def limiter(kind: str, account: str) -> RateLimiter:
    """The process-wide bucket of one provider account (created with the kind's limit)."""
    with _REGISTRY_LOCK:
        found = _LIMITERS.get((kind, account))
        if found is None:
            found = _LIMITERS[(kind, account)] = RateLimiter(limit_for(kind), name=kind)
        return found


def throttled(
    bucket: RateLimiter, message: str, retry_after: float | None, default: float = 1.0
) -> DnsThrottledError:
    """The error for a provider's 429/Throttling answer; pauses the account's bucket."""
    bucket.pause(retry_after if retry_after is not None else default)
    suffix = f" (Retry-After {retry_after:g} s)" if retry_after is not None else ""
    return DnsThrottledError(message + suffix, retry_after=retry_after)
