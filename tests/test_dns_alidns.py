"""AliDNS provider: the real client (signing + HTTP) against a loopback AliDNS that verifies
every signature with the official SDK's signer (tests/fakes/alidns_api.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from unittest import mock
from urllib.parse import parse_qsl, urlsplit

import pytest
from aliyunsdkalidns.request.v20150109.DescribeDomainRecordsRequest import (
    DescribeDomainRecordsRequest,
)
from aliyunsdkalidns.request.v20150109.UpdateDNSSLBWeightRequest import UpdateDNSSLBWeightRequest
from aliyunsdkcore.utils import parameter_helper

from tests.fakes.alidns_api import AliDnsState, start
from tests.support.dns import desired_service
from xplane.config.models import AliDnsConfig
from xplane.dns.alidns import AliDns, AliDnsClient, classify_error
from xplane.dns.alidns_signing import signed_params, string_to_sign
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

KEY_ID, SECRET = "LTAI-test-key", "s3cr3t/+= ~*"
ZONE, NAME, RR = "svc.plus", "api.svc.plus", "api"
MARKER = ownership_value("xplane", "api")


def desired(**regions: tuple[float, dict[str, float]]) -> DesiredService:
    """desired(jp=(60, {"192.0.2.1": 30, ...}), ...)"""
    return desired_service(regions, ttl=60)


@pytest.fixture
def state() -> AliDnsState:
    return AliDnsState(keys={KEY_ID: SECRET}, domains={ZONE})


@pytest.fixture
def endpoint(state: AliDnsState) -> Iterator[str]:
    server = start(state)
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture
def provider(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AliDns]:
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", SECRET)
    dns = AliDns(AliDnsConfig(provider="alidns", endpoint=endpoint, zone=ZONE), page_size=20)
    yield dns
    dns._client.close()


def live(state: AliDnsState, rtype: str = "A") -> dict[str, tuple[str, int]]:
    """address -> (status, weight) of the records at the RR."""
    return {r["Value"]: (r["Status"], r["Weight"]) for r in state.at(RR, rtype)}


TWO_REGIONS = {
    "jp": (75.0, {"192.0.2.1": 50.0, "192.0.2.2": 25.0}),
    "us": (25.0, {"198.51.100.1": 25.0}),
}


# -------------------------------------------------------------------- signing
@pytest.mark.parametrize(
    ("request_cls", "params"),
    [
        (DescribeDomainRecordsRequest, {"DomainName": ZONE, "RRKeyWord": "api", "PageSize": "20"}),
        (UpdateDNSSLBWeightRequest, {"RecordId": "1234", "Weight": "37", "Lang": "en zh*~"}),
    ],
)
def test_signature_is_byte_identical_to_the_official_sdk(
    request_cls: type, params: dict[str, str]
) -> None:
    request = request_cls()
    request.set_accept_format("JSON")
    for key, value in params.items():
        getattr(request, f"set_{key}")(value)
    fixed_nonce, fixed_time = "5c1e4f0e-nonce *~/", "2024-05-01T12:00:00Z"
    with (
        mock.patch.object(parameter_helper, "get_uuid", return_value=fixed_nonce),
        mock.patch.object(parameter_helper, "get_iso_8061_date", return_value=fixed_time),
    ):
        url = request.get_url("cn-hangzhou", KEY_ID, SECRET)
    sdk = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    ours = signed_params(
        request.get_action_name(),
        {**params, "RegionId": "cn-hangzhou"},
        KEY_ID,
        SECRET,
        method=request.get_method(),
        nonce=fixed_nonce,
        timestamp=datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC),
    )
    assert "SignatureType" in sdk and sdk["SignatureType"] == ""
    assert string_to_sign(
        request.get_method(), {k: v for k, v in ours.items() if k != "Signature"}
    ) == (request.string_to_sign)
    assert ours == sdk  # every parameter, Signature included, byte for byte


def test_error_codes_are_classified() -> None:
    assert isinstance(classify_error("X", 400, {"Code": "Throttling.User"}), DnsRetryableError)
    assert isinstance(classify_error("X", 503, {"Code": "ServiceUnavailable"}), DnsRetryableError)
    assert isinstance(classify_error("X", 502, {}), DnsRetryableError)
    auth = classify_error("X", 404, {"Code": "InvalidAccessKeyId.NotFound"})
    assert isinstance(auth, DnsAuthError) and not auth.retryable
    assert isinstance(classify_error("X", 400, {"Code": "SignatureDoesNotMatch"}), DnsAuthError)
    assert isinstance(classify_error("X", 403, {"Code": "Forbidden.RAM"}), DnsAuthError)
    invalid = classify_error("AddDomainRecord", 400, {"Code": "InvalidValue", "Message": "bad"})
    assert isinstance(invalid, DnsValidationError)
    assert "AddDomainRecord: InvalidValue: bad" in str(invalid)


# ------------------------------------------------------------------ lifecycle
def test_create_publishes_weighted_records_with_marker(
    provider: AliDns, state: AliDnsState
) -> None:
    result = provider.sync(desired(**TWO_REGIONS))
    assert result.applied
    assert live(state) == {
        "192.0.2.1": ("ENABLE", 100),
        "192.0.2.2": ("ENABLE", 50),
        "198.51.100.1": ("ENABLE", 50),
    }
    assert [r["Value"] for r in state.at(RR, "TXT")] == [MARKER]
    assert all(r["TTL"] == 60 for r in state.at(RR, "A"))
    assert state.slb[(NAME, "A", "default")] is True
    # SLB opened before any weight was written (the fake refuses weights otherwise)
    calls = state.calls
    assert calls.index("SetDNSSLBStatus") < calls.index("UpdateDNSSLBWeight")
    assert result.write_calls == state.writes == 1 + 3 + 1 + 3


def test_second_sync_plans_nothing_and_writes_nothing(provider: AliDns, state: AliDnsState) -> None:
    provider.sync(desired(**TWO_REGIONS))
    writes = state.writes
    plan = provider.plan(desired(**TWO_REGIONS))
    assert plan.empty, plan.changes
    result = provider.apply(plan)
    assert not result.applied and result.write_calls == 0
    assert state.writes == writes


def test_weight_change_writes_only_weights(provider: AliDns, state: AliDnsState) -> None:
    provider.sync(desired(**TWO_REGIONS))
    writes = state.writes
    state.calls.clear()
    changed = {"jp": (50.0, {"192.0.2.1": 25.0, "192.0.2.2": 25.0}), "us": TWO_REGIONS["us"]}
    changed["us"] = (50.0, {"198.51.100.1": 50.0})
    provider.sync(desired(**changed))
    assert live(state) == {
        "192.0.2.1": ("ENABLE", 50),
        "192.0.2.2": ("ENABLE", 50),
        "198.51.100.1": ("ENABLE", 100),
    }
    writing = [c for c in state.calls if not c.startswith("Describe")]
    assert writing == ["UpdateDNSSLBWeight"] * 2  # 192.0.2.2 stays at 50: not rewritten
    assert state.writes == writes + 2


def test_region_at_zero_is_disabled_and_a_gone_address_deleted(
    provider: AliDns, state: AliDnsState
) -> None:
    provider.sync(desired(**TWO_REGIONS))
    us_off = {"jp": TWO_REGIONS["jp"], "us": (0.0, {"198.51.100.1": 0.0})}
    provider.sync(desired(**us_off))
    # us at 0: its record is kept but disabled (jp's weights are unchanged)
    assert live(state) == {
        "192.0.2.1": ("ENABLE", 100),
        "192.0.2.2": ("ENABLE", 50),
        "198.51.100.1": ("DISABLE", 50),
    }
    jp_shrunk = {"jp": (75.0, {"192.0.2.1": 75.0}), "us": us_off["us"]}
    provider.sync(desired(**jp_shrunk))  # 192.0.2.2 left the desired state: deleted
    assert live(state) == {"192.0.2.1": ("ENABLE", 100), "198.51.100.1": ("DISABLE", 50)}
    # bringing us back is a status flip plus a weight, no new record
    back = {"jp": (50.0, {"192.0.2.1": 50.0}), "us": (50.0, {"198.51.100.1": 50.0})}
    creates = state.calls.count("AddDomainRecord")
    provider.sync(desired(**back))
    assert live(state) == {"192.0.2.1": ("ENABLE", 100), "198.51.100.1": ("ENABLE", 100)}
    assert state.calls.count("AddDomainRecord") == creates
    assert provider.plan(desired(**back)).empty


def test_ipv6_addresses_become_aaaa_records(provider: AliDns, state: AliDnsState) -> None:
    provider.sync(desired(jp=(1.0, {"192.0.2.1": 1.0, "2001:db8::1": 1.0, "2001:db8::2": 3.0})))
    assert live(state, "A") == {"192.0.2.1": ("ENABLE", 1)}  # a single A: no weighting needed
    assert live(state, "AAAA") == {"2001:db8::1": ("ENABLE", 33), "2001:db8::2": ("ENABLE", 100)}


# --------------------------------------------------------------------- errors
def test_throttling_is_retryable_and_a_retry_succeeds(provider: AliDns, state: AliDnsState) -> None:
    state.throttle_next = 1
    with pytest.raises(DnsRetryableError, match=re.escape("Throttling.User")) as caught:
        provider.sync(desired(**TWO_REGIONS))
    assert caught.value.retryable
    assert state.writes == 0
    provider.sync(desired(**TWO_REGIONS))  # what the activity's retry does
    assert len(live(state)) == 3


def test_wrong_secret_is_an_auth_error_not_retried(endpoint: str, state: AliDnsState) -> None:
    client = AliDnsClient(endpoint, KEY_ID, "not-the-secret")
    bad = AliDns(AliDnsConfig(provider="alidns", endpoint=endpoint, zone=ZONE), client=client)
    with pytest.raises(DnsAuthError, match="SignatureDoesNotMatch") as caught:
        bad.plan(desired(**TWO_REGIONS))
    assert not caught.value.retryable
    unknown = AliDnsClient(endpoint, "LTAI-unknown", SECRET)
    with pytest.raises(DnsAuthError, match=re.escape("InvalidAccessKeyId.NotFound")):
        unknown.call("DescribeDomainRecords", DomainName=ZONE)
    client.close()
    unknown.close()


def test_missing_credentials_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALIBABA_CLOUD_ACCESS_KEY_ID", raising=False)
    with pytest.raises(DnsAuthError, match="ALIBABA_CLOUD_ACCESS_KEY_ID"):
        AliDns(AliDnsConfig(provider="alidns"))


def test_unknown_domain_is_a_validation_error(endpoint: str) -> None:
    client = AliDnsClient(endpoint, KEY_ID, SECRET)
    dns = AliDns(AliDnsConfig(provider="alidns", endpoint=endpoint), client=client)
    other = desired(**TWO_REGIONS).model_copy(
        update={"name": "api.other.plus", "zone": "other.plus"}
    )
    with pytest.raises(DnsValidationError, match=re.escape("InvalidDomainName.NoExist")):
        dns.plan(other)
    client.close()


# ------------------------------------------------------------------ pagination
def test_pagination_reads_every_page_and_keeps_only_the_exact_rr(
    provider: AliDns, state: AliDnsState
) -> None:
    # RRKeyWord matches substrings: 90 neighbours like "api-7" / "myapi" come back too
    for i in range(45):
        state.add(ZONE, f"api-{i}", "A", f"203.0.113.{i + 1}")
        state.add(ZONE, f"my{RR}", "A", f"198.18.0.{i + 1}")
    provider.sync(desired(**TWO_REGIONS))
    state.add(ZONE, RR, "TXT", "unrelated, after ours")
    for i in range(30):  # owned records beyond the first pages too
        state.add(ZONE, f"api-late-{i}", "A", f"198.18.1.{i + 1}")
    state.calls.clear()
    plan = provider.plan(desired(**TWO_REGIONS))
    assert plan.empty, plan.changes
    assert state.calls.count("DescribeDomainRecords") == 7  # 124 rows / 20 per page
    assert len(state.at("api-3")) == 1 and len(state.at("myapi")) == 45  # untouched


# ------------------------------------------------------- ownership and safety
def test_foreign_records_are_refused_unless_taken_over(
    provider: AliDns, state: AliDnsState
) -> None:
    foreign = state.add(ZONE, RR, "A", "192.0.2.99")
    other_line = state.add(ZONE, RR, "A", "192.0.2.77", Line="oversea")
    with pytest.raises(DnsOwnershipError, match=r"192\.0\.2\.99.*takeover"):
        provider.plan(desired(**TWO_REGIONS))
    assert state.writes == 0
    provider.sync(desired(**TWO_REGIONS), takeover=True)
    assert foreign not in state.records  # adopted, then removed as not desired
    assert set(live(state)) == {"192.0.2.1", "192.0.2.2", "198.51.100.1", "192.0.2.77"}
    assert state.records[other_line]["Line"] == "oversea"  # another line is not ours


def test_takeover_replaces_a_cname(provider: AliDns, state: AliDnsState) -> None:
    cname = state.add(ZONE, RR, "CNAME", "old.example.net")
    with pytest.raises(DnsOwnershipError, match=re.escape("CNAME old.example.net")):
        provider.plan(desired(**TWO_REGIONS))
    provider.sync(desired(**TWO_REGIONS), takeover=True)  # the fake refuses A next to a CNAME
    assert cname not in state.records and len(live(state)) == 3


def test_line_is_used_for_every_record(endpoint: str, state: AliDnsState) -> None:
    client = AliDnsClient(endpoint, KEY_ID, SECRET)
    cfg = AliDnsConfig(provider="alidns", endpoint=endpoint, zone=ZONE, line="oversea")
    AliDns(cfg, client=client).sync(desired(**TWO_REGIONS))
    assert {r["Line"] for r in state.records.values()} == {"oversea"}
    assert state.slb[(NAME, "A", "oversea")] is True
    client.close()


def test_large_change_and_emptying_need_force(provider: AliDns, state: AliDnsState) -> None:
    four = {
        "jp": (1.0, {"192.0.2.1": 1.0}),
        "us": (1.0, {"192.0.2.2": 1.0}),
        "eu": (1.0, {"192.0.2.3": 1.0}),
        "sg": (1.0, {"192.0.2.4": 1.0}),
    }
    provider.sync(desired(**four))
    # every weight changing is routine (not counted by the threshold) ...
    provider.sync(
        desired(
            **{k: (1.0, {a: float(i + 1) for a in v[1]}) for i, (k, v) in enumerate(four.items())}
        )
    )
    # ... but replacing 3 of the 4 addresses is 3 deletes of 4 owned records: 75% > 50%
    moved = {
        k: (1.0, {a.replace("192.0.2.", "192.0.2.1"): 1.0 for a in v[1]}) for k, v in four.items()
    }
    moved["jp"] = four["jp"]
    writes = state.writes
    with pytest.raises(DnsSafetyError, match="3 of 4"):
        provider.sync(desired(**moved))
    assert state.writes == writes
    gone = {k: (0.0, v[1]) for k, v in four.items()}
    with pytest.raises(DnsSafetyError, match="removes every address"):
        provider.sync(desired(**gone), force=False)
    provider.sync(desired(**gone), force=True)
    assert {s for s, _ in live(state).values()} == {"DISABLE"}


@pytest.mark.parametrize("status", [400, 429])
def test_throttling_says_when_to_retry(provider: AliDns, state: AliDnsState, status: int) -> None:
    state.throttle_next, state.throttle_status, state.throttle_retry_after = 1, status, "20"
    with pytest.raises(DnsThrottledError, match=re.escape("Throttling.User")) as caught:
        provider.sync(desired(**TWO_REGIONS))
    assert caught.value.retry_after == 20 and caught.value.retryable
    calls = len(state.calls)
    with pytest.raises(DnsThrottledError):  # the account is paused: nothing is sent
        provider.sync(desired(**TWO_REGIONS))
    assert len(state.calls) == calls and state.writes == 0
