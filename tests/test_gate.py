"""The self-health gate's decision, as a pure function (no store, no Temporal)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from xplane.domain import NodeSnapshot, NodeStatus
from xplane.gate import (
    EVERYWHERE,
    GateDecision,
    GateInputs,
    GateSettings,
    GateState,
    IntakeInput,
    RegionInput,
    decide_gate,
    spend,
    trusted_view,
    unconfirmed_silence,
    verdict_for,
)
from xplane.heartbeat import HeartbeatSettings

HB = HeartbeatSettings(interval=timedelta(seconds=10))  # timeout 30 s
SETTINGS = GateSettings()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def region(name: str, nodes: int, unready: int, service: str = "web") -> RegionInput:
    return RegionInput(service=service, region=name, nodes=nodes, unready=unready, beating=nodes)


def decide(
    regions: list[RegionInput],
    previous: GateState | None = None,
    now: datetime = T0,
    settings: GateSettings = SETTINGS,
    **inputs: object,
) -> GateDecision:
    return decide_gate(
        GateInputs(regions=regions, **inputs),
        previous or GateState(last_scan_at=now - timedelta(seconds=2)),
        now,
        HB,
        settings,
    )


def run(
    steps: list[list[RegionInput]], start: GateState | None = None, every: float = 2.0
) -> list[GateDecision]:
    """Scans ``every`` seconds apart, each carrying the previous state."""
    state, out = start or GateState(last_scan_at=T0 - timedelta(seconds=every)), []
    for i, regions in enumerate(steps):
        d = decide(regions, state, T0 + timedelta(seconds=i * every))
        out.append(d)
        state = d.state
    return out


def test_all_healthy_is_open_and_normal() -> None:
    d = decide([region("jp", 6, 0), region("us", 6, 0)])
    assert d.state.holds == {} and not d.changes
    assert {v.verdict for v in d.regions.values()} == {"normal"}


def test_every_region_silent_holds_the_service() -> None:
    d = decide([region("jp", 6, 6), region("us", 6, 6)])
    assert d.verdict("web", "jp").verdict == "held"
    assert d.verdict("web", "us").verdict == "held"
    assert "every region of web silent at once" in d.verdict("web", "jp").reason
    assert [c.kind for c in d.changes] == ["closed"] and d.changes[0].scope == "web"


def test_nearly_every_region_silent_holds_too() -> None:
    # 4/6 = 67 % > 55 % in each region: not fully silent anywhere, still the gate's.
    d = decide([region("jp", 6, 4), region("us", 6, 4)])
    assert d.verdict("web", "us").verdict == "held"


def test_another_service_is_not_held_by_one_services_silence() -> None:
    d = decide([region("jp", 6, 6), region("jp", 6, 0, service="api")])
    assert d.verdict("web", "jp").verdict == "held"
    assert d.verdict("api", "jp").verdict == "normal"


@pytest.mark.parametrize("size", [3, 6, 60, 600])
def test_one_region_fully_silent_fails_over_at_once_however_large(size: int) -> None:
    d = decide([region("jp", size, size), region("us", 3, 0)])
    assert d.verdict("web", "jp").verdict == "normal"
    assert d.verdict("web", "jp").budget is None
    assert d.state.holds == {}


def test_region_partly_silent_is_rate_limited() -> None:
    d = decide([region("jp", 6, 4), region("us", 6, 0)])
    jp = d.verdict("web", "jp")
    assert jp.verdict == "rate_limited" and jp.budget == 1
    assert [(c.scope, c.kind) for c in d.changes] == [("web/jp", "rate_limited")]
    assert d.verdict("web", "us").verdict == "normal"


def test_rate_limit_allows_one_removal_per_timeout() -> None:
    d = decide([region("jp", 6, 4), region("us", 6, 0)])
    state = spend(d.state, "web", "jp", T0)
    later = decide([region("jp", 6, 4), region("us", 6, 0)], state, T0 + timedelta(seconds=2))
    assert later.verdict("web", "jp").budget == 0
    state = later.state
    for t in range(4, 32, 2):  # scans every 2 s
        later = decide([region("jp", 6, 4), region("us", 6, 0)], state, T0 + timedelta(seconds=t))
        state = later.state
    assert later.verdict("web", "jp").budget == 1  # 30 s = one heartbeat timeout later
    assert not [c for c in later.changes if c.kind == "normal"]


def test_partial_silence_at_or_below_the_fraction_is_normal() -> None:
    d = decide([region("jp", 20, 11), region("us", 6, 0)])  # 55 % exactly
    assert d.verdict("web", "jp").verdict == "normal"


def test_below_min_unready_count_small_pools_fail_over_normally() -> None:
    # 2 regions x 2 nodes, every node silent: 4 unready >= 3 would hold...
    assert decide([region("jp", 2, 2), region("us", 2, 2)]).verdict("web", "jp").verdict == "held"
    # ...but 1 + 1 unready is below min_unready_count: a small pool failing, fail over.
    d = decide([region("jp", 1, 1), region("us", 1, 1)])
    assert d.verdict("web", "jp").verdict == "normal" and d.state.holds == {}
    # A partly silent region under the count is not rate limited either.
    assert decide([region("jp", 3, 2), region("us", 3, 0)]).verdict("web", "jp").verdict == "normal"


def test_min_unready_count_is_a_setting() -> None:
    settings = GateSettings(min_unready_count=1)
    d = decide([region("jp", 1, 1), region("us", 1, 1)], settings=settings)
    assert d.verdict("web", "jp").verdict == "held"


def test_hold_opens_only_after_a_stable_period() -> None:
    silent = [region("jp", 6, 6), region("us", 6, 6)]
    healthy = [region("jp", 6, 0), region("us", 6, 0)]
    decisions = run([silent] + [healthy] * 16)  # every 2 s; stable period = timeout = 30 s
    held = [d.verdict("web", "jp").verdict == "held" for d in decisions]
    # Closed at 0 s, inputs healthy from 2 s, open at 32 s (the 17th scan), not before.
    assert held == [True] * 16 + [False]
    assert [c.kind for c in decisions[-1].changes] == ["opened"]
    assert "inputs healthy for 30s" in decisions[-1].changes[0].reason


def test_a_relapse_during_the_stable_period_restarts_it() -> None:
    silent = [region("jp", 6, 6), region("us", 6, 6)]
    healthy = [region("jp", 6, 0), region("us", 6, 0)]
    decisions = run([silent] + [healthy] * 10 + [silent] + [healthy] * 15)
    assert decisions[-1].verdict("web", "jp").verdict == "held"  # 30 s after the relapse: 28 s
    assert not [c for d in decisions[1:] for c in d.changes if c.kind == "closed"]  # one close


def test_a_real_failure_held_is_handled_once_the_gate_reopens() -> None:
    """Every region silent; then us comes back and jp stays dead: jp fails over after the
    stable period (the gate hid the failure only while it could not tell)."""
    decisions = run(
        [[region("jp", 6, 6), region("us", 6, 6)]] + [[region("jp", 6, 6), region("us", 6, 0)]] * 16
    )
    assert decisions[-2].verdict("web", "jp").verdict == "held"
    assert decisions[-1].verdict("web", "jp").verdict == "normal"


def test_intake_stalled_holds_everywhere() -> None:
    d = decide(
        [region("jp", 6, 0), region("us", 6, 0)],
        intake=IntakeInput(newest_age_seconds=25, received_per_s=0, written_per_s=0),
    )
    assert EVERYWHERE in d.state.holds
    assert "heartbeat intake stalled" in d.verdict("web", "us").reason
    assert d.verdict("other", "eu").verdict == "held"  # any service, any region


def test_intake_stalled_with_fewer_beating_nodes_than_the_count_is_not_judged() -> None:
    d = decide(
        [region("jp", 1, 1), region("us", 1, 1)],
        intake=IntakeInput(newest_age_seconds=300),
    )
    assert d.state.holds == {}


def test_intake_storing_far_fewer_than_received_holds() -> None:
    d = decide(
        [region("jp", 6, 0)],
        intake=IntakeInput(newest_age_seconds=1, received_per_s=1.2, written_per_s=0.3),
    )
    assert "0.3/s stored of 1.2/s received" in d.reasons[0]
    ok = decide(
        [region("jp", 6, 0)],
        intake=IntakeInput(newest_age_seconds=1, received_per_s=1.2, written_per_s=1.1),
    )
    assert ok.state.holds == {}


def test_no_intake_report_is_not_judged() -> None:
    assert decide([region("jp", 6, 0)], intake=None).state.holds == {}


def test_intake_recovery_starts_a_quiet_period() -> None:
    stalled = decide(
        [region("jp", 6, 0)], intake=IntakeInput(newest_age_seconds=25, received_per_s=0)
    )
    assert stalled.state.quiet_until == T0 + timedelta(seconds=40)  # timeout + one interval
    back = decide(
        [region("jp", 6, 6)],  # beats not stored meanwhile: every node looks silent
        stalled.state,
        T0 + timedelta(seconds=2),
        intake=IntakeInput(newest_age_seconds=0.5, received_per_s=0.6, written_per_s=0.6),
    )
    assert back.verdict("web", "jp").verdict == "held"
    assert any("recovery quiet period" in r for r in back.reasons)


# --- beats received short of what the nodes should send (bench/scale.py's failures)
INTERVAL_S = HB.interval_seconds  # 10 s
SILENT_S = SETTINGS.silent_after(HB).total_seconds()  # 12.5 s: missed a beat


@dataclass(frozen=True)
class SimRegion:
    """A region some seconds after a kill, as the scan sees it. The killed nodes' last
    beats were spread evenly over the interval before the kill."""

    name: str
    nodes: int
    down: int = 0  # recorded down before (failed over already): not expected to beat
    killed: int = 0

    def at(self, t: float) -> RegionInput:
        ages = [t + INTERVAL_S * (j + 0.5) / self.killed for j in range(self.killed)]
        return RegionInput(
            service="web",
            region=self.name,
            nodes=self.nodes,
            unready=self.down + sum(a > HB.timeout_seconds for a in ages),
            beating=self.nodes - self.down,
            silent=sum(a > SILENT_S for a in ages),
        )

    def killed_down(self, t: float) -> int:
        return self.at(t).unready - self.down


def watch(
    regions: list[SimRegion],
    since: float = 1.0,
    until: float = 60.0,
    state: GateState | None = None,
    settings: GateSettings = SETTINGS,
    bursts: tuple[float, ...] = (),
) -> list[tuple[float, GateDecision]]:
    """Scans every 2 s from ``since`` s after the kill; the API replicas receive one beat
    per interval from every live node (summed over replicas by the store), or, at the
    scans in ``bursts``, as many as before the kill (late beats arriving at once)."""
    state = state or GateState(last_scan_at=T0 - timedelta(seconds=1))
    out, t = [], since
    while t <= until:
        dead = 0 if t in bursts else sum(r.killed for r in regions)
        live = (sum(r.nodes - r.down for r in regions) - dead) / INTERVAL_S
        d = decide_gate(
            GateInputs(
                regions=[r.at(t) for r in regions],
                intake=IntakeInput(newest_age_seconds=0.5, received_per_s=live, written_per_s=live),
            ),
            state,
            T0 + timedelta(seconds=t),
            HB,
            settings,
        )
        out.append((t, d))
        state, t = d.state, t + 2
    return out


def fleet(kill_share: float, down: int) -> list[SimRegion]:
    """bench/scale.py's 100 regions x 100 nodes after its first fault: r000 killed whole
    (recorded down), ``down`` more per region recorded down, then ``kill_share`` of each
    other region's live nodes killed."""
    alive = 100 - down
    return [SimRegion("r000", 100, down=100)] + [
        SimRegion(f"r{i:03d}", 100, down=down, killed=round(kill_share * alive))
        for i in range(1, 100)
    ]


def test_45_percent_killed_spread_over_every_region_holds_before_any_is_judged_down() -> None:
    """45 % of the live nodes of every region (under max_unready_fraction in each, so no
    regional rule applies): beats arrive at 55 % of the rate. The gate holds before the
    first killed node's silence reaches the heartbeat timeout, and keeps holding."""
    regions = fleet(0.45, down=5)
    scans = watch(regions)
    held = [(t, d) for t, d in scans if EVERYWHERE in d.state.holds]
    assert held, "never held"
    first = held[0][0]
    assert first < 20 and all(r.killed_down(first) == 0 for r in regions)
    assert [t for t, _ in held] == [t for t, _ in scans if t >= first]  # and keeps holding
    for t, d in scans:  # no killed node is ever let down
        if any(r.killed_down(t) for r in regions):
            assert d.verdict("web", "r001").verdict == "held", t
    reason = held[0][1].reasons[0]
    assert reason.startswith("heartbeat intake low: 514.8/s received of 940.5/s expected")
    assert [c.kind for _, d in scans for c in d.changes] == ["closed"]


def test_a_burst_of_late_beats_does_not_restart_the_wait() -> None:
    """A rate over a second jumps when late beats arrive at once: one scan at the full
    rate does not end the shortfall (the nodes are still silent), so the hold still
    comes before any killed node is judged down."""
    regions = fleet(0.45, down=5)
    scans = watch(regions, bursts=(7.0, 11.0))
    first = next(t for t, d in scans if EVERYWHERE in d.state.holds)
    assert first < 20 and all(r.killed_down(first) == 0 for r in regions)


def test_a_shortfall_ends_after_an_interval_at_the_rate() -> None:
    regions = fleet(0.45, down=5)
    scans = watch(regions, until=9)  # short since 1 s, not yet held
    assert scans[-1][1].state.intake_low_since == T0 + timedelta(seconds=1)
    state = scans[-1][1].state
    back = watch(
        regions, since=11, until=21, state=state, bursts=(11.0, 13.0, 15.0, 17.0, 19.0, 21.0)
    )
    lows = [d.state.intake_low_since for _, d in back]
    assert lows[:5] == [T0 + timedelta(seconds=1)] * 5  # 11..19 s: within an interval
    assert lows[5] is None and not back[-1][1].state.holds  # 21 s: 10 s at the rate


def test_45_percent_spread_is_not_held_under_a_lower_min_intake_ratio() -> None:
    scans = watch(fleet(0.45, down=5), settings=GateSettings(min_intake_ratio=0.5))
    assert not [t for t, d in scans if d.state.holds]


def test_5_percent_killed_spread_over_every_region_is_not_held() -> None:
    """After the region: 5 % of all nodes spread over the others. Beats at 95 % of the
    rate: no hold; the dead nodes are judged down as usual."""
    scans = watch(fleet(0.05, down=0))
    assert not [t for t, d in scans if d.state.holds or d.changes]
    _, last = scans[-1]
    assert last.verdict("web", "r001").verdict == "normal"


@pytest.mark.parametrize("share", [30, 50, 80])
def test_one_whole_region_dead_is_left_out_of_the_intake_and_fails_over(share: int) -> None:
    """A region of ``share`` % of the fleet killed: beats fall to 100 - share % at once,
    but once each of its nodes has missed a beat the region is wholly silent, left out
    of the expected rate, before beats have been short for as long. Never held: its
    nodes are judged down at the timeout, as any region fully silent."""
    other = (100 - share) // 2
    regions = [SimRegion("jp", share, killed=share), SimRegion("us", other), SimRegion("eu", other)]
    scans = watch(regions)
    assert not [(t, d.reasons) for t, d in scans if d.state.holds]
    _, last = scans[-1]  # 60 s: every node of jp past the timeout
    assert last.verdict("web", "jp").verdict == "normal"
    assert last.verdict("web", "jp").reason == "region fully silent"


def test_beats_short_while_the_store_sees_every_node_beat_is_not_held() -> None:
    """A received rate over a second is noisy with few nodes: the store must agree that
    at least min_unready_count nodes, and more than 1 - min_intake_ratio of them, missed a
    beat."""
    noisy = IntakeInput(newest_age_seconds=0.5, received_per_s=0.1, written_per_s=0.1)
    state = GateState(last_scan_at=T0 - timedelta(seconds=2))
    for silent in (0, 2):  # 2 < min_unready_count
        regions = [RegionInput(service="web", region="jp", nodes=6, beating=6, silent=silent)]
        for t in range(0, 40, 2):
            d = decide(regions, state, T0 + timedelta(seconds=t), intake=noisy)
            state = d.state
            assert d.state.holds == {}, (silent, t)


def test_intake_recovered_reopens_after_the_stable_period() -> None:
    """The 45 % held; then they beat again. The hold lasts the recovery quiet period
    (timeout + one interval after the last short scan, longer than the stable period)
    and opens by itself."""
    regions = fleet(0.45, down=5)
    held = watch(regions, until=25)
    assert EVERYWHERE in held[-1][1].state.holds
    back = [SimRegion(r.name, r.nodes, r.down) for r in regions]
    scans = watch(back, since=27, until=80, state=held[-1][1].state)
    opened = [t for t, d in scans if not d.state.holds]
    assert opened, "never reopened"
    assert opened[0] - 27 >= SETTINGS.stable(HB).total_seconds()
    assert opened[0] == 25 + SETTINGS.quiet(HB).total_seconds()  # the last short scan: 25 s
    assert opened == [t for t, _ in scans if t >= opened[0]]
    d = next(d for t, d in scans if t == opened[0])
    assert [c.kind for c in d.changes] == ["opened"]
    assert d.state.intake_low_since is None


def test_a_gap_between_scans_starts_a_quiet_period_no_node_judged_down() -> None:
    """The store was down for 60 s: at recovery every node looks silent in one region
    (which alone would fail over at once); the quiet period holds until each node had a
    heartbeat timeout plus margin to report again, then the stable period has passed."""
    previous = GateState(last_scan_at=T0 - timedelta(seconds=60))
    regions = [region("jp", 6, 6), region("us", 6, 0)]
    d = decide(regions, previous, T0)
    assert d.verdict("web", "jp").verdict == "held"
    assert "no world-state scan for 1m" in d.reasons[0]
    assert d.state.quiet_until == T0 + timedelta(seconds=40)
    state = d.state
    for t in range(2, 40, 2):
        d = decide(regions, state, T0 + timedelta(seconds=t))
        state = d.state
        assert d.verdict("web", "jp").verdict == "held", t
    d = decide(regions, state, T0 + timedelta(seconds=40))
    assert d.verdict("web", "jp").verdict == "normal"  # jp really is dead: fail over now
    assert [c.kind for c in d.changes] == ["opened"]


def test_a_short_gap_is_no_recovery() -> None:
    d = decide([region("jp", 6, 0)], GateState(last_scan_at=T0 - timedelta(seconds=9)), T0)
    assert d.state.holds == {} and d.state.quiet_until is None


def test_a_scan_tick_late_by_up_to_an_interval_is_no_recovery() -> None:
    """A busy worker runs the 1-interval scan tick late: 19 s apart is no outage (it
    held the gate closed for good with 1 s beats); 21 s is."""
    late = GateState(last_scan_at=T0 - timedelta(seconds=19))
    assert decide([region("jp", 6, 0)], late, T0).state.quiet_until is None
    gap = GateState(last_scan_at=T0 - timedelta(seconds=21))
    assert decide([region("jp", 6, 0)], gap, T0).state.quiet_until is not None


def test_first_scan_ever_is_no_gap() -> None:
    d = decide([region("jp", 6, 6), region("us", 6, 0)], GateState(), T0)
    assert d.state.holds == {} and d.verdict("web", "jp").verdict == "normal"


def test_operator_close_holds_everywhere_and_open_releases_at_once() -> None:
    regions = [region("jp", 6, 6), region("us", 6, 0)]
    closed = decide(regions, operator_closed=True, operator_reason="network change")
    assert closed.verdict("web", "jp").verdict == "held"
    assert closed.changes[0].reason == "closed by operator: network change"
    still = decide(regions, closed.state, T0 + timedelta(seconds=2))
    assert still.verdict("web", "jp").verdict == "held"  # inputs healthy, stable period runs
    opened = decide(
        regions,
        still.state,
        T0 + timedelta(seconds=4),
        operator_opened_at=T0 + timedelta(seconds=3),
    )
    assert opened.verdict("web", "jp").verdict == "normal"
    assert opened.changes[0].kind == "opened" and "by operator" in opened.changes[0].reason


def test_operator_open_does_not_override_live_unhealthy_inputs() -> None:
    silent = [region("jp", 6, 6), region("us", 6, 6)]
    d = decide(silent)
    d = decide(
        silent, d.state, T0 + timedelta(seconds=4), operator_opened_at=T0 + timedelta(seconds=3)
    )
    assert d.verdict("web", "jp").verdict == "held"


def test_settings_from_env() -> None:
    env = {
        "XPLANE_GATE_MAX_UNREADY_FRACTION": "0.7",
        "XPLANE_GATE_MIN_UNREADY_COUNT": "5",
        "XPLANE_GATE_DISRUPTION_RATE": "2",
        "XPLANE_GATE_STABLE_PERIOD": "1m",
        "XPLANE_GATE_MIN_INTAKE_RATIO": "0.6",
        "XPLANE_GATE_MIN_STORED_RATIO": "0.4",
    }
    s = GateSettings.from_env(env)
    assert (s.max_unready_fraction, s.min_unready_count, s.disruption_rate) == (0.7, 5, 2)
    assert (s.min_intake_ratio, s.min_stored_ratio) == (0.6, 0.4)
    assert s.stable(HB) == timedelta(minutes=1)
    assert GateSettings().stable(HB) == HB.timeout
    with pytest.raises(ValueError):
        GateSettings.from_env({"XPLANE_GATE_MAX_UNREADY_FRACTION": "1.5"})


def test_readers_verdict() -> None:
    d = decide([region("jp", 6, 6), region("us", 6, 6)])
    assert verdict_for(None, "web", "jp", T0, HB, SETTINGS).verdict == "normal"
    assert verdict_for(d, "web", "jp", T0, HB, SETTINGS).verdict == "held"
    fresh = decide([region("jp", 6, 0)])
    assert verdict_for(fresh, "web", "jp", T0 + timedelta(seconds=59), HB, SETTINGS).verdict == (
        "normal"
    )
    stale = verdict_for(fresh, "web", "jp", T0 + timedelta(seconds=61), HB, SETTINGS)
    assert stale.verdict == "held" and "world-state scan not running" in stale.reason
    closed = verdict_for(fresh, "web", "jp", T0, HB, SETTINGS, operator_closed=True)
    assert closed.verdict == "held"
    # A region the last scan did not see (no nodes) follows its service's hold.
    assert d.verdict("web", "eu").verdict == "held"
    assert fresh.verdict("web", "eu").verdict == "normal"


def test_decision_round_trips_as_json() -> None:
    d = decide([region("jp", 6, 4), region("us", 6, 0)])
    assert GateDecision.model_validate_json(d.model_dump_json()) == d


def test_the_scan_lets_a_rate_limited_region_lose_one_node_per_timeout() -> None:
    from activities.nodes import NodeTransition, gate_transitions
    from xplane.domain import NodeStatus

    def down(node: str) -> NodeTransition:
        return NodeTransition(
            node_id=node, service="web", region="jp", previous=NodeStatus.UP, status=NodeStatus.DOWN
        )

    back = NodeTransition(
        node_id="jp-9", service="web", region="jp", previous=NodeStatus.DOWN, status=NodeStatus.UP
    )
    regions = [region("jp", 6, 4), region("us", 6, 0)]
    d = decide(regions)
    passed, held, d = gate_transitions([down("jp-2"), down("jp-1"), back, down("jp-3")], d, T0)
    assert [t.node_id for t in passed] == ["jp-1", "jp-9"]  # one down, and every up
    assert [t.node_id for t in held] == ["jp-2", "jp-3"]
    later = decide(regions, d.state, T0 + timedelta(seconds=2))
    assert gate_transitions([down("jp-2")], later, T0)[0] == []
    scanned = later.state.model_copy(update={"last_scan_at": T0 + timedelta(seconds=28)})
    after = decide(regions, scanned, T0 + timedelta(seconds=30))  # one timeout after jp-1
    assert [t.node_id for t in gate_transitions([down("jp-2")], after, T0)[0]] == ["jp-2"]
    held_all = decide([region("jp", 6, 6), region("us", 6, 6)])
    assert gate_transitions([down("jp-1"), back], held_all, T0)[0] == [back]


# ---------------------------------------------------------------- trusted view
@dataclass(frozen=True)
class Facts:
    last_heartbeat_at: datetime | None
    recorded_status: str | None


@dataclass(frozen=True)
class Stored:
    decision: GateDecision | None
    operator_closed: bool = False
    operator_reason: str | None = None


SILENT = Facts(T0 - HB.timeout - timedelta(seconds=1), "up")  # not yet recorded down


def snapshot(node_id: str, status: NodeStatus, check: bool | None = None) -> NodeSnapshot:
    return NodeSnapshot(
        id=node_id,
        service="web",
        region="jp",
        address=f"192.0.2.{len(node_id)}",
        status=status,
        heartbeat_age_seconds=40.0,
        health_check_ok=check,
    )


def test_unconfirmed_silence_is_silent_but_last_recorded_up() -> None:
    assert unconfirmed_silence(SILENT.last_heartbeat_at, "up", T0, HB.timeout)
    assert unconfirmed_silence(None, "up", T0, HB.timeout)
    assert not unconfirmed_silence(SILENT.last_heartbeat_at, "down", T0, HB.timeout)
    assert not unconfirmed_silence(T0 - HB.timeout, "up", T0, HB.timeout)  # not silent yet


def test_trusted_view_without_a_gate_decision_is_the_nodes_as_they_are() -> None:
    nodes = [snapshot("a", NodeStatus.DOWN)]
    view, gate = trusted_view(nodes, [SILENT], Stored(None), "web", T0, HB, SETTINGS)
    assert view == nodes and gate == {}


def test_trusted_view_keeps_an_unconfirmed_silence_up() -> None:
    normal = decide([region("jp", 6, 0)])
    recorded_down = Facts(SILENT.last_heartbeat_at, "down")
    nodes = [snapshot("a", NodeStatus.DOWN), snapshot("bb", NodeStatus.DOWN)]
    view, gate = trusted_view(
        nodes, [SILENT, recorded_down], Stored(normal), "web", T0, HB, SETTINGS
    )
    assert [n.status for n in view] == [NodeStatus.UP, NodeStatus.DOWN]
    assert view[0].heartbeat_age_seconds == 0.0
    assert gate == {}


def test_trusted_view_in_a_held_region_distrusts_a_failing_check() -> None:
    fresh = Facts(T0, "up")
    nodes = [snapshot("a", NodeStatus.UP, check=False)]
    view, gate = trusted_view(
        nodes,
        [fresh],
        Stored(None, operator_closed=True, operator_reason="maintenance"),
        "web",
        T0,
        HB,
        SETTINGS,
    )
    assert view[0].health_check_ok is None
    assert gate == {"jp": "held: closed by operator: maintenance"}
    normal = decide([region("jp", 6, 0)])
    view, _ = trusted_view(nodes, [fresh], Stored(normal), "web", T0, HB, SETTINGS)
    assert view[0].health_check_ok is False  # a normal region trusts its checks
