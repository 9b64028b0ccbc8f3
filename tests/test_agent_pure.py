"""Pure parts of `xplane agent`: backoff, CPU math, Prometheus rates, probes, health routes."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from xplane.agent.backoff import Backoff
from xplane.agent.config import AgentConfig
from xplane.agent.cpu import CpuTimes, busy_fraction, parse_proc_stat
from xplane.agent.health import HealthView, parse_host_port, respond
from xplane.agent.probes import ProbeResult, summarise_rtt, validate_target
from xplane.agent.prom import (
    CounterSelector,
    CounterTotals,
    PromParseError,
    counter_totals,
    parse_exposition,
    rates,
)

# ------------------------------------------------------------------ backoff


def test_backoff_grows_exponentially_and_caps_without_jitter() -> None:
    backoff = Backoff(base=0.5, factor=2, cap=5, jitter=0)
    assert [backoff.delay(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff.delay(10_000) == 5.0  # no float overflow after a long outage


@given(attempt=st.integers(min_value=0, max_value=5000), seed=st.integers())
def test_backoff_jitter_stays_within_its_band(attempt: int, seed: int) -> None:
    backoff = Backoff(base=0.2, factor=3, cap=30, jitter=0.5)
    nominal = Backoff(base=0.2, factor=3, cap=30, jitter=0).delay(attempt)
    delay = backoff.delay(attempt, random.Random(seed))
    assert nominal * 0.5 <= delay <= nominal <= 30


def test_backoff_jitter_spreads_a_fleet() -> None:
    rng = random.Random(7)
    delays = {round(Backoff(jitter=0.5).delay(3, rng), 6) for _ in range(20)}
    assert len(delays) > 10


# ---------------------------------------------------------------------- cpu

PROC_STAT = """cpu  100 5 50 800 20 3 2 0 7 0
cpu0 50 2 25 400 10 1 1 0 0 0
intr 12345
"""


def test_parse_proc_stat_counts_iowait_as_idle_and_skips_guest() -> None:
    times = parse_proc_stat(PROC_STAT)
    # guest (7) is already inside user, so it is not added again.
    assert times == CpuTimes(idle=820, total=100 + 5 + 50 + 800 + 20 + 3 + 2 + 0)


def test_parse_proc_stat_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no aggregate 'cpu' line"):
        parse_proc_stat("cpu0 1 2 3 4\n")
    with pytest.raises(ValueError, match="non-numeric"):
        parse_proc_stat("cpu 1 2 x 4\n")


def test_busy_fraction_is_busy_over_total_delta() -> None:
    assert busy_fraction(CpuTimes(idle=800, total=1000), CpuTimes(idle=860, total=1200)) == 0.7
    assert busy_fraction(CpuTimes(800, 1000), CpuTimes(800, 1000)) == 0.0  # no time passed
    assert busy_fraction(CpuTimes(800, 1000), CpuTimes(10, 20)) == 0.0  # counters reset


@given(
    idle0=st.integers(0, 10**9),
    busy0=st.integers(0, 10**9),
    didle=st.integers(0, 10**6),
    dbusy=st.integers(0, 10**6),
)
def test_busy_fraction_is_a_fraction(idle0: int, busy0: int, didle: int, dbusy: int) -> None:
    prev = CpuTimes(idle0, idle0 + busy0)
    cur = CpuTimes(idle0 + didle, idle0 + busy0 + didle + dbusy)
    value = busy_fraction(prev, cur)
    assert 0.0 <= value <= 1.0
    if didle + dbusy:
        assert value == pytest.approx(dbusy / (didle + dbusy))


def test_real_proc_stat_parses() -> None:
    from xplane.agent.cpu import read_cpu_times

    times = read_cpu_times()
    assert 0 < times.idle < times.total


# --------------------------------------------------------------- prometheus

PAGE = r"""# HELP http_requests_total Requests.
# TYPE http_requests_total counter
http_requests_total{method="GET",status="200"} 90
http_requests_total{method="GET",status="503"} 6 1700000000000
http_requests_total{path="/a,b}\"c\\",status="500"} 4
http_requests_errors_total 7
http_requests_total_other 1000
up NaN
latency_seconds_bucket{le="+Inf"} +Inf # {trace_id="x"} 1
"""


def test_parse_exposition_handles_escapes_timestamps_and_special_values() -> None:
    samples = parse_exposition(PAGE)
    assert samples[2].labels == {"path": '/a,b}"c\\', "status": "500"}
    assert samples[1].value == 6
    assert [s.name for s in samples][-2:] == ["up", "latency_seconds_bucket"]
    assert samples[-1].value == float("inf")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('m{a="1"', "line 1: cannot parse 'm{a=\"1\"'"),
        ('ok 1\nm{1a="x"} 1', "line 2: cannot parse .*Invalid labels: 1a"),
        ("m one", "line 1: cannot parse 'm one': .*'one'"),
        ("m", "line 1: cannot parse 'm'"),
        ('{a="b"} 1', "line 1: cannot parse '{a=\"b\"} 1'"),
        ("# TYPE m\nm 1", "line 1: cannot parse '# TYPE m'"),
    ],
)
def test_parse_exposition_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(PromParseError, match=message):
        parse_exposition(text)


def test_counter_totals_by_status_label_or_by_a_separate_counter() -> None:
    samples = parse_exposition(PAGE)
    by_label = counter_totals(samples, CounterSelector(), at=1.0)
    assert (by_label.requests, by_label.errors) == (100, 10)
    by_counter = counter_totals(
        samples, CounterSelector(errors_metric="http_requests_errors_total"), at=1.0
    )
    assert (by_counter.requests, by_counter.errors) == (100, 7)
    code = counter_totals(samples, CounterSelector(error_label="method", error_pattern="GET"), 1)
    assert code.errors == 96


def test_a_counter_is_selected_with_or_without_its_total_suffix() -> None:
    # The parser names a counter's samples with _total even when the page does not.
    page = '# TYPE reqs counter\nreqs{status="500"} 3\nreqs{status="200"} 5\ngauge_total 9\n'
    samples = parse_exposition(page)
    assert [s.name for s in samples] == ["reqs_total", "reqs_total", "gauge_total"]
    for name in ("reqs", "reqs_total"):
        got = counter_totals(samples, CounterSelector(requests_metric=name), at=1.0)
        assert (got.requests, got.errors) == (8, 3)
    # Only counters answer to the short name: an untyped gauge_total is not "gauge".
    assert counter_totals(samples, CounterSelector(requests_metric="gauge"), 1).requests == 0


def test_counter_selector_rejects_bad_names_and_regexes() -> None:
    with pytest.raises(ValidationError, match="invalid metric name"):
        CounterSelector(requests_metric="http-requests")
    with pytest.raises(ValidationError, match="invalid regular expression"):
        CounterSelector(error_pattern="5[")


def test_rates_between_scrapes() -> None:
    got = rates(CounterTotals(1000, 10, at=100.0), CounterTotals(1200, 30, at=110.0))
    assert got is not None
    assert got.qps == pytest.approx(20.0)
    assert got.error_rate == pytest.approx(0.1)


def test_rates_count_a_reset_counter_from_zero_and_need_time_and_traffic() -> None:
    reset = rates(CounterTotals(5000, 500, at=0.0), CounterTotals(40, 4, at=4.0))
    assert reset is not None
    assert (reset.qps, reset.error_rate) == (10.0, 0.1)
    idle = rates(CounterTotals(10, 1, at=0.0), CounterTotals(10, 1, at=5.0))
    assert idle is not None
    assert (idle.qps, idle.error_rate) == (0.0, 0.0)
    assert rates(CounterTotals(1, 0, at=5.0), CounterTotals(2, 0, at=5.0)) is None


def test_rates_clamp_error_rate_when_errors_outrun_requests() -> None:
    # Separate counters scraped non-atomically can briefly disagree.
    got = rates(CounterTotals(100, 0, at=0.0), CounterTotals(110, 20, at=1.0))
    assert got is not None
    assert got.error_rate == 1.0


# ------------------------------------------------------------------- probes


def _probe(ok: bool, rtt: float) -> ProbeResult:
    return ProbeResult(target="tcp://h:1", ok=ok, rtt_ms=rtt)


def test_rtt_is_the_median_of_successful_probes() -> None:
    results = [_probe(True, 10), _probe(False, 2000), _probe(True, 30), _probe(True, 20)]
    assert summarise_rtt(results, timeout_s=2) == 20
    assert summarise_rtt([_probe(True, 10), _probe(True, 30)], timeout_s=2) == 20


def test_rtt_without_probes_is_zero_and_with_all_failing_is_the_timeout() -> None:
    assert summarise_rtt([], timeout_s=2) == 0.0
    assert summarise_rtt([_probe(False, 3)], timeout_s=1.5) == 1500.0


@pytest.mark.parametrize("target", ["http://10.0.0.1/healthz", "https://x.example", "tcp://h:80"])
def test_valid_probe_targets(target: str) -> None:
    assert validate_target(target) == target


@pytest.mark.parametrize("target", ["tcp://h", "udp://h:53", "h:80", "tcp://h:notaport", "http://"])
def test_invalid_probe_targets_are_named(target: str) -> None:
    with pytest.raises(ValueError, match=f"probe target '{target}'"):
        validate_target(target)


# ------------------------------------------------------------------- health


def test_health_routes() -> None:
    up = HealthView(node_id="jp-1", draining=False)
    drained = HealthView(node_id="jp-1", draining=True)
    assert respond("GET", "/healthz", up) == (200, "ok\n")
    assert respond("GET", "/healthz?x=1", drained) == (503, "draining\n")
    assert respond("HEAD", "/", up) == (200, "jp-1\n")
    assert respond("GET", "/", HealthView(None, False))[0] == 503
    assert respond("POST", "/healthz", up)[0] == 405
    assert respond("GET", "/nope", up)[0] == 404


def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_host_port("[::1]:9") == ("::1", 9)
    for bad in ("8080", "host:", ":80", "h:70000"):
        with pytest.raises(ValueError, match="expected HOST:PORT"):
            parse_host_port(bad)


# ------------------------------------------------------------------- config


def _config(**overrides: object) -> AgentConfig:
    base: dict[str, object] = {
        "server": "http://127.0.0.1:1/",
        "service": "s",
        "region": "r",
        "token_file": "/t",
    }
    return AgentConfig.model_validate(base | overrides)


def test_config_normalises_and_names_bad_fields() -> None:
    assert _config().server == "http://127.0.0.1:1"
    assert _config(serve_health="0.0.0.0:81").health_address == ("0.0.0.0", 81)
    with pytest.raises(ValidationError, match="--server 'cp:80'"):
        _config(server="cp:80")
    with pytest.raises(ValidationError, match="--address 'node-1'"):
        _config(address="node-1")
    with pytest.raises(ValidationError, match="not both"):
        _config(metrics_url="http://x/metrics", metrics_file="/m.json")
    with pytest.raises(ValidationError, match="probe target"):
        _config(probes=["ftp://x"])
