"""Route53 provider against moto_server on loopback (a real HTTP server speaking Route53).

moto accepts what AWS rejects, so the tests also check that XPlane refuses those
batches itself. Throttling and auth failures, which moto never produces, come from a
tiny loopback server answering with Route53's XML error body.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from xplane.config.models import Route53Config
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
from xplane.dns.ratelimit import DnsThrottledError
from xplane.dns.route53 import Route53Provider, _unescape, validate_change_batch
from xplane.netutil import free_port, wait_for_port

NAME, ZONE = "api.svc.plus", "svc.plus"
MARKER = '"heritage=xplane,owner=xplane,service=api"'
MOTO = Path(sys.executable).with_name("moto_server")
KEY_ENV = {"XPLANE_TEST_AWS_ID": "testing", "XPLANE_TEST_AWS_SECRET": "testing"}


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [str(MOTO), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A boto3 client on a freshly reset moto with the zone svc.plus."""
    httpx.post(f"{moto_url}/moto-api/reset").raise_for_status()
    for key, value in KEY_ENV.items():
        monkeypatch.setenv(key, value)
    client = boto3.client(
        "route53",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.create_hosted_zone(Name=ZONE, CallerReference=str(uuid.uuid4()))
    yield client


def provider(url: str, **cfg: Any) -> Route53Provider:
    config = Route53Config.model_validate(
        {
            "provider": "route53",
            "endpoint_url": url,
            "access_key_id_env": "XPLANE_TEST_AWS_ID",
            "secret_access_key_env": "XPLANE_TEST_AWS_SECRET",
            **cfg,
        }
    )
    return Route53Provider(config)


def service(regions: Mapping[str, tuple[float, list[str]]]) -> DesiredService:
    out = []
    for region, (weight, addresses) in regions.items():
        share = weight / len(addresses) if addresses else 0
        endpoints = [DesiredEndpoint(address=a, weight=share) for a in addresses]
        out.append(DesiredRegion(region=region, weight=weight, endpoints=endpoints))
    return DesiredService(service="api", name=NAME, zone=ZONE, regions=out)


def zone_id(aws: Any) -> str:
    return str(aws.list_hosted_zones_by_name(DNSName=ZONE)["HostedZones"][0]["Id"])


def published(aws: Any) -> dict[str, tuple[int | None, list[str]]]:
    """``{"A/api-jp": (weight, values), "TXT": (None, values)}`` at NAME."""
    out = {}
    sets = aws.list_resource_record_sets(HostedZoneId=zone_id(aws), StartRecordName=NAME)
    for rs in sets["ResourceRecordSets"]:
        if rs["Name"] == NAME + ".":
            key = rs["Type"] + (f"/{rs['SetIdentifier']}" if rs.get("SetIdentifier") else "")
            out[key] = (rs.get("Weight"), sorted(v["Value"] for v in rs["ResourceRecords"]))
    return out


def count_writes(dns_provider: Route53Provider) -> list[str]:
    calls: list[str] = []
    dns_provider.client.meta.events.register(
        "before-call.route-53.ChangeResourceRecordSets", lambda **_: calls.append("write")
    )
    return calls


# ------------------------------------------------------------------------ moto
def test_create_update_and_remove_regions(aws: Any, moto_url: str) -> None:
    dns_provider = provider(moto_url)
    writes = count_writes(dns_provider)
    first = dns_provider.sync(
        service({"jp": (60, ["192.0.2.1", "192.0.2.2"]), "us": (40, ["192.0.2.3"])})
    )
    assert first.applied and len(writes) == 1
    assert published(aws) == {
        "A/api-jp": (255, ["192.0.2.1", "192.0.2.2"]),  # the largest region gets 255
        "A/api-us": (170, ["192.0.2.3"]),  # 40/60 of it
        "TXT": (None, [MARKER]),
    }

    lowered = service({"jp": (60, ["192.0.2.1", "192.0.2.2"]), "us": (1, ["192.0.2.3"])})
    plan = dns_provider.plan(lowered)
    assert [(c.action, c.key) for c in plan.changes] == [("update", "A/api-us")]
    dns_provider.apply(plan)
    assert published(aws)["A/api-us"] == (4, ["192.0.2.3"])  # 1/60 of 255, never 0

    # us fails (weight 0): its set is deleted with the exact listed record set
    failed = service({"jp": (60, ["192.0.2.1", "192.0.2.2"]), "us": (0, ["192.0.2.3"])})
    plan = dns_provider.plan(failed)
    assert [(c.action, c.key) for c in plan.changes] == [("delete", "A/api-us")]
    dns_provider.apply(plan)
    assert published(aws) == {
        "A/api-jp": (255, ["192.0.2.1", "192.0.2.2"]),
        "TXT": (None, [MARKER]),
    }
    assert len(writes) == 3


def test_large_change_needs_force(aws: Any, moto_url: str) -> None:
    dns_provider = provider(moto_url)
    three = {"jp": (50, ["192.0.2.1"]), "us": (30, ["192.0.2.2"]), "eu": (20, ["192.0.2.3"])}
    dns_provider.sync(service(three))  # 4 owned sets: 3 regions + the marker
    moved = {region: (w, ["198.51.100." + a[0][-1]]) for region, (w, a) in three.items()}
    plan = dns_provider.plan(service(moved))
    assert plan.owned_record_sets == 4 and len(plan.changes) == 3
    with pytest.raises(DnsSafetyError, match="removes 3 of 3 published addresses"):
        dns_provider.apply(plan)
    assert published(aws)["A/api-jp"] == (255, ["192.0.2.1"])
    dns_provider.apply(plan, force=True)
    assert published(aws)["A/api-jp"] == (255, ["198.51.100.1"])


def test_second_sync_makes_no_change_call(aws: Any, moto_url: str) -> None:
    desired = service({"jp": (70, ["192.0.2.1"]), "us": (30, ["2001:db8::1", "192.0.2.9"])})
    dns_provider = provider(moto_url)
    writes = count_writes(dns_provider)
    dns_provider.sync(desired)
    assert set(published(aws)) == {"A/api-jp", "A/api-us", "AAAA/api-us", "TXT"}
    again = provider(moto_url)  # a fresh provider, as a new activity attempt would have
    again_writes = count_writes(again)
    result = again.sync(desired)
    assert not result.applied and result.write_calls == 0
    assert writes == ["write"] and again_writes == []


def test_foreign_simple_record_is_refused_then_taken_over(aws: Any, moto_url: str) -> None:
    aws.change_resource_record_sets(
        HostedZoneId=zone_id(aws),
        ChangeBatch={"Changes": [{"Action": "CREATE", "ResourceRecordSet": {
            "Name": NAME, "Type": "A", "TTL": 300, "ResourceRecords": [{"Value": "198.51.100.7"}],
        }}]},
    )  # fmt: skip
    dns_provider = provider(moto_url)
    writes = count_writes(dns_provider)
    desired = service({"jp": (100, ["192.0.2.1"])})
    with pytest.raises(DnsOwnershipError, match="A records that XPlane did not create"):
        dns_provider.sync(desired)
    assert writes == [] and published(aws) == {"A": (None, ["198.51.100.7"])}

    # takeover deletes the simple set in the same batch that creates the weighted one:
    # moto would happily keep both, AWS would reject the mix
    plan = dns_provider.plan(desired, takeover=True)
    assert [(c.action, c.key) for c in plan.changes] == [
        ("delete", "A"),
        ("create", "A/api-jp"),
        ("create", "TXT"),
    ]
    dns_provider.apply(plan)
    assert published(aws) == {"A/api-jp": (255, ["192.0.2.1"]), "TXT": (None, [MARKER])}


def test_emptying_the_name_needs_force(aws: Any, moto_url: str) -> None:
    dns_provider = provider(moto_url)
    dns_provider.sync(service({"jp": (100, ["192.0.2.1"])}))
    plan = dns_provider.plan(service({}))
    with pytest.raises(DnsSafetyError, match="removes every address"):
        dns_provider.apply(plan)
    dns_provider.apply(plan, force=True)
    assert published(aws) == {"TXT": (None, [MARKER])}


def test_missing_zone_is_named(aws: Any, moto_url: str) -> None:
    desired = service({"jp": (100, ["192.0.2.1"])}).model_copy(
        update={"name": "api.nope.example", "zone": "nope.example"}
    )
    with pytest.raises(DnsValidationError, match=r"no hosted zone named nope\.example\."):
        provider(moto_url).plan(desired)


# ----------------------------------------------------- what moto lets through
def _weighted(weight: Any, sid: str = "api-jp", action: str = "UPSERT") -> dict[str, Any]:
    return {
        "Action": action,
        "ResourceRecordSet": {
            "Name": NAME + ".", "Type": "A", "SetIdentifier": sid, "Weight": weight,
            "TTL": 30, "ResourceRecords": [{"Value": "192.0.2.1"}],
        },
    }  # fmt: skip


def test_batches_aws_would_reject_are_refused_before_sending() -> None:
    validate_change_batch([_weighted(255), _weighted(0, sid="api-us")], [])
    with pytest.raises(DnsValidationError, match=r"Weight 300 is not in 0\.\.255"):
        validate_change_batch([_weighted(300)], [])
    with pytest.raises(DnsValidationError, match="appears twice"):
        validate_change_batch([_weighted(10), _weighted(20)], [])
    simple = {"Name": NAME + ".", "Type": "A", "TTL": 30, "ResourceRecords": [{"Value": "1.2.3.4"}]}
    with pytest.raises(DnsValidationError, match="simple and weighted A record sets mixed"):
        validate_change_batch([_weighted(10)], [simple])
    validate_change_batch(
        [{"Action": "DELETE", "ResourceRecordSet": simple}, _weighted(10)], [simple]
    )


def test_octal_escapes_in_listed_names_are_read() -> None:
    assert _unescape("\\052.svc.plus.") == "*.svc.plus."
    assert _unescape("api.svc.plus.") == "api.svc.plus."


# ------------------------------------------------------- error classification
class _Route53Error(BaseHTTPRequestHandler):
    status = 400
    code = "Throttling"

    def do_GET(self) -> None:
        body = (
            '<?xml version="1.0"?><ErrorResponse xmlns="https://route53.amazonaws.com/doc/'
            f'2013-04-01/"><Error><Type>Sender</Type><Code>{self.code}</Code>'
            "<Message>canned</Message></Error><RequestId>r-1</RequestId></ErrorResponse>"
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def error_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, type[_Route53Error]]]:
    for key, value in KEY_ENV.items():
        monkeypatch.setenv(key, value)
    handler = type("Handler", (_Route53Error,), {})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (400, "Throttling", DnsRetryableError),
        (400, "PriorRequestNotComplete", DnsRetryableError),
        (503, "ServiceUnavailable", DnsRetryableError),
        (403, "AccessDenied", DnsAuthError),
        (403, "SignatureDoesNotMatch", DnsAuthError),
        (400, "InvalidInput", DnsValidationError),
        (400, "InvalidChangeBatch", DnsValidationError),
    ],
)
def test_route53_errors_are_classified(
    error_server: tuple[str, type[_Route53Error]], status: int, code: str, error: type[Exception]
) -> None:
    url, handler = error_server
    handler.status, handler.code = status, code
    dns_provider = provider(url, hosted_zone_id="/hostedzone/Z1")
    with pytest.raises(error, match=code) as info:
        dns_provider.plan(service({"jp": (100, ["192.0.2.1"])}))
    assert info.value.retryable is (error is DnsRetryableError)  # type: ignore[attr-defined]


def test_unreachable_endpoint_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in KEY_ENV.items():
        monkeypatch.setenv(key, value)
    dns_provider = provider(f"http://127.0.0.1:{free_port()}", hosted_zone_id="Z1")
    with pytest.raises(DnsRetryableError, match="EndpointConnectionError"):
        dns_provider.plan(service({"jp": (100, ["192.0.2.1"])}))


def test_missing_credentials_are_an_auth_error(
    moto_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    dns_provider = provider(moto_url, access_key_id_env="XPLANE_UNSET_ID", hosted_zone_id="Z1")
    with pytest.raises(DnsAuthError, match="Unable to locate credentials"):
        dns_provider.plan(service({"jp": (100, ["192.0.2.1"])}))


# ------------------------------------------------------------- rate limits
class _ThrottlingProxy(BaseHTTPRequestHandler):
    """In front of moto_server: answers the next ``throttle`` requests as Route53 does when
    an account exceeds its rate (400 ``Throttling``, XML error body, ``Retry-After``) and
    forwards the rest; records when each request arrived."""

    upstream = ""
    throttle = 0
    retry_after: str | None = "1"
    # 400 with Route53's XML ``Throttling`` body; 429 as a rate-limiting proxy or gateway
    # in front of the API answers (``xml`` False: a plain-text body, no error code).
    status = 400
    xml = True
    arrivals: list[float]
    throttled_at: list[float]
    writes: list[float]

    def _serve(self) -> None:
        cls = type(self)
        now = time.monotonic()
        cls.arrivals.append(now)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if cls.throttle > 0:
            cls.throttle -= 1
            cls.throttled_at.append(now)
            data = (
                b'<?xml version="1.0"?><ErrorResponse xmlns="https://route53.amazonaws.com/doc/'
                b'2013-04-01/"><Error><Type>Sender</Type><Code>Throttling</Code>'
                b"<Message>Rate exceeded</Message></Error><RequestId>r-2</RequestId>"
                b"</ErrorResponse>"
            )
            if not cls.xml:
                data = b"Too Many Requests\n"
            self.send_response(cls.status)
            if cls.retry_after is not None:
                self.send_header("Retry-After", cls.retry_after)
            self.send_header("Content-Type", "text/xml" if cls.xml else "text/plain")
        else:
            if self.command == "POST" and self.path.endswith("/rrset/"):
                cls.writes.append(now)
            headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            answer = httpx.request(
                self.command, cls.upstream + self.path, headers=headers, content=body
            )
            data = answer.content
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("content-type", "text/xml"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def throttling(aws: Any, moto_url: str) -> Iterator[tuple[str, type[_ThrottlingProxy]]]:
    handler = type(
        "Proxy",
        (_ThrottlingProxy,),
        {"upstream": moto_url, "arrivals": [], "throttled_at": [], "writes": []},
    )
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", handler
    server.shutdown()
    server.server_close()
    thread.join()


def test_throttling_says_when_to_retry_and_the_retry_writes(
    aws: Any, throttling: tuple[str, type[_ThrottlingProxy]]
) -> None:
    url, proxy = throttling
    proxy.throttle, proxy.retry_after = 1, "1"
    dns_provider = provider(url)
    with pytest.raises(DnsThrottledError, match="Throttling") as caught:
        dns_provider.sync(service({"jp": (100, ["192.0.2.1"])}))
    assert caught.value.retry_after == 1 and caught.value.retryable
    started = time.monotonic()
    dns_provider.sync(service({"jp": (100, ["192.0.2.1"])}))  # the activity's retry
    assert time.monotonic() - started >= 0.9  # not before Retry-After
    assert published(aws)["A/api-jp"][1] == ["192.0.2.1"]


@pytest.mark.parametrize(
    ("retry_after", "xml", "waited"),
    [("2", True, 2.0), ("2", False, 2.0), (None, True, 1.0), (None, False, 1.0)],
    ids=["retry-after-xml", "retry-after-plain", "no-retry-after-xml", "no-retry-after-plain"],
)
def test_a_429_backs_off_for_retry_after_and_the_retry_writes(
    aws: Any,
    throttling: tuple[str, type[_ThrottlingProxy]],
    retry_after: str | None,
    xml: bool,
    waited: float,
) -> None:
    """HTTP 429 (a rate-limiting gateway's answer, with or without Route53's XML body):
    retryable, pauses the account's bucket for its Retry-After (else 1 s) so nothing is
    sent before then, and the retry writes. Without Retry-After the error names no delay:
    the activity's retry policy backs off exponentially (1 s, 2 s, 4 s, ...)."""
    url, proxy = throttling
    proxy.status, proxy.xml, proxy.retry_after = 429, xml, retry_after
    dns_provider = provider(url, hosted_zone_id=zone_id(aws))
    proxy.throttle = 1
    with pytest.raises(DnsThrottledError, match=r"HTTP 429") as caught:
        dns_provider.sync(service({"jp": (100, ["192.0.2.1"])}))
    assert caught.value.retryable
    assert caught.value.retry_after == (waited if retry_after else None)
    dns_provider.sync(service({"jp": (100, ["192.0.2.1"])}))  # the activity's retry
    [throttled] = proxy.throttled_at
    assert proxy.arrivals[-2] - throttled >= waited - 0.05  # nothing sent meanwhile
    assert len(proxy.writes) == 1 and proxy.writes[0] - throttled >= waited - 0.05
    assert published(aws)["A/api-jp"][1] == ["192.0.2.1"]


def test_calls_stay_within_five_a_second_per_account(
    aws: Any, throttling: tuple[str, type[_ThrottlingProxy]]
) -> None:
    url, proxy = throttling
    first = provider(url)
    second = provider(url)  # another loop of the same account shares the budget
    for i in range(12):
        (first if i % 2 else second).plan(service({"jp": (100, ["192.0.2.1"])}))
    arrivals = proxy.arrivals
    assert len(arrivals) >= 12
    # The limiter spaces the calls as they are sent; the proxy sees them on arrival,
    # which a busy machine can delay by tens of ms. A window of 0.8 s leaves room for
    # that jitter and still catches a limiter that lets a burst through (unlimited, the
    # 12 calls arrive within a fraction of a second).
    busiest = max(sum(1 for t in arrivals if s <= t < s + 0.8) for s in arrivals)
    assert busiest <= 5
    assert arrivals[-1] - arrivals[0] >= 1.5  # 12 calls at 5 a second span > 2 s


@pytest.fixture(scope="module")
def node_health_port() -> Iterator[int]:
    """The GTM loop tests' nodes answering their health check (one server per address)."""
    from tests.test_gtm_loop import NODES, _serve, _stop

    port = free_port()
    servers = _serve(list(NODES.values()), port)
    yield port
    _stop(servers)


async def test_the_gtm_loop_rides_out_a_throttling_route53(
    aws: Any,
    throttling: tuple[str, type[_ThrottlingProxy]],
    time_env: Any,
    tmp_path: Path,
    node_health_port: int,
) -> None:
    """The GTM loop against Route53 behind a gateway answering 429: first with
    Retry-After: 2, then without. No call reaches the endpoint before Retry-After (nor
    within the 1 s back-off after a bare 429), the apply's retries publish every address
    in the same reconcile, and the loop records no failed run."""
    from tests.test_gtm_loop import NODES, _gtm_loop, store_nodes
    from workflows.control_loop import LoopStatus
    from workflows.gtm_loop import GtmLoopWorkflow
    from xplane.store.db import Base, make_engine, make_sessionmaker

    url, proxy = throttling
    proxy.status, proxy.xml = 429, False
    engine = make_engine(f"sqlite:///{tmp_path}/r53.db")
    Base.metadata.create_all(engine)
    sessions = make_sessionmaker(engine)
    config = {
        "regions/global.yaml": "regions:\n  - name: jp\n  - name: sg\n",
        "gtm/api.yaml": f"""
service: api
domain: {NAME}
regions: [{{name: jp, weight: 100}}, {{name: sg, weight: 100}}]
health: {{type: http, path: /healthz, port: {node_health_port}, interval: 5s, timeout: 1s,
          healthy_threshold: 1, unhealthy_threshold: 1}}
dns: {{provider: route53, endpoint_url: "{url}", zone: {ZONE},
       access_key_id_env: XPLANE_TEST_AWS_ID, secret_access_key_env: XPLANE_TEST_AWS_SECRET}}
""",
    }
    store_nodes(sessions, config, "d" * 40, "api", node_health_port)

    answers = iter(["2", None])

    proxy.throttle = 2  # two 429s in a row: Retry-After 2, then none
    original = proxy._serve

    def serve(self: _ThrottlingProxy) -> None:
        if type(self).throttle > 0:
            type(self).retry_after = next(answers)
        original(self)

    proxy.do_GET = proxy.do_POST = serve
    try:
        async with _gtm_loop(time_env, sessions, "api", f"r53-{uuid.uuid4().hex[:6]}", "r53") as h:
            for _ in range(80):
                await asyncio.sleep(0.25)
                if published(aws).get("A/api-sg", (None, []))[1]:
                    break
            status: LoopStatus = await h.query(GtmLoopWorkflow.status)
    finally:
        engine.dispose()
    shown = published(aws)
    assert shown["A/api-jp"][1] == sorted([NODES["jp-1"], NODES["jp-2"]])
    assert shown["A/api-sg"][1] == [NODES["sg-1"]]
    first, second = proxy.throttled_at
    assert second - first >= 2.0 - 0.05  # Retry-After: 2 honoured
    after = [t for t in proxy.arrivals if t > second]
    assert after and after[0] - second >= 1.0 - 0.05  # a bare 429: the 1 s back-off
    assert len(proxy.writes) == 1
    assert status.errors == 0 and status.last_error is None, status
