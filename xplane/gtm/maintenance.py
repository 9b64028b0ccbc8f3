"""Maintenance windows (pure): a region's share of traffic held down while a window is open.

``gtm/<service>.yaml``'s ``maintenance:`` (:class:`~xplane.config.models.MaintenanceWindow`)
scales a region's target weight by the window's ``weight`` (0: out of DNS) while it is
open. The factor is applied to the *target* weights, before the GTM loop's damping:
the drop applies at once (:mod:`xplane.gtm.ramp`: drops skip the ramp) and, when the
window closes, the region comes back through the same slow start and DNS deadband
(:mod:`xplane.gtm.deadband`) as a recovering region. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel

from xplane.autoscale.calendar import Entered
from xplane.config.models import GtmPolicy, MaintenanceWindow
from xplane.gtm.weights import ServiceWeights, WeightedRecord
from xplane.windows import Occurrence, cron_occurrences, fixed_occurrence


class MaintenanceFactor(BaseModel):
    """The strongest maintenance on one region now: its weight factor and why."""

    region: str
    factor: float
    name: str
    closes: datetime


def occurrence_at(window: MaintenanceWindow, at: datetime) -> Occurrence | None:
    """The window's occurrence open at ``at``, if any."""
    if window.cron is not None and window.duration is not None:
        found = cron_occurrences(window.cron, window.timezone, window.duration, at, at)
        return next((o for o in found if o.covers(at)), None)
    if window.start is not None:
        end = window.end or window.start + (window.duration or timedelta(0))
        occ = fixed_occurrence(window.start, end, window.timezone)
        return occ if occ.covers(at) else None
    return None


def maintenance_factors(
    policy: GtmPolicy, at: datetime, entered: Iterable[Entered] = ()
) -> dict[str, MaintenanceFactor]:
    """Region -> the lowest factor of the windows open at ``at`` (config or entered)."""
    found: dict[str, MaintenanceFactor] = {}
    labelled = {w.label(i): w for i, w in enumerate(policy.maintenance)}

    def consider(window: MaintenanceWindow, name: str, occ: Occurrence) -> None:
        current = found.get(window.region)
        if current is None or window.weight < current.factor:
            found[window.region] = MaintenanceFactor(
                region=window.region, factor=window.weight, name=name, closes=occ.closes
            )

    for name, window in labelled.items():
        occ = occurrence_at(window, at)
        if occ is not None:
            consider(window, name, occ)
    for entry in entered:
        entered_window = labelled.get(entry.name)  # a window gone from config is not entered
        occ = Occurrence(entry.opens, entry.closes)
        if entered_window is not None and occ.covers(at):
            consider(entered_window, entry.name, occ)
    return found


def apply_maintenance(
    weights: ServiceWeights, factors: Mapping[str, MaintenanceFactor]
) -> ServiceWeights:
    """A copy of ``weights`` with each region under maintenance scaled by its factor.

    A fail-open answer is left alone: fail open publishes what it can, and a region
    in maintenance is still better than an empty answer.
    """
    hit = {name: f for name, f in factors.items() if name in weights.regions}
    if not hit or weights.fail_open:
        return weights
    regions = {}
    for name, region in weights.regions.items():
        factor = hit.get(name)
        if factor is None:
            regions[name] = region
            continue
        regions[name] = region.model_copy(
            update={
                "effective_weight": region.effective_weight * factor.factor,
                "reason": f"maintenance {factor.name!r}: weight x {factor.factor:g}",
            }
        )
    scaled = (
        WeightedRecord(r.address, r.region, r.node_id, r.weight * _factor(hit, r.region))
        for r in weights.records
    )
    records = [r for r in scaled if r.weight > 0]
    return weights.model_copy(update={"regions": regions, "records": records})


def _factor(factors: Mapping[str, MaintenanceFactor], region: str) -> float:
    found = factors.get(region)
    return 1.0 if found is None else found.factor
