"""Asymmetric damping: drops at once, rises ramped linearly over slow_start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from xplane.config.models import GtmPolicy
from xplane.domain import NodeSnapshot, NodeStatus
from xplane.gtm.ramp import RampState, ramp, ramp_service
from xplane.gtm.weights import ServiceWeights, compute_service_weights

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SLOW = timedelta(seconds=100)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_without_history_the_target_applies() -> None:
    weight, state = ramp(None, 80, T0, SLOW)
    assert weight == 80
    assert state == RampState(from_weight=80, target=80, started_at=T0)


def test_decrease_applies_at_once() -> None:
    _, state = ramp(None, 100, T0, SLOW)
    weight, state = ramp(state, 10, at(1), SLOW)
    assert weight == 10
    assert state.from_weight == state.target == 10


def test_increase_ramps_linearly_then_holds() -> None:
    _, state = ramp(None, 0, T0, SLOW)
    weight, state = ramp(state, 100, at(0), SLOW)
    assert weight == 0  # the ramp starts where the region was
    seen = []
    for t in (25, 50, 75, 100, 250):
        weight, state = ramp(state, 100, at(t), SLOW)
        seen.append(weight)
    assert seen == pytest.approx([25, 50, 75, 100, 100])


def test_a_drop_during_a_ramp_cuts_it() -> None:
    _, state = ramp(RampState(from_weight=0, target=100, started_at=T0), 100, T0, SLOW)
    weight, state = ramp(state, 100, at(60), SLOW)
    assert weight == pytest.approx(60)
    weight, state = ramp(state, 30, at(61), SLOW)
    assert weight == 30
    weight, _ = ramp(state, 30, at(200), SLOW)
    assert weight == 30


def test_a_higher_target_mid_ramp_restarts_from_the_current_weight() -> None:
    state = RampState(from_weight=0, target=100, started_at=T0)
    weight, state = ramp(state, 200, at(50), SLOW)
    assert weight == pytest.approx(50)  # no jump: continues from where it was
    assert state.from_weight == pytest.approx(50) and state.started_at == at(50)
    weight, _ = ramp(state, 200, at(100), SLOW)
    assert weight == pytest.approx(125)


def test_a_lower_but_still_higher_target_mid_ramp() -> None:
    state = RampState(from_weight=0, target=100, started_at=T0)
    weight, state = ramp(state, 80, at(50), SLOW)  # 80 > current 50: ramp on to 80
    assert weight == pytest.approx(50)
    weight, _ = ramp(state, 80, at(150), SLOW)
    assert weight == pytest.approx(80)


def test_zero_slow_start_and_clock_going_back() -> None:
    state = RampState(from_weight=0, target=100, started_at=T0)
    assert ramp(state, 100, at(1), timedelta(0))[0] == 100
    assert ramp(state, 100, at(-30), SLOW)[0] == 0  # never negative progress


def _world(jp_up: int) -> list[NodeSnapshot]:
    def n(i: int, region: str, up: bool) -> NodeSnapshot:
        status = NodeStatus.UP if up else NodeStatus.DOWN
        return NodeSnapshot(
            id=f"{region}{i}",
            service="svc",
            region=region,
            address=f"10.0.0.{i}" if region == "jp" else f"10.1.0.{i}",
            status=status,
            heartbeat_age_seconds=1,
        )

    return [n(i, "jp", i < jp_up) for i in range(2)] + [n(0, "sg", True)]


POLICY = GtmPolicy.model_validate(
    {
        "service": "svc",
        "domain": "api.svc.plus",
        "regions": [{"name": "jp", "weight": 100}, {"name": "sg", "weight": 10}],
    }
)


def _weights(jp_up: int) -> ServiceWeights:
    return compute_service_weights(POLICY, {}, _world(jp_up), {"jp": 2, "sg": 1}, 30)


def test_ramp_service_scales_region_and_records() -> None:
    down = _weights(0)
    applied, states = ramp_service(down, {}, T0, SLOW)
    assert applied.weights() == {"jp": 0, "sg": 10}

    recovered = _weights(2)
    applied, states = ramp_service(recovered, states, at(10), SLOW)
    assert applied.weights() == {"jp": 0, "sg": 10}  # ramp starts at the old 0
    applied, states = ramp_service(recovered, states, at(60), SLOW)
    assert applied.weights()["jp"] == pytest.approx(50)
    assert "slow start" in applied.regions["jp"].reason
    jp = [r.weight for r in applied.records if r.region == "jp"]
    assert jp == pytest.approx([25, 25])
    assert recovered.weights()["jp"] == 100  # the input is not modified

    applied, _ = ramp_service(_weights(1), states, at(61), SLOW)
    assert applied.weights()["jp"] == pytest.approx(25)  # a drop below the ramp: at once


def test_ramp_never_publishes_an_empty_answer() -> None:
    """sg dies while jp is still at 0 from before: ramping jp from 0 would answer nothing."""
    previous = {
        "jp": RampState(from_weight=0, target=0, started_at=T0),
        "sg": RampState(from_weight=10, target=10, started_at=T0),
    }
    only_jp = compute_service_weights(POLICY, {}, _world(2)[:2], {"jp": 2, "sg": 1}, 30)
    applied, states = ramp_service(only_jp, previous, at(1), SLOW)
    assert applied.weights() == {"jp": 100, "sg": 0}
    assert states["jp"].from_weight == 100


def test_fail_open_bypasses_the_ramp() -> None:
    fail_open = compute_service_weights(POLICY, {}, _world(0)[:2], {}, 30)
    assert fail_open.fail_open
    previous = {n: RampState(from_weight=0, target=0, started_at=T0) for n in ("jp", "sg")}
    applied, _ = ramp_service(fail_open, previous, at(1), SLOW)
    assert applied.weights() == fail_open.weights()
    assert applied.records
