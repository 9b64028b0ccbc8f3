"""DNS writes per GTM iteration, against a real PowerDNS: none while nothing changes
(100 iterations), exactly one write per changed record set otherwise."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import httpx

from xplane.config.models import PowerDnsConfig
from xplane.dns.pdns_server import PdnsServer
from xplane.dns.plan import DesiredEndpoint, DesiredRegion, DesiredService
from xplane.dns.powerdns import PowerDnsProvider


def _desired(jp: float, sg: float) -> DesiredService:
    return DesiredService(
        service="svc",
        name="api.svc.plus",
        zone="svc.plus",
        regions=[
            DesiredRegion(
                region="jp", weight=jp, endpoints=[DesiredEndpoint(address="192.0.2.1", weight=jp)]
            ),
            DesiredRegion(
                region="sg", weight=sg, endpoints=[DesiredEndpoint(address="192.0.2.2", weight=sg)]
            ),
        ],
    )


def run(iterations: int = 100) -> dict[str, Any]:
    writes: list[str] = []

    def count(request: httpx.Request) -> None:
        if request.method in ("PATCH", "POST", "PUT", "DELETE"):
            writes.append(request.method)

    with tempfile.TemporaryDirectory() as tmp, PdnsServer(Path(tmp)) as pdns:
        pdns.ensure_zone("svc.plus")
        client = httpx.Client(event_hooks={"request": [count]})
        provider = PowerDnsProvider(
            PowerDnsConfig(provider="powerdns", api_url=pdns.api_url, zone="svc.plus"),
            api_key=pdns.api_key,
            client=client,
        )
        provider.sync(_desired(100, 10))
        first = len(writes)
        for _ in range(iterations):
            provider.sync(_desired(100, 10))
        idle = len(writes) - first
        provider.sync(_desired(100, 50))
        changed = len(writes) - first - idle
        client.close()
    result = {
        "first_apply_write_calls": first,
        f"write_calls_over_{iterations}_idle_iterations": idle,
        "write_calls_for_one_changed_record_set": changed,
    }
    print("| measure | API calls that write |\n| --- | --- |")
    for key, value in result.items():
        print(f"| {key} | {value} |")
    return result


if __name__ == "__main__":
    run()
