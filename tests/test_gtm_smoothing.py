"""RTT smoothing (pure): the EWMA, the smoother the weights take as their latency input,
and the after-the-fact re-scaling kept for observe results recorded before it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from xplane.config.models import GtmPolicy
from xplane.domain import NodeSnapshot
from xplane.gtm.smoothing import RttAverage, RttSmoother, ewma, smooth_latency
from xplane.gtm.weights import ServiceWeights, compute_service_weights

T0 = datetime(2025, 1, 1, 12, 0, 3, tzinfo=UTC)
TICK = timedelta(seconds=5)
POLICY = GtmPolicy.model_validate(
    {
        "service": "svc",
        "domain": "api.svc.plus",
        "regions": [
            {"name": "jp", "weight": 100},
            {"name": "sg", "weight": 10},
            {"name": "cn", "weight": 50, "min_ready_nodes": 3},  # never enough: weight 0
        ],
        "latency": {"target_ms": 100, "floor": 0.2},
    }
)


def test_ewma_weighs_by_elapsed_time() -> None:
    first = ewma(None, 100, T0)
    assert first == RttAverage(rtt_ms=100, at=T0)
    after_a_minute = ewma(first, 200, T0 + timedelta(minutes=1))
    assert after_a_minute.rtt_ms == pytest.approx(100 + 100 * (1 - 2.718281828**-1))
    assert ewma(first, 200, T0 + timedelta(seconds=5)).rtt_ms < 110
    assert ewma(first, 200, T0) == first  # no time passed: no change


def _world(rtt: dict[str, float | None]) -> list[NodeSnapshot]:
    return [
        NodeSnapshot(
            id=f"{region}-{i}",
            service="svc",
            region=region,
            address=f"10.{n}.0.{i}",
            heartbeat_age_seconds=1,
            rtt_ms=ms,
        )
        for n, (region, ms) in enumerate(rtt.items())
        for i in range(2)
    ]


def test_the_smoother_feeds_the_latency_factor_and_keeps_the_averages() -> None:
    previous = {"jp": RttAverage(rtt_ms=100, at=T0 - timedelta(minutes=1)), "gone": _avg(1)}
    smoother = RttSmoother(previous, T0)
    weights = compute_service_weights(
        POLICY, {}, _world({"jp": 300.0, "sg": 400.0, "cn": None}), {}, 30, smooth_rtt=smoother
    )
    jp = 100 + 200 * (1 - 2.718281828**-1)  # a minute of the 300 ms sample
    assert smoother.averages["jp"].rtt_ms == pytest.approx(jp)
    assert smoother.averages["sg"] == RttAverage(rtt_ms=400, at=T0)  # first seen: its sample
    assert set(smoother.averages) == {"jp", "sg"}  # no RTT (cn), or gone: dropped
    assert weights.regions["jp"].observed_rtt_ms == pytest.approx(jp)
    assert weights.regions["jp"].latency_factor == pytest.approx(100 / jp)
    assert weights.regions["jp"].effective_weight == pytest.approx(100 * 100 / jp)
    assert weights.regions["sg"].effective_weight == pytest.approx(10 * 0.25)


def test_without_history_the_smoother_changes_nothing() -> None:
    world = _world({"jp": 300.0, "sg": 80.0, "cn": 150.0})
    raw = compute_service_weights(POLICY, {}, world, {}, 30)
    smoothed = compute_service_weights(POLICY, {}, world, {}, 30, smooth_rtt=RttSmoother({}, T0))
    assert smoothed == raw


def _avg(ms: float) -> RttAverage:
    return RttAverage(rtt_ms=ms, at=T0)


def _published(weights: ServiceWeights) -> dict[str, float]:
    return {r.address: r.weight for r in weights.records}


@pytest.mark.parametrize("down", [False, True], ids=["serving", "fail-open"])
def test_smoothing_the_input_publishes_what_rescaling_the_output_did(down: bool) -> None:
    """What the loop publishes is unchanged by moving the smoothing to the input: tick by
    tick over noisy RTTs, the same records, weights and averages as ``smooth_latency``."""
    rng = random.Random(3)
    before: dict[str, RttAverage] = {}
    after: dict[str, RttAverage] = {}
    for i in range(30):
        now = T0 + i * TICK
        world = _world({r: rng.uniform(50, 400) for r in ("jp", "sg", "cn")})
        if down:
            world = [n.model_copy(update={"status": "down"}) for n in world]
        raw = compute_service_weights(POLICY, {}, world, {}, 30)
        rescaled, before = smooth_latency(raw, before, now, POLICY.latency)
        smoother = RttSmoother(after, now)
        direct = compute_service_weights(POLICY, {}, world, {}, 30, smooth_rtt=smoother)
        after = smoother.averages
        assert after == before
        assert direct.weights() == pytest.approx(rescaled.weights())
        assert _published(direct) == pytest.approx(_published(rescaled))
        assert (direct.fail_open, direct.reason) == (rescaled.fail_open, rescaled.reason)
