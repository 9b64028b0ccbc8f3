"""Cloudflare provider: the official SDK against a loopback v4 API.

The server is tests/fakes/cloudflare_api.py (documented envelope, pagination, faults)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cloudflare import Cloudflare

from tests.fakes.cloudflare_api import CloudflareState, start
from tests.support.dns import desired_service
from xplane.config.models import CloudflareConfig
from xplane.dns.cloudflare import CloudflareDns, normalise
from xplane.dns.plan import (
    DesiredService,
    DnsAuthError,
    DnsOwnershipError,
    DnsRetryableError,
    DnsSafetyError,
    DnsValidationError,
    ownership_value,
)
from xplane.dns.ratelimit import DnsThrottledError

TOKEN, ZONE_ID, ZONE, NAME = (
    "cf-test-token",
    "023e105f4ecef8ad9ca31a8372d0c353",
    "svc.plus",
    "api.svc.plus",
)
MARKER = ownership_value("xplane", "api")
TWO_REGIONS = {
    "jp": (75.0, {"192.0.2.1": 50.0, "192.0.2.2": 25.0}),
    "us": (25.0, {"198.51.100.1": 25.0, "2001:db8::1": 0.0}),
}


Regions = dict[str, tuple[float, dict[str, float]]]  # region -> (weight, {address: weight})


def desired(regions: Regions, ttl: int = 60) -> DesiredService:
    return desired_service(regions, ttl)


@pytest.fixture
def state() -> CloudflareState:
    return CloudflareState(token=TOKEN, zones={ZONE_ID: ZONE, "ffff0000": "other.plus"})


@pytest.fixture
def base_url(state: CloudflareState) -> Iterator[str]:
    server = start(state)
    yield f"http://127.0.0.1:{server.port}/client/v4"
    server.stop()


def make(base_url: str, **cfg: Any) -> CloudflareDns:
    client = Cloudflare(api_token=TOKEN, base_url=base_url, max_retries=0)
    return CloudflareDns(CloudflareConfig(provider="cloudflare", **cfg), client=client, per_page=5)


@pytest.fixture
def dns_mode(base_url: str, monkeypatch: pytest.MonkeyPatch) -> CloudflareDns:
    # the production path: token from the environment, base_url from the config
    monkeypatch.setenv("CLOUDFLARE_API_TOKEN", TOKEN)
    provider = CloudflareDns(CloudflareConfig(provider="cloudflare", base_url=base_url), per_page=5)
    return provider


@pytest.fixture
def lb_mode(base_url: str) -> CloudflareDns:
    return make(base_url, mode="load_balancer", account_id="acc0001", zone_id=ZONE_ID)


def published(state: CloudflareState) -> dict[str, tuple[str, int, str | None]]:
    return {r["content"]: (r["type"], r["ttl"], r["comment"]) for r in state.at(NAME)}


def test_normalise_keeps_shares_in_0_to_1() -> None:
    assert normalise({"a": 75, "b": 25, "c": 0.1, "d": 0}) == {
        "a": 1.0,
        "b": 0.33,
        "c": 0.01,
        "d": 0.0,
    }
    assert normalise({"a": 0}) == {"a": 0.0}


# ---------------------------------------------------------------- mode: dns
def test_dns_mode_create_update_remove_and_idempotence(
    dns_mode: CloudflareDns, state: CloudflareState
) -> None:
    result = dns_mode.sync(desired(TWO_REGIONS))
    # the zone id was looked up by name; the node at weight 0 is not published
    assert published(state) == {
        "192.0.2.1": ("A", 60, MARKER),
        "192.0.2.2": ("A", 60, MARKER),
        "198.51.100.1": ("A", 60, MARKER),
    }
    assert result.write_calls == state.writes == 3
    # second sync: empty plan, zero writes
    writes = state.writes
    assert dns_mode.plan(desired(TWO_REGIONS)).empty
    assert not dns_mode.sync(desired(TWO_REGIONS)).applied and state.writes == writes
    # a TTL change updates in place; the v6 node becomes ready -> AAAA record
    grown = dict(TWO_REGIONS, us=(25.0, {"198.51.100.1": 10.0, "2001:db8::1": 15.0}))
    dns_mode.sync(desired(grown, ttl=120), force=True)
    assert published(state)["2001:db8::1"] == ("AAAA", 120, MARKER)
    assert {t for _, t, _ in published(state).values()} == {120}
    # region us at 0: its addresses are removed, jp's stay
    writes = state.writes
    dns_mode.sync(desired({"jp": TWO_REGIONS["jp"], "us": (0.0, grown["us"][1])}, ttl=120))
    assert set(published(state)) == {"192.0.2.1", "192.0.2.2"}
    assert state.writes == writes + 2  # two deletes, nothing else


def test_dns_mode_pagination_walks_every_page(
    dns_mode: CloudflareDns, state: CloudflareState
) -> None:
    many = {"jp": (1.0, {f"192.0.2.{i}": 1.0 for i in range(1, 24)})}
    dns_mode.sync(desired(many))
    state.add_record(ZONE_ID, NAME, "TXT", "v=spf1 -all")  # other types at the name are left alone
    state.calls.clear()
    assert dns_mode.plan(desired(many)).empty
    listing = [p for m, p in state.calls if m == "GET" and p.endswith("/dns_records")]
    assert len(listing) == 5  # 24 records, 5 per page: every page read, no extra empty page
    assert len(published(state)) == 24


def test_dns_mode_refuses_foreign_records_unless_takeover(
    dns_mode: CloudflareDns, state: CloudflareState
) -> None:
    foreign = state.add_record(ZONE_ID, NAME, "A", "203.0.113.9", comment="made by hand")
    with pytest.raises(DnsOwnershipError, match=r"203\.0\.113\.9.*takeover"):
        dns_mode.plan(desired(TWO_REGIONS))
    assert state.writes == 0
    dns_mode.sync(desired(TWO_REGIONS), takeover=True)
    assert foreign not in state.records
    assert {c for _, _, c in published(state).values()} == {MARKER}


def test_dns_mode_takeover_removes_a_cname_first(
    dns_mode: CloudflareDns, state: CloudflareState
) -> None:
    state.add_record(ZONE_ID, NAME, "CNAME", "old.example.net")
    with pytest.raises(DnsOwnershipError, match=re.escape("CNAME old.example.net")):
        dns_mode.plan(desired(TWO_REGIONS))
    dns_mode.sync(desired(TWO_REGIONS), takeover=True)  # the fake refuses A next to CNAME
    assert {t for t, _, _ in published(state).values()} == {"A"}


def test_dns_mode_safety_threshold(dns_mode: CloudflareDns, state: CloudflareState) -> None:
    four = {r: (1.0, {f"192.0.2.{i}": 1.0}) for i, r in enumerate(["jp", "us", "eu", "sg"], 1)}
    dns_mode.sync(desired(four))
    three_gone = {"jp": four["jp"], "us": (0.0, {}), "eu": (0.0, {}), "sg": (0.0, {})}
    writes = state.writes
    with pytest.raises(DnsSafetyError, match="3 of 4"):
        dns_mode.sync(desired(three_gone))
    with pytest.raises(DnsSafetyError, match="removes every address"):
        dns_mode.sync(desired({"jp": (0.0, {})}))
    assert state.writes == writes
    dns_mode.sync(desired(three_gone), force=True)
    assert set(published(state)) == {"192.0.2.1"}


# -------------------------------------------------------------------- errors
def test_rate_limit_is_retryable_and_the_retry_succeeds(
    dns_mode: CloudflareDns, state: CloudflareState
) -> None:
    state.fail_next(429)
    with pytest.raises(DnsRetryableError, match="HTTP 429") as caught:
        dns_mode.sync(desired(TWO_REGIONS))
    assert caught.value.retryable and state.writes == 0
    state.fail_next(503, "upstream down")
    with pytest.raises(DnsRetryableError, match="HTTP 503"):
        dns_mode.sync(desired(TWO_REGIONS))
    dns_mode.sync(desired(TWO_REGIONS))
    assert len(published(state)) == 3


def test_success_false_is_an_error_not_an_empty_answer(
    dns_mode: CloudflareDns, state: CloudflareState
) -> None:
    dns_mode.sync(desired(TWO_REGIONS))
    writes = state.writes
    # the SDK would parse this listing as "no records" and XPlane would re-create them all
    state.success_false_next("backend unavailable")
    with pytest.raises(DnsRetryableError, match=r"success=false: \[1000\] backend unavailable"):
        dns_mode.sync(desired(TWO_REGIONS))
    assert state.writes == writes
    # and on a write: a create whose answer is success:false is not counted as done
    grown = dict(TWO_REGIONS, jp=(75.0, {"192.0.2.1": 50.0, "192.0.2.2": 25.0, "192.0.2.3": 1.0}))
    plan = dns_mode.plan(desired(grown))
    state.success_false_next("could not save")
    with pytest.raises(DnsRetryableError, match=re.escape("create api.svc.plus A 192.0.2.3")):
        dns_mode.apply(plan)
    assert "192.0.2.3" not in published(state)
    dns_mode.sync(desired(grown))  # the retry
    assert "192.0.2.3" in published(state)


def test_bad_token_is_an_auth_error_not_retried(base_url: str, state: CloudflareState) -> None:
    client = Cloudflare(api_token="wrong", base_url=base_url, max_retries=0)
    provider = CloudflareDns(
        CloudflareConfig(provider="cloudflare", zone_id=ZONE_ID), client=client
    )
    with pytest.raises(DnsAuthError, match="HTTP 401") as caught:
        provider.plan(desired(TWO_REGIONS))
    assert not caught.value.retryable


def test_token_file_is_read_and_missing_token_named(
    base_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, state: CloudflareState
) -> None:
    token_file = tmp_path / "cf-token"
    token_file.write_text(TOKEN + "\n")
    provider = CloudflareDns(
        CloudflareConfig(provider="cloudflare", api_token_file=str(token_file), base_url=base_url)
    )
    provider.sync(desired(TWO_REGIONS))
    assert len(published(state)) == 3
    monkeypatch.delenv("CLOUDFLARE_API_TOKEN", raising=False)
    with pytest.raises(DnsAuthError, match="CLOUDFLARE_API_TOKEN"):
        CloudflareDns(CloudflareConfig(provider="cloudflare", base_url=base_url))


def test_validation_error_carries_cloudflares_message(dns_mode: CloudflareDns) -> None:
    with pytest.raises(DnsValidationError, match=r"HTTP 400 \[9021\] Invalid TTL") as caught:
        dns_mode.sync(desired(TWO_REGIONS, ttl=5))
    assert not caught.value.retryable


def test_unknown_zone_is_a_validation_error(base_url: str) -> None:
    provider = make(base_url)
    unknown = desired(TWO_REGIONS).model_copy(
        update={"name": "api.nowhere.plus", "zone": "nowhere.plus"}
    )
    with pytest.raises(DnsValidationError, match=re.escape("zone nowhere.plus not found")):
        provider.plan(unknown)


# ------------------------------------------------------- mode: load_balancer
def pools(state: CloudflareState) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in state.pools.values()}


def the_lb(state: CloudflareState) -> dict[str, Any]:
    (lb,) = state.load_balancers.values()
    return lb


def test_lb_mode_pools_weights_and_idempotence(
    lb_mode: CloudflareDns, state: CloudflareState
) -> None:
    result = lb_mode.sync(desired(TWO_REGIONS))
    assert result.write_calls == state.writes == 3  # two pools, one load balancer
    jp, us = pools(state)["api-jp"], pools(state)["api-us"]
    assert [(o["address"], o["weight"]) for o in jp["origins"]] == [
        ("192.0.2.1", 1.0),
        ("192.0.2.2", 0.5),
    ]
    assert [o["address"] for o in us["origins"]] == ["198.51.100.1"]  # the v6 node is not ready
    assert jp["description"] == us["description"] == MARKER
    lb = the_lb(state)
    assert lb["name"] == NAME and lb["steering_policy"] == "random"
    assert sorted(lb["default_pools"]) == sorted([jp["id"], us["id"]])
    assert lb["random_steering"]["pool_weights"] == {jp["id"]: 1.0, us["id"]: 0.33}
    assert lb["fallback_pool"] == jp["id"]
    # idempotent
    writes = state.writes
    assert lb_mode.plan(desired(TWO_REGIONS)).empty
    lb_mode.sync(desired(TWO_REGIONS))
    assert state.writes == writes
    # a weight shift is one load balancer update, not counted by the safety threshold
    shifted = dict(TWO_REGIONS, jp=(25.0, TWO_REGIONS["jp"][1]), us=(75.0, TWO_REGIONS["us"][1]))
    lb_mode.sync(desired(shifted))
    assert state.writes == writes + 1
    assert the_lb(state)["random_steering"]["pool_weights"] == {jp["id"]: 0.33, us["id"]: 1.0}


def test_lb_mode_region_at_zero_is_disabled_and_left_out(
    lb_mode: CloudflareDns, state: CloudflareState
) -> None:
    lb_mode.sync(desired(TWO_REGIONS))
    us_id = pools(state)["api-us"]["id"]
    lb_mode.sync(desired({"jp": TWO_REGIONS["jp"], "us": (0.0, TWO_REGIONS["us"][1])}))
    assert pools(state)["api-us"]["enabled"] is False
    assert pools(state)["api-us"]["origins"][0]["address"] == "198.51.100.1"  # kept for later
    lb = the_lb(state)
    assert us_id not in lb["default_pools"] and us_id not in lb["random_steering"]["pool_weights"]
    assert lb["default_pools"] == [pools(state)["api-jp"]["id"]]
    # a region removed from the desired state entirely is handled the same way
    lb_mode.sync(desired({"jp": TWO_REGIONS["jp"]}))
    assert lb_mode.plan(desired({"jp": TWO_REGIONS["jp"]})).empty
    # every region at 0 needs force, and the LB keeps its pools (never empty)
    with pytest.raises(DnsSafetyError, match="removes every address"):
        lb_mode.sync(desired({"jp": (0.0, TWO_REGIONS["jp"][1])}))
    lb_mode.sync(desired({"jp": (0.0, TWO_REGIONS["jp"][1])}), force=True)
    assert len(the_lb(state)["default_pools"]) == 2
    assert not any(p["enabled"] for p in state.pools.values())


def test_lb_mode_safety_threshold(lb_mode: CloudflareDns, state: CloudflareState) -> None:
    four: Regions = {r: (1.0, {f"192.0.2.{i}": 1.0}) for i, r in enumerate("abcd", 1)}
    lb_mode.sync(desired(four))
    three_off = {r: (0.0 if r != "a" else 1.0, nodes) for r, (_, nodes) in four.items()}
    writes = state.writes
    with pytest.raises(DnsSafetyError, match="removes 3 of 4 published addresses"):
        lb_mode.sync(desired(three_off))
    assert state.writes == writes
    lb_mode.sync(desired(three_off), force=True)
    assert [p["enabled"] for _, p in sorted(pools(state).items())] == [True, False, False, False]


def test_lb_mode_refuses_a_foreign_load_balancer(
    lb_mode: CloudflareDns, state: CloudflareState
) -> None:
    state.pools["p0"] = {
        "id": "p0",
        "name": "theirs",
        "description": "",
        "enabled": True,
        "minimum_origins": 1,
        "origins": [{"name": "x", "address": "203.0.113.1", "weight": 1.0, "enabled": True}],
    }
    state.load_balancers["lb0"] = {
        "id": "lb0",
        "zone_id": ZONE_ID,
        "name": NAME,
        "description": "hand made",
        "enabled": True,
        "ttl": 30,
        "proxied": False,
        "steering_policy": "off",
        "default_pools": ["p0"],
        "fallback_pool": "p0",
        "random_steering": None,
    }
    with pytest.raises(DnsOwnershipError, match=f"load balancer {NAME}"):
        lb_mode.plan(desired(TWO_REGIONS))
    assert state.writes == 0
    lb_mode.sync(desired(TWO_REGIONS), takeover=True)
    lb = the_lb(state)
    assert lb["id"] == "lb0" and lb["description"] == MARKER and "p0" not in lb["default_pools"]


def test_lb_mode_needs_an_account(base_url: str) -> None:
    provider = make(base_url, mode="load_balancer", zone_id=ZONE_ID)
    with pytest.raises(DnsValidationError, match="account_id"):
        provider.plan(desired(TWO_REGIONS))


def test_429_retry_after_is_honoured_and_pauses_the_account(
    dns_mode: CloudflareDns, state: CloudflareState
) -> None:
    """Cloudflare's 429 carries Retry-After: the error says when, and no call of this
    account reaches Cloudflare before then (the bucket is paused, not hammered)."""
    state.fail_next(429, retry_after=30)
    with pytest.raises(DnsThrottledError, match="Retry-After 30") as caught:
        dns_mode.sync(desired(TWO_REGIONS))
    assert caught.value.retry_after == 30 and caught.value.retryable
    calls = len(state.calls)
    with pytest.raises(DnsThrottledError) as again:
        dns_mode.sync(desired(TWO_REGIONS))
    assert len(state.calls) == calls  # refused here, not sent
    assert again.value.retry_after is not None and 28 < again.value.retry_after <= 30


def test_a_short_retry_after_is_waited_out_in_process(
    dns_mode: CloudflareDns, state: CloudflareState
) -> None:
    state.fail_next(429, retry_after=1)
    with pytest.raises(DnsThrottledError):
        dns_mode.sync(desired(TWO_REGIONS))
    started = time.monotonic()
    dns_mode.sync(desired(TWO_REGIONS))  # waits for the pause, then goes through
    assert time.monotonic() - started >= 0.9
    assert len(published(state)) == 3
