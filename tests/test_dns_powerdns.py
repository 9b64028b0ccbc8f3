"""PowerDNS provider against a real pdns_server (4.7, SQLite, LUA records) on loopback."""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from tests.support.tools import needs_tool
from xplane.config.models import PowerDnsConfig
from xplane.dns.pdns_server import PdnsServer
from xplane.dns.plan import (
    DesiredEndpoint,
    DesiredRegion,
    DesiredService,
    DnsAuthError,
    DnsOwnershipError,
    DnsRetryableError,
    DnsSafetyError,
    DnsValidationError,
)
from xplane.dns.powerdns import PowerDnsProvider, lua_content, parse_lua, validate_lua
from xplane.netutil import free_port

pytestmark = needs_tool("pdns_server")

ZONE = "svc.plus"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def pdns() -> Iterator[PdnsServer]:
    with PdnsServer() as server:
        server.ensure_zone(ZONE)
        yield server


class Recorder:
    """An httpx client whose requests are counted by method (to prove 'no write')."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.client = httpx.Client(
            timeout=5.0, event_hooks={"request": [lambda r: self.methods.append(r.method)]}
        )

    def count(self, method: str) -> int:
        return self.methods.count(method)


def provider(
    pdns: PdnsServer, client: httpx.Client | None = None, **cfg: object
) -> PowerDnsProvider:
    config = PowerDnsConfig.model_validate({"provider": "powerdns", "api_url": pdns.api_url, **cfg})
    return PowerDnsProvider(config, api_key=pdns.api_key, client=client)


def service(name: str, regions: Mapping[str, tuple[float, list[str]]]) -> DesiredService:
    """regions: name -> (region weight, addresses); the weight is split evenly over nodes."""
    out = []
    for region, (weight, addresses) in regions.items():
        share = weight / len(addresses) if addresses else 0
        endpoints = [DesiredEndpoint(address=a, weight=share) for a in addresses]
        out.append(DesiredRegion(region=region, weight=weight, endpoints=endpoints))
    return DesiredService(service="api", name=name, zone=ZONE, regions=out)


def fresh_name() -> str:
    return f"api{next(_names)}.{ZONE}"


def query(pdns: PdnsServer, name: str, rtype: str = "A") -> dns.message.Message:
    request = dns.message.make_query(name, rtype)
    return dns.query.udp(request, "127.0.0.1", port=int(pdns.dns_port or 0), timeout=2)


def answers(
    pdns: PdnsServer, name: str, rtype: str = "A", times: int = 1
) -> collections.Counter[str]:
    """Addresses (or TXT strings) in ``times`` answers; queries run 4 at a time."""
    counts: collections.Counter[str] = collections.Counter()
    with ThreadPoolExecutor(4) as pool:
        for response in pool.map(lambda _: query(pdns, name, rtype), range(times)):
            for rrset in response.answer:
                counts.update(rdata.to_text() for rdata in rrset)
    return counts


def raw_patch(pdns: PdnsServer, rrsets: list[dict[str, object]]) -> None:
    url = f"{pdns.api_url}/api/v1/servers/localhost/zones/{ZONE}."
    response = httpx.patch(url, headers=pdns.headers, json={"rrsets": rrsets})
    assert response.status_code == 204, response.text


# ------------------------------------------------------------------- pure parts
def test_lua_text_is_validated_before_sending() -> None:
    content = lua_content("A", {"192.0.2.2": 10, "192.0.2.1": 90})
    assert content == "A \"pickwrandom({{90,'192.0.2.1'},{10,'192.0.2.2'}})\""
    assert parse_lua(content) == ("A", {"192.0.2.1": 90, "192.0.2.2": 10})
    for broken in (
        "A \"pickwrandom({{90,'192.0.2.1'},{10,'192.0.2.2'}}\"",  # unbalanced
        "A \"pickwrandom({{0,'192.0.2.1'}})\"",  # zero weight
        "A \"pickwrandom({{5,'2001:db8::1'}})\"",  # IPv6 in an A record
        "A \"pickwrandom({{5,'192.0.2.1');os.exit()--'}})\"",
    ):
        with pytest.raises(DnsValidationError):
            validate_lua(broken)


# -------------------------------------------------------------- real pdns_server
def test_weighted_answers_follow_weights_and_resync_writes_nothing(pdns: PdnsServer) -> None:
    name, recorder = fresh_name(), Recorder()
    dns_provider = provider(pdns, client=recorder.client)
    desired = service(
        name,
        {"jp": (60, ["192.0.2.1"]), "us": (30, ["192.0.2.2"]), "eu": (10, ["192.0.2.3"])},
    )
    result = dns_provider.sync(desired)
    assert result.applied and result.write_calls == 1 and recorder.count("PATCH") == 1

    total = 2000
    counts = answers(pdns, name, times=total)
    assert sum(counts.values()) == total  # one address per answer (pickwrandom)
    for address, expected in (("192.0.2.1", 0.6), ("192.0.2.2", 0.3), ("192.0.2.3", 0.1)):
        assert abs(counts[address] / total - expected) < 0.04, counts

    assert dns_provider.plan(desired).empty
    again = dns_provider.sync(desired)
    assert not again.applied and again.write_calls == 0
    assert recorder.count("PATCH") == 1  # still only the first write
    txt = answers(pdns, name, "TXT")
    assert list(txt) == ['"heritage=xplane,owner=xplane,service=api"']


def test_failed_region_disappears_from_answers_at_once(pdns: PdnsServer) -> None:
    name, dns_provider = fresh_name(), provider(pdns)
    dns_provider.sync(service(name, {"jp": (50, ["192.0.2.1"]), "us": (50, ["192.0.2.2"])}))
    assert set(answers(pdns, name, times=60)) == {"192.0.2.1", "192.0.2.2"}

    plan = dns_provider.plan(service(name, {"jp": (0, ["192.0.2.1"]), "us": (50, ["192.0.2.2"])}))
    assert [(c.action, c.key) for c in plan.changes] == [("update", f"{name}. LUA")]
    dns_provider.apply(plan)
    assert set(answers(pdns, name, times=100)) == {"192.0.2.2"}


def test_foreign_records_are_refused_then_taken_over(pdns: PdnsServer) -> None:
    name, recorder = fresh_name(), Recorder()
    raw_patch(
        pdns,
        [
            {"name": f"{name}.", "type": "A", "ttl": 60, "changetype": "REPLACE",
             "records": [{"content": "198.51.100.7", "disabled": False}]},
            {"name": f"{name}.", "type": "TXT", "ttl": 60, "changetype": "REPLACE",
             "records": [{"content": '"site-verification=abc"', "disabled": False}]},
        ],
    )  # fmt: skip
    dns_provider = provider(pdns, client=recorder.client)
    desired = service(name, {"jp": (100, ["192.0.2.1"])})
    with pytest.raises(DnsOwnershipError, match="A records that XPlane did not create"):
        dns_provider.sync(desired)
    assert recorder.count("PATCH") == 0
    assert set(answers(pdns, name)) == {"198.51.100.7"}

    plan = dns_provider.plan(desired, takeover=True)
    assert {c.key: c.action for c in plan.changes} == {
        f"{name}. A": "delete",
        f"{name}. LUA": "create",
        f"{name}. TXT": "update",
    }
    dns_provider.apply(plan)
    assert set(answers(pdns, name, times=20)) == {"192.0.2.1"}
    # the foreign TXT value stays next to the marker; the name is now XPlane's
    assert set(answers(pdns, name, "TXT")) == {
        '"site-verification=abc"',
        '"heritage=xplane,owner=xplane,service=api"',
    }
    assert dns_provider.plan(desired).empty


def test_other_owner_marker_is_refused(pdns: PdnsServer) -> None:
    name = fresh_name()
    provider(pdns, owner_id="cluster-a").sync(service(name, {"jp": (100, ["192.0.2.1"])}))
    with pytest.raises(DnsOwnershipError, match="owned by someone else"):
        provider(pdns, owner_id="cluster-b").plan(service(name, {"jp": (100, ["192.0.2.9"])}))


def test_emptying_a_name_needs_force(pdns: PdnsServer) -> None:
    name, dns_provider = fresh_name(), provider(pdns)
    dns_provider.sync(service(name, {"jp": (100, ["192.0.2.1"])}))
    empty = service(name, {"jp": (100, [])})
    plan = dns_provider.plan(empty)
    assert plan.removes_all_addresses
    with pytest.raises(DnsSafetyError, match="removes every address"):
        dns_provider.apply(plan)
    assert set(answers(pdns, name)) == {"192.0.2.1"}

    dns_provider.apply(plan, force=True)
    response = query(pdns, name)
    assert response.rcode() == dns.rcode.NOERROR and not response.answer  # marker TXT remains
    assert dns_provider.plan(empty).empty


def test_ipv6_addresses_are_published_as_aaaa(pdns: PdnsServer) -> None:
    name, dns_provider = fresh_name(), provider(pdns)
    dns_provider.sync(
        service(name, {"jp": (75, ["2001:db8::1"]), "us": (25, ["2001:0db8:0:0:0:0:0:2"])})
    )
    counts = answers(pdns, name, "AAAA", times=400)
    assert set(counts) == {"2001:db8::1", "2001:db8::2"}
    assert abs(counts["2001:db8::1"] / 400 - 0.75) < 0.08
    assert not query(pdns, name, "A").answer
    # the config may restrict a provider to one family
    assert (
        provider(pdns, record_type="A")
        .plan(service(name, {"jp": (75, ["2001:db8::1"])}))
        .removes_all_addresses
    )


def test_plain_mode_publishes_every_address_and_switches_to_lua(pdns: PdnsServer) -> None:
    name = fresh_name()
    desired = service(name, {"jp": (60, ["192.0.2.1"]), "us": (40, ["192.0.2.2"])})
    provider(pdns, lua_records=False).sync(desired)
    assert answers(pdns, name) == {"192.0.2.1": 1, "192.0.2.2": 1}  # plain A rrset, unweighted

    plan = provider(pdns).plan(desired)
    assert {c.key: c.action for c in plan.changes} == {
        f"{name}. A": "delete",
        f"{name}. LUA": "create",
    }
    provider(pdns).apply(plan)
    assert sum(answers(pdns, name, times=10).values()) == 10  # one address per answer now


def test_missing_zone_is_named_or_created_on_request(pdns: PdnsServer) -> None:
    desired = service("api.other.example", {"jp": (100, ["192.0.2.1"])}).model_copy(
        update={"zone": "other.example"}
    )
    with pytest.raises(DnsValidationError, match=r"zone other\.example\. does not exist"):
        provider(pdns).plan(desired)
    creator = provider(pdns)
    creator.create_zone = True
    result = creator.sync(desired)
    assert result.write_calls == 2
    assert set(answers(pdns, "api.other.example")) == {"192.0.2.1"}


def test_wrong_api_key_is_an_auth_error(pdns: PdnsServer) -> None:
    config = PowerDnsConfig(provider="powerdns", api_url=pdns.api_url)
    with pytest.raises(DnsAuthError, match="HTTP 401") as info:
        PowerDnsProvider(config, api_key="wrong").plan(service(fresh_name(), {}))
    assert not info.value.retryable


def test_api_key_comes_from_the_environment(
    pdns: PdnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XPLANE_TEST_PDNS_KEY", pdns.api_key)
    config = PowerDnsConfig(
        provider="powerdns", api_url=pdns.api_url, api_key_env="XPLANE_TEST_PDNS_KEY"
    )
    assert PowerDnsProvider(config).plan(service(fresh_name(), {"jp": (1, ["192.0.2.1"])})).changes
    monkeypatch.delenv("XPLANE_TEST_PDNS_KEY")
    with pytest.raises(DnsAuthError, match="XPLANE_TEST_PDNS_KEY"):
        PowerDnsProvider(config)


# ------------------------------------------------------- error classification
class _Canned(BaseHTTPRequestHandler):
    status = 503
    body = b"busy"

    def _reply(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_PATCH = _reply

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[str, type[_Canned]]]:
    handler = type("Handler", (_Canned,), {})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()
    thread.join()


def test_server_errors_are_retryable_and_422_is_not(canned: tuple[str, type[_Canned]]) -> None:
    url, handler = canned
    dns_provider = PowerDnsProvider(PowerDnsConfig(provider="powerdns", api_url=url), api_key="k")
    desired = service(fresh_name(), {"jp": (100, ["192.0.2.1"])})
    with pytest.raises(DnsRetryableError, match="HTTP 503"):
        dns_provider.plan(desired)
    handler.status, handler.body = 422, b'{"error": "RRset api.svc.plus. IN LUA: bad"}'
    with pytest.raises(DnsValidationError, match=r"RRset api\.svc\.plus\. IN LUA: bad") as info:
        dns_provider.plan(desired)
    assert not info.value.retryable


def test_connection_refused_is_retryable() -> None:
    config = PowerDnsConfig(provider="powerdns", api_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(DnsRetryableError, match="ConnectError"):
        PowerDnsProvider(config, api_key="k").plan(service(fresh_name(), {}))


def test_server_in_a_given_directory_keeps_its_records_across_restarts(tmp_path: Path) -> None:
    name = f"api.{ZONE}"
    with PdnsServer(tmp_path, api_key="fixed-key") as first:
        first.ensure_zone(ZONE)
        provider(first).sync(service(name, {"jp": (100, ["192.0.2.1"])}))
        pid_file = first.pid_path
        assert pid_file.read_text().split()[0] == str(first.pid)  # "<pid> <start time>"
    assert not pid_file.exists() and (tmp_path / "pdns.sqlite3").exists()
    with PdnsServer(tmp_path, api_key="fixed-key") as second:
        assert set(answers(second, name)) == {"192.0.2.1"}
        assert provider(second).plan(service(name, {"jp": (100, ["192.0.2.1"])})).empty


def test_one_lua_record_holding_every_address_is_protected(pdns: PdnsServer) -> None:
    """The threshold counts addresses: one LUA record set holds all four, and a plan
    taking three of them away is refused (a record-set count would see 1 of 2 sets)."""
    name, dns_provider = fresh_name(), provider(pdns)
    four = {"jp": (50, ["192.0.2.1", "192.0.2.2"]), "us": (50, ["192.0.2.3", "192.0.2.4"])}
    dns_provider.sync(service(name, four))
    mostly_gone = service(name, {"jp": (50, ["192.0.2.1"]), "us": (0, ["192.0.2.3"])})
    plan = dns_provider.plan(mostly_gone)
    assert plan.addresses_before == ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]
    with pytest.raises(DnsSafetyError, match="removes 3 of 4 published addresses"):
        dns_provider.apply(plan)
    assert set(answers(pdns, name, times=40)) == set(four["jp"][1]) | set(four["us"][1])
    # Half of them is within max_change_fraction (0.5): a region failing over applies.
    dns_provider.sync(service(name, {"jp": (50, ["192.0.2.1", "192.0.2.2"]), "us": (0, [])}))
    assert set(answers(pdns, name, times=40)) == {"192.0.2.1", "192.0.2.2"}
    # A name with at most two addresses is exempt (one of two is already 50%): it fails
    # over without force, down to one address and on to a replacement.
    dns_provider.sync(mostly_gone)
    dns_provider.sync(service(name, {"jp": (50, ["192.0.2.9"])}))
    assert set(answers(pdns, name, times=20)) == {"192.0.2.9"}
