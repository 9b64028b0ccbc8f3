"""DNS writes in proportion to traffic changes: deadband, stepped ramps, smoothed RTT.

Pure functions, no Temporal: each test runs the loop's own pipeline (weights from the
smoothed RTT -> ramp -> one provider's desired record set -> deadband) tick by tick and
counts the writes it would make.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from xplane.config.models import GtmPolicy
from xplane.dns.plan import (
    DesiredEndpoint,
    DesiredRegion,
    DesiredService,
    desired_for_provider,
)
from xplane.domain import NodeSnapshot
from xplane.gtm.deadband import Published, needs_write, published, shares
from xplane.gtm.ramp import RAMP_STEPS, RampState, ramp, ramp_service
from xplane.gtm.smoothing import RttAverage, RttSmoother
from xplane.gtm.weights import compute_service_weights

T0 = datetime(2025, 1, 1, 12, 0, 3, tzinfo=UTC)  # deliberately off the ramp grid
TICK = timedelta(seconds=5)
SLOW = timedelta(minutes=2)


def _desired(weights: dict[str, float], ttl: int = 30) -> DesiredService:
    return DesiredService(
        service="svc",
        name="api.svc.plus",
        zone="svc.plus",
        ttl=ttl,
        regions=[
            DesiredRegion(region=a, weight=w, endpoints=[DesiredEndpoint(address=a, weight=w)])
            for a, w in weights.items()
        ],
    )


# ------------------------------------------------------------------- deadband
def test_shares_sum_to_one_and_skip_unpublished_addresses() -> None:
    got = shares(_desired({"192.0.2.1": 30, "192.0.2.2": 10, "192.0.2.3": 0}))
    assert got == pytest.approx({"192.0.2.1": 0.75, "192.0.2.2": 0.25})


def test_first_write_and_address_changes_write_at_once() -> None:
    last = published(_desired({"192.0.2.1": 100, "192.0.2.2": 100}))
    assert needs_write(None, _desired({"192.0.2.1": 1}), 0.02)
    assert needs_write(Published(), _desired({"192.0.2.1": 1}), 0.02)  # unknown: write
    # Removing an address writes even though the others' shares barely... moved a lot:
    # and adding a tiny one (0.1% of answers) writes too.
    assert needs_write(last, _desired({"192.0.2.1": 100}), 0.02)
    assert needs_write(last, _desired({"192.0.2.1": 100, "192.0.2.2": 100, "x": 0.2}), 0.5)


def test_share_moves_inside_the_band_write_nothing_until_they_add_up() -> None:
    last = published(_desired({"192.0.2.1": 50, "192.0.2.2": 50}))
    one_pp = _desired({"192.0.2.1": 51, "192.0.2.2": 49})
    assert not needs_write(last, one_pp, 0.02)
    assert not needs_write(last, _desired({"192.0.2.1": 51.9, "192.0.2.2": 48.1}), 0.02)
    # Compared with what was written, not with the last tick: two 1-point moves write.
    assert needs_write(last, _desired({"192.0.2.1": 52, "192.0.2.2": 48}), 0.02)
    # Absolute weights don't matter, only shares: doubling everything writes nothing.
    assert not needs_write(last, _desired({"192.0.2.1": 100, "192.0.2.2": 100}), 0.02)
    assert needs_write(last, one_pp, 0.0)  # a band of 0 writes every change


def test_a_change_other_than_weights_always_writes() -> None:
    last = published(_desired({"192.0.2.1": 50, "192.0.2.2": 50}))
    assert needs_write(last, _desired({"192.0.2.1": 50, "192.0.2.2": 50}, ttl=60), 0.02)


# -------------------------------------------------------------- stepped ramps
def test_stepped_ramp_takes_ten_steps_and_ends_within_slow_start() -> None:
    state = RampState(from_weight=0, target=100, started_at=T0)
    seen = []
    t = T0
    while t <= T0 + SLOW:
        seen.append(ramp(state, 100, t, SLOW, RAMP_STEPS)[0])
        t += TICK
    assert sorted(set(seen)) == pytest.approx([10.0 * i for i in range(11)])
    assert seen[-1] == 100  # done by slow_start, never later
    assert seen == sorted(seen)


def test_ramps_started_at_different_ticks_step_together() -> None:
    a = RampState(from_weight=0, target=100, started_at=T0)
    b = RampState(from_weight=0, target=50, started_at=T0 + 2 * TICK)
    steps_a, steps_b = set(), set()
    prev_a = prev_b = 0.0
    t = T0 + 2 * TICK
    while t <= T0 + 2 * SLOW:
        wa, wb = ramp(a, 100, t, SLOW, RAMP_STEPS)[0], ramp(b, 50, t, SLOW, RAMP_STEPS)[0]
        if wa != prev_a:
            steps_a.add(t)
        if wb != prev_b:
            steps_b.add(t)
        prev_a, prev_b = wa, wb
        t += TICK
    common = steps_a & steps_b
    assert len(common) >= RAMP_STEPS - 2  # the same grid: all but the ends coincide


POLICY = GtmPolicy.model_validate(
    {
        "service": "svc",
        "domain": "api.svc.plus",
        "regions": [
            {"name": "jp", "weight": 100},
            {"name": "sg", "weight": 10},
            {"name": "cn", "weight": 50},
        ],
        "latency": {"target_ms": 100, "floor": 0.2},
        "dns": {"provider": "powerdns", "zone": "svc.plus"},
    }
)


def _world(up: set[str], rtt: dict[str, float] | None = None) -> list[NodeSnapshot]:
    rtt = rtt or {}
    return [
        NodeSnapshot(
            id=f"{region}-{i}",
            service="svc",
            region=region,
            address=f"10.{n}.0.{i}",
            heartbeat_age_seconds=1,
            rtt_ms=rtt.get(region),
        )
        for n, region in enumerate(("jp", "sg", "cn"))
        if region in up
        for i in range(2)
    ]


def _run(
    worlds: list[list[NodeSnapshot]], *, quiet: bool, start: datetime = T0
) -> tuple[int, list[dict[str, float]]]:
    """The loop's pipeline over one world per tick; (writes, weights of each write)."""
    provider = POLICY.dns_providers()[0]
    ramp_state: dict[str, RampState] = {}
    rtt: dict[str, RttAverage] = {}
    last: Published | None = None
    last_digest = None
    writes: list[dict[str, float]] = []
    for i, world in enumerate(worlds):
        now = start + i * TICK
        smoother = RttSmoother(rtt, now) if quiet else None
        target = compute_service_weights(POLICY, {}, world, {}, 30, smooth_rtt=smoother)
        rtt = smoother.averages if smoother else {}
        previous = dict(ramp_state)
        if previous:
            for name in target.regions:
                previous.setdefault(name, RampState(from_weight=0, target=0, started_at=now))
        weights, ramp_state = ramp_service(
            target, previous, now, POLICY.slow_start, RAMP_STEPS if quiet else None
        )
        desired = desired_for_provider(POLICY, provider, weights)
        digest = desired.model_dump_json()
        if digest == last_digest:
            continue
        if quiet and not needs_write(last, desired, POLICY.min_share_change):
            continue
        last, last_digest = published(desired), digest
        writes.append(weights.weights())
    return len(writes), writes


def test_two_regions_ramping_at_once_cost_about_ten_writes_not_one_per_tick() -> None:
    """jp serves alone; sg and cn recover together and ramp over 2 minutes (5 s ticks)."""
    worlds = [_world({"jp"})] + [_world({"jp", "sg", "cn"})] * 40
    before, _ = _run(worlds, quiet=False)
    after, weights = _run(worlds, quiet=True)
    assert before >= 20  # every tick of the linear ramp rewrote the record
    assert after <= RAMP_STEPS + 2
    assert weights[-1] == pytest.approx({"jp": 100, "sg": 10, "cn": 50})  # and it arrives


def test_a_steady_loop_writes_nothing() -> None:
    worlds = [_world({"jp", "sg", "cn"}, {"jp": 150, "sg": 150, "cn": 150})] * 60
    assert _run(worlds, quiet=True)[0] == 1


def test_noisy_rtts_do_not_move_dns() -> None:
    """Real-network jitter: each region's median RTT varies +-30% around 150-250 ms each
    tick (target 100 ms, so the latency factor is live). 10 minutes of 5 s ticks."""
    rng = random.Random(7)
    base = {"jp": 150.0, "sg": 250.0, "cn": 200.0}
    worlds = [
        _world({"jp", "sg", "cn"}, {r: v * rng.uniform(0.7, 1.3) for r, v in base.items()})
        for _ in range(120)
    ]
    raw, _ = _run(worlds, quiet=False)
    smoothed, _ = _run(worlds, quiet=True)
    assert raw >= 60  # unsmoothed, almost every tick is a write
    assert smoothed <= 3  # the first write, and at most a couple as the average settles
