"""Window aggregation (pure) and the Prometheus source against a loopback HTTP server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from xplane.autoscale.metrics import RegionMetrics, Sample, aggregate, percentile
from xplane.netutil import free_port
from xplane.probes.prometheus import (
    DEFAULT_CPU_QUERY,
    PrometheusError,
    PromQueries,
    prometheus_region_metrics,
)

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)


def at(seconds_ago: float) -> datetime:
    return NOW - timedelta(seconds=seconds_ago)


# ---------------------------------------------------------------------- aggregate
def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(10, 101, 10)]  # 10..100
    assert percentile(values, 0.5) == pytest.approx(55.0)
    assert percentile(values, 0.9) == pytest.approx(91.0)
    assert percentile([7.0], 0.9) == 7.0
    assert percentile([100.0, 1.0, 50.0], 0.5) == 50.0  # order does not matter
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)


def test_aggregate_means_per_node_and_pooled_rtt() -> None:
    samples = [
        # node a reports three times, node b once: each node counts once in cpu/error
        Sample(node_id="a", at=at(50), cpu=0.2, rtt_ms=10, error_rate=0.0, qps=100),
        Sample(node_id="a", at=at(30), cpu=0.4, rtt_ms=20, error_rate=0.0, qps=200),
        Sample(node_id="a", at=at(10), cpu=0.6, rtt_ms=30, error_rate=0.3, qps=300),
        Sample(node_id="b", at=at(5), cpu=0.8, rtt_ms=40, error_rate=0.1, qps=50),
    ]
    m = aggregate(samples, NOW, WINDOW)
    assert m.cpu == pytest.approx((0.4 + 0.8) / 2)
    assert m.error_rate == pytest.approx((0.1 + 0.1) / 2)
    assert m.qps_total == pytest.approx(200 + 50)
    assert m.qps_per_node == pytest.approx(125)
    assert m.rtt_p50_ms == pytest.approx(25)  # pooled [10, 20, 30, 40]
    assert m.rtt_p90_ms == pytest.approx(37)
    assert (m.nodes_reporting, m.samples) == (2, 4)
    assert (m.oldest_at, m.newest_at) == (at(50), at(5))


def test_aggregate_cuts_the_window() -> None:
    samples = [
        Sample(node_id="old", at=at(61), cpu=1.0, rtt_ms=1000),  # just outside
        Sample(node_id="a", at=at(60), cpu=0.5, rtt_ms=10),  # the edge is inside
        Sample(node_id="future", at=NOW + timedelta(seconds=1), cpu=1.0),  # not yet seen
    ]
    m = aggregate(samples, NOW, WINDOW)
    assert (m.cpu, m.rtt_p90_ms, m.nodes_reporting) == (0.5, 10, 1)
    assert m.oldest_at == m.newest_at == at(60)


def test_aggregate_partial_and_empty() -> None:
    only_cpu = aggregate([Sample(node_id="a", at=at(1), cpu=0.3)], NOW, WINDOW)
    assert only_cpu.cpu == 0.3
    assert only_cpu.rtt_p90_ms is only_cpu.qps_total is only_cpu.error_rate is None
    empty = aggregate([Sample(node_id="a", at=at(120), cpu=0.9)], NOW, WINDOW)
    assert empty == RegionMetrics()
    assert not empty.is_fresh(NOW, WINDOW)


def test_naive_sample_times_are_utc() -> None:
    m = aggregate([Sample(node_id="a", at=at(5).replace(tzinfo=None), cpu=0.4)], NOW, WINDOW)
    assert m.cpu == 0.4 and m.is_fresh(NOW, WINDOW)
    assert not m.is_fresh(NOW + WINDOW, WINDOW)


def test_summary_rounds_and_skips_unknowns() -> None:
    m = RegionMetrics(cpu=0.123456, nodes_reporting=3)
    assert m.summary() == {"nodes_reporting": 3, "cpu": 0.1235}


# --------------------------------------------------------------------- prometheus
class _FakePrometheus:
    """Speaks /api/v1/query like Prometheus; answers by the first rule whose key is in the query."""

    def __init__(self, rules: dict[str, Any]) -> None:
        self.rules = rules
        self.queries: list[dict[str, list[str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                params = parse_qs(url.query)
                owner.queries.append(params)
                status, body = 404, {"status": "error", "error": "not found"}
                if url.path == "/api/v1/query":
                    status, body = owner.answer(params["query"][0])
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, query: str) -> tuple[int, Any]:
        for key, result in self.rules.items():
            if key in query:
                if isinstance(result, tuple):
                    return result
                return 200, {"status": "success", "data": result}
        return 200, {"status": "success", "data": {"resultType": "vector", "result": []}}


def vector(*values: str, ts: float = NOW.timestamp()) -> dict[str, Any]:
    result = [{"metric": {"instance": f"n{i}"}, "value": [ts, v]} for i, v in enumerate(values)]
    return {"resultType": "vector", "result": result}


@pytest.fixture
def prometheus() -> Iterator[_FakePrometheus]:
    fake = _FakePrometheus({})
    thread = threading.Thread(target=fake.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


QUERIES = PromQueries(
    rtt_p50_ms="histogram_quantile(0.5, rtt{{region='{region}'}}[{window}])",
    rtt_p90_ms="histogram_quantile(0.9, rtt{{region='{region}'}}[{window}])",
    error_rate="errors{{region='{region}'}}",
    qps_total="requests{{region='{region}'}}",
)


async def test_prometheus_default_cpu_query_and_all_numbers(prometheus: _FakePrometheus) -> None:
    prometheus.rules = {
        "node_cpu_seconds_total{mode": vector("0.82"),
        "count(count by": {"resultType": "scalar", "result": [NOW.timestamp(), "4"]},
        "histogram_quantile(0.5": vector("120"),
        "histogram_quantile(0.9": vector("NaN"),
        "errors": vector("0.02"),
        "requests": vector("400"),
    }
    m = await prometheus_region_metrics(
        prometheus.url, "svc-plus", "jp", WINDOW, queries=QUERIES, now=NOW
    )
    assert m is not None
    assert (m.cpu, m.nodes_reporting, m.rtt_p50_ms, m.rtt_p90_ms) == (0.82, 4, 120, None)
    assert (m.error_rate, m.qps_total, m.qps_per_node) == (0.02, 400, 100)
    assert m.newest_at == NOW and m.oldest_at == NOW - WINDOW
    cpu_query = prometheus.queries[0]["query"][0]
    assert cpu_query == DEFAULT_CPU_QUERY.format(service="svc-plus", region="jp", window="60s")
    assert 'service="svc-plus",region="jp"' in cpu_query and "[60s]" in cpu_query
    assert prometheus.queries[0]["time"] == [f"{NOW.timestamp():.3f}"]


async def test_prometheus_without_cpu_data_is_none(prometheus: _FakePrometheus) -> None:
    assert await prometheus_region_metrics(prometheus.url, "svc", "sg", WINDOW, now=NOW) is None
    assert len(prometheus.queries) == 1  # no point asking the rest


async def test_prometheus_errors_name_the_query(prometheus: _FakePrometheus) -> None:
    prometheus.rules = {"node_cpu": (400, {"status": "error", "error": "parse error at char 3"})}
    with pytest.raises(PrometheusError, match="parse error at char 3") as info:
        await prometheus_region_metrics(prometheus.url, "svc", "jp", WINDOW, now=NOW)
    assert "node_cpu_seconds_total" in str(info.value)

    prometheus.rules = {"node_cpu": vector("0.1", "0.2")}
    with pytest.raises(PrometheusError, match="returned 2 series"):
        await prometheus_region_metrics(prometheus.url, "svc", "jp", WINDOW, now=NOW)


async def test_prometheus_unreachable_hides_credentials() -> None:
    url = f"http://user:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError) as info:
        await prometheus_region_metrics(url, "svc", "jp", WINDOW, now=NOW)
    assert "s3cret" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
