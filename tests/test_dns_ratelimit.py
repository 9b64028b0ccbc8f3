"""Per-account rate limits (the bucket itself, on a simulated clock) and how a throttled
provider reaches Temporal: a retryable error whose next retry waits for Retry-After."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.gtm import ApplyDnsRequest, GtmActivities
from tests.fakes.cloudflare_api import CloudflareState, start
from xplane.config.models import CloudflareConfig
from xplane.dns.plan import DesiredEndpoint, DesiredRegion, DesiredService
from xplane.dns.ratelimit import (
    DnsThrottledError,
    RateLimit,
    RateLimiter,
    limit_for,
    parse_limit,
    parse_retry_after,
)
from xplane.store.db import Base, make_engine, make_sessionmaker


class SimClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def limiter(self, limit: RateLimit | None) -> RateLimiter:
        return RateLimiter(limit, name="test", clock=lambda: self.now, sleep=self.sleep)

    def call(self, bucket: RateLimiter, max_wait: float = 10) -> None:
        bucket.acquire(max_wait)
        self.calls.append(self.now)


def busiest(calls: list[float], window: float) -> int:
    return max(sum(1 for t in calls if s <= t < s + window) for s in calls)


def test_route53_default_keeps_every_second_at_five_calls() -> None:
    clock = SimClock()
    bucket = clock.limiter(limit_for("route53"))
    for _ in range(23):
        clock.call(bucket)
    assert busiest(clock.calls, 1.0) == 5
    assert clock.now == pytest.approx(4.0)  # 23 calls: bursts of 5 at t = 0, 1, 2, 3, 4


def test_cloudflare_default_allows_1200_per_5_minutes_then_says_when() -> None:
    clock = SimClock()
    bucket = clock.limiter(limit_for("cloudflare"))
    for i in range(1200):
        clock.now = i * 0.1  # a busy loop: 10 calls a second
        clock.call(bucket)
    clock.now = 150.0
    with pytest.raises(DnsThrottledError, match="rate limit 1200 per 300 s") as caught:
        bucket.acquire(max_wait=10)
    assert caught.value.retry_after == pytest.approx(150.0)  # the first token comes back
    clock.now = 299.95
    clock.call(bucket)  # waits 0.05 s in-process: within max_wait
    assert clock.now == pytest.approx(300.0)
    assert busiest(clock.calls, 300.0) == 1200


def test_a_pause_holds_every_call_of_the_account() -> None:
    clock = SimClock()
    bucket = clock.limiter(None)  # unlimited, but the provider said Retry-After 30
    bucket.pause(30)
    with pytest.raises(DnsThrottledError, match="Retry-After") as caught:
        bucket.acquire(max_wait=10)
    assert caught.value.retry_after == pytest.approx(30)
    clock.now = 25
    clock.call(bucket)
    assert clock.now == pytest.approx(30)


def test_limits_parse_and_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_limit("100/1s") == RateLimit(100, 1.0)
    assert parse_limit("1200/5m") == RateLimit(1200, 300.0)
    assert parse_limit("off") is None
    with pytest.raises(ValueError, match="expected <calls>/<duration>"):
        parse_limit("lots")
    assert limit_for("alidns") is None and limit_for("powerdns") is None
    monkeypatch.setenv("XPLANE_DNS_RATE_LIMIT_ALIDNS", "20/1s")
    monkeypatch.setenv("XPLANE_DNS_RATE_LIMIT_CLOUDFLARE", "off")
    assert limit_for("alidns") == RateLimit(20, 1.0)
    assert limit_for("cloudflare") is None


def test_retry_after_as_seconds_or_http_date() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7") == 7
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", lambda: now) == pytest.approx(30)
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


@pytest.fixture
def cloudflare() -> Iterator[tuple[str, CloudflareState]]:
    state = CloudflareState(token="t0k", zones={"z1": "svc.plus"})
    server = start(state)
    yield f"http://127.0.0.1:{server.port}/client/v4", state
    server.stop()


async def test_the_activity_retries_a_throttled_provider_after_retry_after(
    cloudflare: tuple[str, CloudflareState], tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xplane.store.tables  # noqa: F401

    base_url, state = cloudflare
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", "t0k")
    engine = make_engine(f"sqlite:///{tmp_path}/a.db")
    Base.metadata.create_all(engine)
    acts = GtmActivities(make_sessionmaker(engine))
    request = ApplyDnsRequest(
        service="api",
        provider_key="0:cloudflare",
        provider=CloudflareConfig(provider="cloudflare", base_url=base_url, zone="svc.plus"),
        desired=DesiredService(
            service="api",
            name="api.svc.plus",
            zone="svc.plus",
            regions=[
                DesiredRegion(
                    region="jp",
                    weight=100,
                    endpoints=[DesiredEndpoint(address="192.0.2.1", weight=100)],
                )
            ],
        ),
    )
    state.fail_next(429, retry_after=42)
    with pytest.raises(ApplicationError) as caught:
        ActivityEnvironment().run(acts.apply_dns, request)
    err = caught.value
    assert err.type == "DnsThrottledError" and not err.non_retryable
    assert err.next_retry_delay == timedelta(seconds=42)
    engine.dispose()
