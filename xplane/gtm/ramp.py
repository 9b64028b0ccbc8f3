"""Asymmetric damping of GTM weights: drops apply at once, rises are ramped (slow start).

A region that recovers (or is added) would otherwise go from 0 to its full weight in
one tick and be flooded while its caches are cold. Rises are therefore interpolated
linearly over the policy's ``slow_start`` from the weight applied before; drops skip
the ramp, because sending traffic to a failing region is worse than a cold one.
Pure: the GTM loop keeps one :class:`RampState` per region in its workflow state.

With ``steps`` (the loop uses :data:`RAMP_STEPS`) a ramp advances in that many discrete
steps instead of every tick, on a clock grid shared by every ramp (multiples of
``slow_start / steps`` since the epoch): each step moves a share far enough to be
worth a DNS write, and regions ramping together step together, in one write.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel

from xplane.gtm.weights import ServiceWeights, WeightedRecord

RAMP_STEPS = 10  # ~10 DNS writes per ramp, each step 10% of the rise


class RampState(BaseModel):
    """A ramp in progress (or finished: ``from_weight == target``)."""

    from_weight: float
    target: float
    started_at: datetime

    def weight_at(self, now: datetime, slow_start: timedelta, steps: int | None = None) -> float:
        """Linear interpolation from ``from_weight`` to ``target`` over ``slow_start``;
        with ``steps``: the fraction of grid points (every ``slow_start / steps``) passed."""
        if slow_start <= timedelta(0) or self.target <= self.from_weight:
            return self.target
        if steps:
            step = slow_start.total_seconds() / steps
            passed = math.floor(now.timestamp() / step) - math.floor(
                self.started_at.timestamp() / step
            )
            done = passed / steps
        else:
            done = (now - self.started_at) / slow_start
        done = min(1.0, max(0.0, done))  # a clock going back holds the ramp, never reverses it
        return self.from_weight + (self.target - self.from_weight) * done


def ramp(
    previous: RampState | None,
    target: float,
    now: datetime,
    slow_start: timedelta,
    steps: int | None = None,
) -> tuple[float, RampState]:
    """The weight to apply now and the state to keep for the next tick.

    * no history: the target itself (what ``gtm plan`` shows; the loop passes a state
      with ``from_weight=0`` to slow-start a new region);
    * target at or below the current weight: the target, at once;
    * the same target as the ramp in progress: the ramp continues;
    * a new, higher target: a new ramp from the current weight over a full ``slow_start``.
    """
    if previous is None:
        return target, RampState(from_weight=target, target=target, started_at=now)
    current = previous.weight_at(now, slow_start, steps)
    if target <= current:
        return target, RampState(from_weight=target, target=target, started_at=now)
    if target == previous.target:
        return current, previous
    state = RampState(from_weight=current, target=target, started_at=now)
    return state.weight_at(now, slow_start, steps), state


def ramp_service(
    weights: ServiceWeights,
    previous: Mapping[str, RampState],
    now: datetime,
    slow_start: timedelta,
    steps: int | None = None,
) -> tuple[ServiceWeights, dict[str, RampState]]:
    """Damp every region of ``weights`` and scale its records to match.

    Two cases skip the ramp (it would otherwise publish an empty answer):
    a fail-open answer, and a tick where every ramped weight is 0 but some target isn't.
    Regions without a previous state take their target at once (see :func:`ramp`).
    """
    targets = weights.weights()
    if weights.fail_open:
        return weights, _settled(targets, now)
    applied: dict[str, float] = {}
    states: dict[str, RampState] = {}
    for name, target in targets.items():
        applied[name], states[name] = ramp(previous.get(name), target, now, slow_start, steps)
    if not any(applied.values()) and any(targets.values()):
        return weights, _settled(targets, now)
    return _rescaled(weights, applied), states


def _settled(targets: Mapping[str, float], now: datetime) -> dict[str, RampState]:
    return {n: RampState(from_weight=w, target=w, started_at=now) for n, w in targets.items()}


def _rescaled(weights: ServiceWeights, applied: Mapping[str, float]) -> ServiceWeights:
    """A copy with each region's effective weight and records scaled to ``applied``."""
    regions = {}
    for name, region in weights.regions.items():
        new = applied[name]
        reason = region.reason
        if new < region.effective_weight:
            reason = f"{reason}; slow start: {new:.4g} of {region.effective_weight:.4g}"
        regions[name] = region.model_copy(update={"effective_weight": new, "reason": reason})
    records = []
    for rec in weights.records:
        target = weights.regions[rec.region].effective_weight
        scale = applied[rec.region] / target if target else 0.0
        records.append(WeightedRecord(rec.address, rec.region, rec.node_id, rec.weight * scale))
    return weights.model_copy(update={"regions": regions, "records": records})
