"""Smoothed latency input of the GTM weights: an EWMA of each region's RTT over ~a minute.

Real-network RTTs jitter by tens of percent from one probe to the next. Fed raw into
``latency_factor = target_ms / rtt``, that noise moves weights every tick and (past
the deadband) rewrites DNS for nothing. The loop replaces each region's observed
median RTT by an exponentially weighted moving average with a time constant of
``window`` (60 s by default): irregular ticks weigh by elapsed time, a region seen
for the first time (or again after a gap of several windows) starts from its sample.

It smooths the *input*: :class:`RttSmoother` is the ``smooth_rtt`` the GTM loop's
observe activity hands :func:`~xplane.gtm.weights.compute_service_weights`, so the
weights are computed once, from the smoothed RTT. Pure: the loop keeps one
:class:`RttAverage` per region and passes them in each tick.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel

from xplane.config.models import LatencyPolicy
from xplane.gtm import weights as gtm_weights
from xplane.gtm.weights import ServiceWeights, WeightedRecord

DEFAULT_WINDOW = timedelta(minutes=1)


class RttAverage(BaseModel):
    rtt_ms: float
    at: datetime


def ewma(
    previous: RttAverage | None, sample: float, now: datetime, window: timedelta = DEFAULT_WINDOW
) -> RttAverage:
    """The average after ``sample`` observed at ``now`` (time-weighted: alpha = 1 - e^-dt/w)."""
    if previous is None or window <= timedelta(0):
        return RttAverage(rtt_ms=sample, at=now)
    elapsed = (now - previous.at) / window
    if elapsed <= 0:  # same instant (or a clock going back): keep the average
        return previous
    alpha = 1.0 - math.exp(-elapsed)
    return RttAverage(rtt_ms=previous.rtt_ms + alpha * (sample - previous.rtt_ms), at=now)


class RttSmoother:
    """Each region's observed RTT -> its average (what the latency factor uses), keeping
    the new averages in :attr:`averages`. Regions without an RTT sample this tick are
    not called, so their average is dropped."""

    def __init__(
        self,
        previous: Mapping[str, RttAverage],
        now: datetime,
        window: timedelta = DEFAULT_WINDOW,
    ) -> None:
        self._previous, self._now, self._window = previous, now, window
        self.averages: dict[str, RttAverage] = {}

    def __call__(self, region: str, observed_ms: float) -> float:
        average = ewma(self._previous.get(region), observed_ms, self._now, self._window)
        self.averages[region] = average
        return average.rtt_ms


def latency_factor(rtt_ms: float | None, policy: LatencyPolicy) -> float:
    """The weights module's factor for ``policy``."""
    return gtm_weights.latency_factor(rtt_ms, policy.target_ms, policy.floor)


def smooth_latency(
    weights: ServiceWeights,
    previous: Mapping[str, RttAverage],
    now: datetime,
    policy: LatencyPolicy,
    window: timedelta = DEFAULT_WINDOW,
) -> tuple[ServiceWeights, dict[str, RttAverage]]:
    """``weights`` with every region's latency factor recomputed from its smoothed RTT.

    Kept for GTM loop histories whose observe results predate :class:`RttSmoother`
    (they carry raw weights): the loop re-scales those after the fact, as it did then.
    A fail-open answer is left alone (it publishes base weights); its RTTs still feed the
    averages. Regions without an RTT sample drop their average.
    """
    state: dict[str, RttAverage] = {}
    scale: dict[str, float] = {}
    regions = {}
    for name, region in weights.regions.items():
        if region.observed_rtt_ms is None:
            regions[name] = region
            continue
        state[name] = ewma(previous.get(name), region.observed_rtt_ms, now, window)
        factor = latency_factor(state[name].rtt_ms, policy)
        if weights.fail_open or region.effective_weight <= 0 or region.latency_factor <= 0:
            regions[name] = region
            continue
        scale[name] = factor / region.latency_factor
        regions[name] = region.model_copy(
            update={
                "latency_factor": factor,
                "effective_weight": region.effective_weight * scale[name],
                "observed_rtt_ms": state[name].rtt_ms,
            }
        )
    if not scale:
        return weights, state
    records = [
        WeightedRecord(r.address, r.region, r.node_id, r.weight * scale.get(r.region, 1.0))
        for r in weights.records
    ]
    return weights.model_copy(update={"regions": regions, "records": records}), state
