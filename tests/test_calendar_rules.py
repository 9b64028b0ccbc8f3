"""Pure calendar rules: window floors, the pre-warm lead, late pre-warms, maintenance weights."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from xplane.autoscale.calendar import (
    CalendarFloor,
    Entered,
    Lead,
    calendar_floor,
    is_late,
    lead_for,
    p95,
)
from xplane.autoscale.desired import ScaleHistory, desired
from xplane.autoscale.metrics import RegionMetrics
from xplane.config.models import (
    AutoscaleRegion,
    Cooldown,
    GtmPolicy,
    MaintenanceWindow,
    ScheduleWindow,
)
from xplane.gtm.maintenance import apply_maintenance, maintenance_factors
from xplane.gtm.ramp import ramp_service
from xplane.gtm.weights import RegionWeight, ServiceWeights, WeightedRecord

TOKYO = ZoneInfo("Asia/Tokyo")
DAY = ScheduleWindow.model_validate(
    {
        "name": "tokyo-day",
        "cron": "0 9 * * 1-5",
        "timezone": "Asia/Tokyo",
        "duration": "9h",
        "min_nodes": 6,
    }
)
LAUNCH = ScheduleWindow.model_validate(
    {"name": "launch", "cron": "0 12 7 12 *", "timezone": "Asia/Tokyo", "duration": "2h"}
    | {"min_nodes": 9}
)
LEAD = Lead(seconds=600, reason="lead_min 10m")
MONDAY_9 = datetime(2026, 12, 7, 9, 0, tzinfo=TOKYO)  # a Monday


def test_floor_before_during_and_after_a_window() -> None:
    assert calendar_floor([DAY], MONDAY_9 - timedelta(minutes=11), LEAD).floor == 0
    early = calendar_floor([DAY], MONDAY_9 - timedelta(minutes=10), LEAD)
    assert early.floor == 6 and not early.no_scale_in  # pre-warm: the lead ahead
    assert "pre-warm for window 'tokyo-day' opening in 10m" in early.reason
    during = calendar_floor([DAY], MONDAY_9 + timedelta(hours=8, minutes=59), LEAD)
    assert during.floor == 6 and during.no_scale_in
    assert "open until 2026-12-07 18:00 JST" in during.reason
    assert calendar_floor([DAY], MONDAY_9 + timedelta(hours=9), LEAD).floor == 0  # closed
    saturday = datetime(2026, 12, 12, 10, 0, tzinfo=TOKYO)
    assert calendar_floor([DAY], saturday, LEAD).floor == 0  # 1-5: weekdays only


def test_cron_is_read_in_the_window_zone_whatever_the_instant_zone() -> None:
    in_utc = MONDAY_9.astimezone(UTC) + timedelta(minutes=1)  # 00:01 UTC
    assert calendar_floor([DAY], in_utc, LEAD).floor == 6


def test_overlapping_windows_take_the_larger_floor() -> None:
    noon = datetime(2026, 12, 7, 12, 30, tzinfo=TOKYO)
    both = calendar_floor([DAY, LAUNCH], noon, LEAD)
    assert both.floor == 9
    assert "window 'launch'" in both.reason and "also 'tokyo-day'" in both.reason
    assert [w.name for w in both.windows] == ["tokyo-day", "launch"]
    after = calendar_floor([DAY, LAUNCH], noon + timedelta(hours=2), LEAD)
    assert after.floor == 6  # launch closed at 14:00, the day window still open


def test_entered_windows_count_until_they_close_and_only_if_configured() -> None:
    at = datetime(2026, 12, 12, 10, 0, tzinfo=TOKYO)  # Saturday: not by cron
    entered = [Entered(name="tokyo-day", opens=at, closes=at + timedelta(hours=1))]
    assert calendar_floor([DAY], at, LEAD, entered).floor == 6
    assert calendar_floor([DAY], at + timedelta(hours=1), LEAD, entered).floor == 0
    gone = [Entered(name="removed", opens=at, closes=at + timedelta(hours=1))]
    assert calendar_floor([DAY], at, LEAD, gone).floor == 0


def test_lead_is_the_recent_p95_at_least_lead_min() -> None:
    assert p95([]) == 0
    assert p95(list(range(1, 101))) == 95
    assert lead_for([], timedelta(minutes=10)).seconds == 600
    short = lead_for([120, 180, 240], timedelta(minutes=10))
    assert short.seconds == 600 and short.reason.startswith("lead_min 10m (p95 4m")
    long = lead_for([900] * 18 + [1500] * 2, timedelta(minutes=10))
    assert long.seconds == 1500 and long.reason == "p95 25m of 20 commit->active"
    old_outlier = lead_for([5000] + [700] * 20, timedelta(minutes=10))
    assert old_outlier.seconds == 700  # only the 20 most recent count


def test_late_prewarm() -> None:
    lead = Lead(seconds=1200, reason="p95 20m")
    slack = timedelta(seconds=35)
    on_time = calendar_floor([DAY], MONDAY_9 - timedelta(minutes=19, seconds=45), lead)
    assert not is_late(on_time.windows[0], lead.seconds, current=1, slack=slack)
    late = calendar_floor([DAY], MONDAY_9 - timedelta(minutes=5), lead)
    assert is_late(late.windows[0], lead.seconds, current=1, slack=slack)
    assert not is_late(late.windows[0], lead.seconds, current=6, slack=slack)  # already there


POLICY = AutoscaleRegion(min_nodes=1, max_nodes=8, scale_up_cpu=0.7, scale_down_cpu=0.3)
COOLDOWN = Cooldown(scale_up=timedelta(minutes=1), scale_down=timedelta(minutes=5))
WINDOW = timedelta(seconds=60)


def _metrics(cpu: float, at: datetime) -> RegionMetrics:
    return RegionMetrics(cpu=cpu, nodes_reporting=2, newest_at=at)


def test_desired_takes_the_floor_at_once_and_never_scales_in_inside_a_window() -> None:
    now = MONDAY_9 - timedelta(minutes=10)
    cal = calendar_floor([DAY], now, LEAD)
    recent = ScaleHistory(last_scaled_at=now - timedelta(seconds=10), last_direction="up")
    up = desired(_metrics(0.5, now), POLICY, COOLDOWN, WINDOW, 2, recent, now, calendar=cal)
    assert up.desired == 6 and up.direction == "up"  # a floor bypasses the cooldown
    assert "below scheduled floor 6: pre-warm for window 'tokyo-day'" in up.reason

    inside = MONDAY_9 + timedelta(hours=1)
    cal = calendar_floor([DAY], inside, LEAD)
    low = ScaleHistory(low_since=inside - timedelta(hours=1))
    held = desired(_metrics(0.05, inside), POLICY, COOLDOWN, WINDOW, 8, low, inside, calendar=cal)
    assert held.desired == 8 and held.blocked_by == "window"
    assert "no scale-in: window 'tokyo-day'" in held.reason
    free = desired(_metrics(0.05, inside), POLICY, COOLDOWN, WINDOW, 8, low, inside)
    assert free.desired == 7  # the same tick without the calendar scales in

    after = MONDAY_9 + timedelta(hours=9)
    cal = calendar_floor([DAY], after, LEAD)
    assert cal == CalendarFloor(lead_seconds=600)
    out = desired(_metrics(0.05, after), POLICY, COOLDOWN, WINDOW, 6, low, after, calendar=cal)
    assert out.desired == 5  # released after the window


def test_floor_is_capped_by_quota() -> None:
    now = MONDAY_9
    capped = POLICY.model_copy(update={"quota": 4})
    cal = calendar_floor([DAY], now, LEAD)
    d = desired(None, capped, COOLDOWN, WINDOW, 2, ScaleHistory(), now, calendar=cal)
    assert d.desired == 4


GTM = GtmPolicy.model_validate(
    {
        "service": "svc",
        "domain": "api.svc.plus",
        "regions": [{"name": "jp", "weight": 100}, {"name": "sg", "weight": 100}],
        "slow_start": "2m",
        "maintenance": [
            {"region": "jp", "cron": "0 2 * * 2", "timezone": "Asia/Tokyo", "duration": "1h"},
            {"name": "half", "region": "jp", "start": "2026-12-08T02:30:00", "duration": "2h"}
            | {"timezone": "Asia/Tokyo", "weight": 0.5},
        ],
    }
)


def _weights() -> ServiceWeights:
    def region(w: float) -> RegionWeight:
        return RegionWeight(
            base_weight=w,
            health_ratio=1,
            ready_nodes_factor=1,
            latency_factor=1,
            effective_weight=w,
            ready_nodes=1,
            registered_nodes=1,
            desired_nodes=1,
        )

    return ServiceWeights(
        service="svc",
        regions={"jp": region(100), "sg": region(100)},
        records=[
            WeightedRecord("10.0.0.1", "jp", "jp-0", 100),
            WeightedRecord("10.0.0.2", "sg", "sg-0", 100),
        ],
    )


def test_maintenance_factor_lowest_open_window_wins() -> None:
    tuesday_2 = datetime(2026, 12, 8, 2, 0, tzinfo=TOKYO)
    assert maintenance_factors(GTM, tuesday_2 - timedelta(minutes=1)) == {}
    first = maintenance_factors(GTM, tuesday_2 + timedelta(minutes=45))["jp"]
    assert first.factor == 0 and first.name == "jp-0"  # both open: 0 < 0.5
    second = maintenance_factors(GTM, tuesday_2 + timedelta(hours=1, minutes=1))["jp"]
    assert second.factor == 0.5 and second.name == "half"
    assert maintenance_factors(GTM, tuesday_2 + timedelta(hours=4, minutes=30)) == {}
    entered = [Entered(name="jp-0", opens=tuesday_2, closes=tuesday_2 + timedelta(days=1))]
    assert maintenance_factors(GTM, tuesday_2 + timedelta(hours=5), entered)["jp"].factor == 0


def test_maintenance_drops_at_once_and_comes_back_through_slow_start() -> None:
    t0 = datetime(2026, 12, 8, 2, 0, tzinfo=TOKYO)
    slow = timedelta(minutes=2)
    down = apply_maintenance(_weights(), maintenance_factors(GTM, t0))
    assert down.weights() == {"jp": 0, "sg": 100}
    assert [r.address for r in down.records] == ["10.0.0.2"]
    assert down.regions["jp"].reason == "maintenance 'jp-0': weight x 0"
    ramped, state = ramp_service(down, {}, t0, slow)
    assert ramped.weights()["jp"] == 0
    back = t0 + timedelta(hours=4, minutes=31)  # every window closed
    targets = apply_maintenance(_weights(), maintenance_factors(GTM, back))
    mid, state = ramp_service(targets, state, back, slow)
    assert mid.weights()["jp"] == 0  # the ramp starts from 0
    half, _ = ramp_service(targets, state, back + timedelta(minutes=1), slow)
    assert half.weights()["jp"] == 50
    full, _ = ramp_service(targets, state, back + slow, slow)
    assert full.weights()["jp"] == 100


def test_maintenance_windows_validate_directly() -> None:
    window = MaintenanceWindow(region="jp", cron="0 2 * * 2", duration=timedelta(hours=1))
    assert window.label(3) == "jp-3"


def test_forecast_profile_is_the_p90_of_each_hour_of_the_week() -> None:
    from xplane.autoscale.forecast import HourLoad, profile, sample_hours, suggest, suggested_floor
    from xplane.store.samples import Sample

    utc = ZoneInfo("UTC")
    monday = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    # Ten Mondays 09:00: nine quiet, one busy. p90 of 10 values is the 9th: quiet wins.
    hours = {monday - timedelta(weeks=w): (100.0 if w else 900.0, 1.0) for w in range(10)}
    slot = profile(hours, utc)[0 * 24 + 9]
    assert slot == HourLoad(qps=100.0, cpu_nodes=1.0, hours=10)
    # Two busy Mondays of ten: the p90 is busy.
    hours[monday - timedelta(weeks=3)] = (900.0, 1.0)
    assert profile(hours, utc)[9].qps == 900.0

    # Samples: two nodes in the same minute add up; minutes of an hour average.
    def s(node: str, at: datetime, qps: float | None, cpu: float) -> Sample:
        return Sample(
            node_id=node,
            service="svc",
            region="jp",
            at=at,
            cpu=cpu,
            rtt_ms=1,
            error_rate=0,
            qps=qps,
        )

    got = sample_hours(
        [
            s("a", monday, 10, 0.5),
            s("b", monday + timedelta(seconds=5), 30, 0.5),
            s("a", monday + timedelta(minutes=1), 20, 1.0),
            s("b", monday + timedelta(minutes=1), None, 1.0),
        ]
    )
    assert got == {monday: ((40 + 20) / 2, (1.0 + 2.0) / 2)}

    cpu_policy = AutoscaleRegion(min_nodes=2, max_nodes=6, target_cpu=0.5)
    assert suggested_floor(HourLoad(qps=None, cpu_nodes=2.2, hours=1), cpu_policy)[0] == 5
    assert suggested_floor(HourLoad(qps=None, cpu_nodes=9.0, hours=1), cpu_policy)[0] == 6
    assert suggested_floor(HourLoad(qps=None, cpu_nodes=0.1, hours=1), cpu_policy)[0] == 2
    rows = suggest({9: HourLoad(qps=None, cpu_nodes=2.2, hours=3)}, cpu_policy, monday, 3, utc)
    assert [(r.at.hour, r.suggested) for r in rows] == [(9, 5), (10, None), (11, None)]
