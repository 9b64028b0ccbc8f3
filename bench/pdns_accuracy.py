"""How closely a real PowerDNS's weighted LUA answers follow XPlane's weights.

Starts a pdns_server (4.7, SQLite) on loopback, publishes three addresses with
weights 60/30/10 through the PowerDNS provider, sends QUERIES A queries over UDP (4 in flight)
and compares each address's share of answers with its weight share.

    .venv/bin/python bench/pdns_accuracy.py [QUERIES]
"""

from __future__ import annotations

import collections
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dns.message
import dns.query

from xplane.config.models import PowerDnsConfig
from xplane.dns.pdns_server import PdnsServer, pdns_available
from xplane.dns.plan import DesiredEndpoint, DesiredRegion, DesiredService
from xplane.dns.powerdns import PowerDnsProvider

WEIGHTS = {"192.0.2.1": 60.0, "192.0.2.2": 30.0, "192.0.2.3": 10.0}
NAME, ZONE = "api.bench.test", "bench.test"


def run(
    queries: int = 5000, weights: dict[str, float] | None = None, concurrency: int = 4
) -> dict[str, Any]:
    """Publish ``weights`` (address -> weight, one region each) and measure answer shares."""
    weights = weights or WEIGHTS
    if not pdns_available():
        raise RuntimeError(
            "pdns_server is not installed (Debian: pdns-server pdns-backend-sqlite3)"
        )
    regions = [
        DesiredRegion(
            region=f"r{i}", weight=w, endpoints=[DesiredEndpoint(address=address, weight=w)]
        )
        for i, (address, w) in enumerate(weights.items())
    ]
    desired = DesiredService(service="bench", name=NAME, zone=ZONE, regions=regions)
    counts: collections.Counter[str] = collections.Counter()
    with PdnsServer() as server:
        server.ensure_zone(ZONE)
        config = PowerDnsConfig(provider="powerdns", api_url=server.api_url)
        provider = PowerDnsProvider(config, api_key=server.api_key)
        try:
            provider.sync(desired)
        finally:
            provider.close()
        port = int(server.dns_port or 0)
        started = time.perf_counter()

        def ask(_: int) -> dns.message.Message:
            query = dns.message.make_query(NAME, "A")
            return dns.query.udp(query, "127.0.0.1", port=port, timeout=2)

        with ThreadPoolExecutor(concurrency) as pool:
            for response in pool.map(ask, range(queries)):
                for rrset in response.answer:
                    counts.update(rdata.to_text() for rdata in rrset)
        elapsed = time.perf_counter() - started
    total_weight = sum(weights.values())
    rows: list[dict[str, Any]] = []
    for address, w in weights.items():
        expected = 100.0 * w / total_weight
        observed = 100.0 * counts[address] / queries
        rows.append(
            {
                "address": address,
                "answers": counts[address],
                "expected_pct": round(expected, 2),
                "observed_pct": round(observed, 2),
                "deviation_pp": round(observed - expected, 2),
            }
        )
    return {
        "queries": queries,
        "answers": sum(counts.values()),
        "unexpected": sorted(set(counts) - set(weights)),
        "rows": rows,
        "max_deviation_pp": max(abs(r["deviation_pp"]) for r in rows),
        "concurrency": concurrency,
        "queries_per_second": round(queries / elapsed, 1),
    }


def main() -> None:
    queries = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    result = run(queries)
    print(
        f"{result['queries']} queries at {result['queries_per_second']}/s "
        f"(UDP, {result['concurrency']} in flight)"
    )
    print(f"{'address':<14} {'answers':>8} {'expected %':>11} {'observed %':>11} {'dev pp':>7}")
    for row in result["rows"]:
        print(
            f"{row['address']:<14} {row['answers']:>8} {row['expected_pct']:>11.2f} "
            f"{row['observed_pct']:>11.2f} {row['deviation_pp']:>+7.2f}"
        )
    print(f"max deviation: {result['max_deviation_pp']:.2f} percentage points")
    if result["unexpected"]:
        print(f"unexpected answers: {', '.join(result['unexpected'])}")


if __name__ == "__main__":
    main()
