"""Table tests and properties of the pure desired-node-count function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xplane.autoscale.desired import Decision, ScaleHistory, desired, replace_budget
from xplane.autoscale.metrics import RegionMetrics
from xplane.config.models import AutoscaleRegion, Cooldown

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(seconds=60)
COOLDOWN = Cooldown(scale_up=timedelta(seconds=60), scale_down=timedelta(seconds=300))
LOW_FOR_WINDOW = ScaleHistory(low_since=NOW - WINDOW)


def metrics(age: float = 0, **values: Any) -> RegionMetrics:
    return RegionMetrics(nodes_reporting=2, newest_at=NOW - timedelta(seconds=age), **values)


def ago(seconds: float, direction: str = "up", **extra: Any) -> ScaleHistory:
    return ScaleHistory(
        last_scaled_at=NOW - timedelta(seconds=seconds), last_direction=direction, **extra
    )


def run(
    m: RegionMetrics | None,
    current: int,
    history: ScaleHistory = LOW_FOR_WINDOW,
    ready: int | None = None,
    held: int = 0,
    max_replace: int | str = "25%",
    **policy: Any,
) -> Decision:
    rules = AutoscaleRegion(**{"min_nodes": 1, "max_nodes": 10, **policy})
    return desired(
        m,
        rules,
        COOLDOWN,
        WINDOW,
        current,
        history,
        NOW,
        healthy_nodes=ready,
        held_nodes=held,
        max_replace=max_replace,
    )


# (id, decision, desired, direction, blocked_by, text in reason)
CASES = [
    ("band no-op", run(metrics(cpu=0.5), 3), 3, "none", None, "cpu 0.50 within [0.30, 0.70]"),
    ("scale up", run(metrics(cpu=0.82), 3), 4, "up", None, "cpu 0.82 > 0.70 for 60s"),
    ("scale up step", run(metrics(cpu=0.82), 3, scale_up_step=2), 5, "up", None, "0.82 > 0.70"),
    ("scale down", run(metrics(cpu=0.1), 3), 2, "down", None, "cpu 0.10 < 0.30 for 60s"),
    ("down step", run(metrics(cpu=0.1), 5, scale_down_step=3), 2, "down", None, "0.10 < 0.30"),
    ("clamp at max", run(metrics(cpu=0.9), 10), 10, "none", "max_nodes", "at max_nodes 10"),
    (
        "step capped at max",
        run(metrics(cpu=0.9), 9, scale_up_step=3),
        10,
        "up",
        None,
        "capped at max_nodes 10",
    ),
    ("clamp at quota", run(metrics(cpu=0.9), 4, quota=4), 4, "none", "quota", "at quota 4"),
    ("down at min", run(metrics(cpu=0.1), 1), 1, "none", None, "at min_nodes 1"),
    (
        "replace lost nodes without metrics",
        run(None, 3, ready=1, max_replace=2, min_nodes=3),
        5,
        "up",
        None,
        "1 healthy < min_nodes 3: replace 2",
    ),
    (
        "a small pool replaces 1 per decision by default",
        run(None, 3, ready=1, min_nodes=3),
        4,
        "up",
        None,
        "1 healthy < min_nodes 3: replace 1 of 2 (max_replace 1)",
    ),
    (
        "a pool of 8 replaces 25% per decision by default",
        run(None, 8, ready=4, min_nodes=8, max_nodes=20),
        10,
        "up",
        None,
        "4 healthy < min_nodes 8: replace 2 of 4 (max_replace 2)",
    ),
    (
        "down nodes not given up are not replaced",
        run(None, 3, ready=1, held=2, max_replace=3, min_nodes=3),
        3,
        "none",
        "stale_metrics",
        "no metrics in the window; 2 down, held until their lifecycle gives them up",
    ),
    (
        "only the nodes given up are replaced",
        run(None, 4, ready=1, held=1, max_replace=4, min_nodes=4),
        6,
        "up",
        None,
        "1 healthy + 1 down, not given up < min_nodes 4: replace 2",
    ),
    (
        "held nodes do not stop a load scale-up",
        run(metrics(cpu=0.9), 3, ready=1, held=2, min_nodes=3),
        4,
        "up",
        None,
        "cpu 0.90 > 0.70",
    ),
    (
        "replacement within max",
        run(metrics(cpu=0.5), 3, ready=1, max_replace=2, min_nodes=3, max_nodes=4),
        4,
        "up",
        None,
        "replace 2; capped at max_nodes 4",
    ),
    ("enough ready nodes", run(metrics(cpu=0.5), 3, ready=2, min_nodes=2), 3, "none", None, ""),
    (
        "cooldown blocks up",
        run(metrics(cpu=0.82), 3, ago(30)),
        3,
        "none",
        "cooldown",
        "cooldown: last scale-up 30s ago < 60s (wanted 4: cpu 0.82 > 0.70 for 60s)",
    ),
    ("up after cooldown", run(metrics(cpu=0.82), 3, ago(61)), 4, "up", None, "0.82 > 0.70"),
    (
        "down cooldown does not block up",
        run(metrics(cpu=0.82), 3, ago(120, "down")),
        4,
        "up",
        None,
        "",
    ),
    (
        "cooldown blocks down",
        run(metrics(cpu=0.1), 3, ago(120, low_since=NOW - WINDOW)),
        3,
        "none",
        "cooldown",
        "cooldown: last scale-up 120s ago < 300s",
    ),
    (
        "down after cooldown",
        run(metrics(cpu=0.1), 3, ago(301, low_since=NOW - WINDOW)),
        2,
        "down",
        None,
        "",
    ),
    (
        "stale metrics never scale down",
        run(metrics(age=120, cpu=0.1), 3),
        3,
        "none",
        "stale_metrics",
        "stale metrics: newest sample 120s old > window 60s",
    ),
    ("no metrics", run(None, 3), 3, "none", "stale_metrics", "no metrics in the window"),
    (
        "stale metrics still replace lost nodes",
        run(metrics(age=120, cpu=0.1), 2, ready=0, max_replace="100%", min_nodes=2),
        4,
        "up",
        None,
        "0 healthy",
    ),
    (
        "low signal just started",
        run(metrics(cpu=0.1), 3, ScaleHistory()),
        3,
        "none",
        "stabilization",
        "low for 0s < window 60s",
    ),
    (
        "low for less than the window",
        run(metrics(cpu=0.1), 3, ScaleHistory(low_since=NOW - timedelta(seconds=45))),
        3,
        "none",
        "stabilization",
        "low for 45s < window 60s",
    ),
    (
        "low for the whole window",
        run(metrics(cpu=0.1), 3, ScaleHistory(low_since=NOW - timedelta(seconds=60))),
        2,
        "down",
        None,
        "",
    ),
    (
        "proportional up bounded by step",
        run(metrics(cpu=0.95), 4, target_cpu=0.5, scale_up_step=2),
        6,
        "up",
        None,
        "",
    ),
    (
        "proportional up within step",  # ceil(4 * 0.95 / 0.5) = 8
        run(metrics(cpu=0.95), 4, target_cpu=0.5, scale_up_step=10),
        8,
        "up",
        None,
        "",
    ),
    (
        "proportional up at least one node",  # ceil(2 * 0.75 / 0.9) = 2
        run(metrics(cpu=0.75), 2, target_cpu=0.9, scale_up_step=5),
        3,
        "up",
        None,
        "",
    ),
    (
        "proportional down bounded by step",  # ceil(10 * 0.1 / 0.5) = 2
        run(metrics(cpu=0.1), 10, target_cpu=0.5, scale_down_step=3),
        7,
        "down",
        None,
        "",
    ),
    (
        "proportional down within step",
        run(metrics(cpu=0.1), 10, target_cpu=0.5, scale_down_step=9),
        2,
        "down",
        None,
        "",
    ),
    (
        "qps proportional, bounded",  # ceil(2 * 250 / 100) = 5
        run(metrics(qps_per_node=250.0), 2, target_qps_per_node=100, scale_up_step=5),
        5,
        "up",
        None,
        "qps/node 250.0 vs target 100",
    ),
    (
        "qps within tolerance",
        run(metrics(qps_per_node=105.0), 2, target_qps_per_node=100, scale_up_step=5),
        2,
        "none",
        None,
        "",
    ),
    (
        "rtt p90 triggers up",
        run(metrics(cpu=0.5, rtt_p50_ms=150, rtt_p90_ms=250), 3, max_rtt_ms=200),
        4,
        "up",
        None,
        "rtt p90 250ms > 200ms for 60s",
    ),
    (
        "rtt below threshold",
        run(metrics(cpu=0.5, rtt_p50_ms=50, rtt_p90_ms=150), 3, max_rtt_ms=200),
        3,
        "none",
        None,
        "within",
    ),
    (
        "error rate triggers up",
        run(metrics(cpu=0.5, error_rate=0.1), 3, max_error_rate=0.05),
        4,
        "up",
        None,
        "error rate 0.100 > 0.050 for 60s",
    ),
    (
        "rtt beats a low cpu",
        run(metrics(cpu=0.1, rtt_p90_ms=500), 3, max_rtt_ms=200),
        4,
        "up",
        None,
        "rtt p90 500ms",
    ),
    (
        "largest recommendation wins",
        run(
            metrics(cpu=0.82, qps_per_node=300.0),
            2,
            target_cpu=0.7,  # cpu alone: ceil(2 * 0.82 / 0.7) = 3
            target_qps_per_node=100,  # qps: ceil(2 * 300 / 100) = 6
            scale_up_step=4,
        ),
        6,
        "up",
        None,
        "qps/node 300.0",
    ),
    (
        "below min_nodes ignores cooldown and metrics",
        run(None, 0, ago(1)),
        1,
        "up",
        None,
        "below min_nodes 1",
    ),
    (
        "above max_nodes comes down at once",
        run(metrics(cpu=0.5), 8, ago(1), max_nodes=5),
        5,
        "down",
        None,
        "above max_nodes 5",
    ),
    (
        "quota wins over min_nodes",
        run(metrics(cpu=0.9), 3, min_nodes=5, quota=3),
        3,
        "none",
        "quota",
        "",
    ),
]


@pytest.mark.parametrize(
    ("decision", "want", "direction", "blocked_by", "text"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_decision_table(
    decision: Decision, want: int, direction: str, blocked_by: str | None, text: str
) -> None:
    assert (decision.desired, decision.direction, decision.blocked_by) == (
        want,
        direction,
        blocked_by,
    ), decision.reason
    assert text in decision.reason


def test_history_after_a_change_records_it_and_restarts_stabilisation() -> None:
    decision = run(metrics(cpu=0.1), 3)
    assert decision.direction == "down"
    assert decision.history == ScaleHistory(last_scaled_at=NOW, last_direction="down")


def test_history_low_since_starts_is_kept_and_resets() -> None:
    first = run(metrics(cpu=0.1), 3, ScaleHistory())
    assert first.history.low_since == NOW
    earlier = NOW - timedelta(seconds=20)
    held = run(metrics(cpu=0.1), 3, ScaleHistory(low_since=earlier))
    assert held.history.low_since == earlier
    recovered = run(metrics(cpu=0.5), 3, ScaleHistory(low_since=earlier))
    assert recovered.history.low_since is None
    stale = run(metrics(age=300, cpu=0.1), 3, ScaleHistory(low_since=earlier))
    assert stale.history.low_since is None  # cannot claim the signal held while blind


def test_cooldown_history_survives_a_blocked_decision() -> None:
    history = ago(30)
    decision = run(metrics(cpu=0.82), 3, history)
    assert decision.history.last_scaled_at == history.last_scaled_at


def test_naive_datetimes_are_utc() -> None:
    naive = RegionMetrics(nodes_reporting=1, cpu=0.9, newest_at=NOW.replace(tzinfo=None))
    decision = desired(
        naive, AutoscaleRegion(), COOLDOWN, WINDOW, 2, ScaleHistory(), NOW.replace(tzinfo=None)
    )
    assert decision.desired == 3


@settings(max_examples=250, deadline=None)
@given(
    min_nodes=st.integers(0, 12),
    extra=st.integers(0, 12),
    quota=st.none() | st.integers(0, 25),
    current=st.integers(0, 30),
    cpu=st.none() | st.floats(0, 1),
    rtt=st.none() | st.floats(0, 1000),
    qps=st.none() | st.floats(0, 1000),
    age=st.integers(0, 200),
    ready=st.none() | st.integers(0, 30),
    last=st.none() | st.integers(0, 600),
    low=st.none() | st.integers(0, 120),
    up_step=st.integers(1, 5),
    down_step=st.integers(1, 5),
    target_cpu=st.none() | st.floats(0.05, 1),
)
def test_desired_stays_within_bounds(
    min_nodes: int,
    extra: int,
    quota: int | None,
    current: int,
    cpu: float | None,
    rtt: float | None,
    qps: float | None,
    age: int,
    ready: int | None,
    last: int | None,
    low: int | None,
    up_step: int,
    down_step: int,
    target_cpu: float | None,
) -> None:
    policy = AutoscaleRegion(
        min_nodes=min_nodes,
        max_nodes=min_nodes + extra,
        quota=quota,
        scale_up_step=up_step,
        scale_down_step=down_step,
        target_cpu=target_cpu,
        target_qps_per_node=50,
        max_rtt_ms=300,
    )
    m = metrics(age=age, cpu=cpu, rtt_p90_ms=rtt, rtt_p50_ms=rtt, qps_per_node=qps)
    history = ScaleHistory(
        last_scaled_at=None if last is None else NOW - timedelta(seconds=last),
        low_since=None if low is None else NOW - timedelta(seconds=low),
    )
    decision = desired(m, policy, COOLDOWN, WINDOW, current, history, NOW, healthy_nodes=ready)

    cap = policy.max_nodes if quota is None else min(policy.max_nodes, quota)
    floor = min(min_nodes, cap)  # the quota is a hard limit: it wins over min_nodes
    assert floor <= decision.desired <= cap
    assert decision.direction == (
        "up" if decision.desired > current else "down" if decision.desired < current else "none"
    )
    assert decision.reason
    if floor <= current <= cap:
        # inside the bounds, one decision moves at most one step (or the lost nodes)
        lost = max(0, min_nodes - ready) if ready is not None else 0
        assert decision.desired - current <= max(up_step, lost)
        assert current - decision.desired <= down_step
        if age > WINDOW.total_seconds():
            assert decision.desired >= current  # stale metrics never scale down


@pytest.mark.parametrize(
    ("max_replace", "pool", "budget"),
    [
        ("25%", 0, 1),  # an emptied pool still gets a node back
        ("25%", 1, 1),
        ("25%", 4, 1),  # 1 node or 25 %, whichever is larger
        ("25%", 5, 2),  # rounded up, as Karpenter does
        ("25%", 8, 2),
        ("25%", 12, 3),
        ("50%", 3, 2),
        ("100%", 7, 7),
        (3, 100, 3),  # a count is a count, whatever the pool
        (1, 2, 1),
    ],
)
def test_replace_budget(max_replace: int | str, pool: int, budget: int) -> None:
    assert replace_budget(max_replace, pool) == budget


@given(
    pool=st.integers(min_value=1, max_value=200),
    healthy=st.integers(min_value=0, max_value=200),
    held=st.integers(min_value=0, max_value=200),
)
@settings(max_examples=200, deadline=None)
def test_one_decision_never_replaces_more_than_the_budget_or_the_nodes_given_up(
    pool: int, healthy: int, held: int
) -> None:
    decision = run(None, pool, ready=healthy, held=held, min_nodes=pool, max_nodes=1000)
    given_up = max(0, pool - healthy - held)
    assert decision.desired - pool == min(given_up, replace_budget("25%", pool))
