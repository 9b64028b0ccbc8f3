"""DNS writes in proportion to traffic changes: the deadband between GTM ticks and DNS.

The GTM loop recomputes weights every tick; most ticks move them a little (a ramp step,
RTT noise). Rewriting the record for each move costs provider API calls (Cloudflare
allows 1,200 per 5 minutes, Route53 5 a second) without changing where clients go in
any way that matters. A record set is therefore rewritten only when

* an address is added or removed (at once: failover must not wait), or
* some address's share of the answers moved by at least ``min_share_change``
  (absolute, 0.02 = 2 percentage points) since the last write, or
* something other than weights changed (name, zone, TTL, owner).

Shares are compared with what was last *written*, not last computed, so slow drift
adds up and is written once it crosses the band. Pure: the loop keeps the last
written :class:`Published` per provider.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from pydantic import BaseModel, Field

from xplane.dns.plan import DesiredService

DEFAULT_MIN_SHARE_CHANGE = 0.02


class Published(BaseModel):
    """What a record set was last written with: enough to judge the next change."""

    layout: str = ""  # fingerprint of everything but the weights ("" = unknown: write)
    shares: dict[str, float] = Field(default_factory=dict)  # address -> share of answers


def shares(desired: DesiredService) -> dict[str, float]:
    """Address -> its share of all weight published for the name (sums to 1, or empty)."""
    weights: dict[str, float] = {}
    for region in desired.regions:
        if region.weight <= 0:
            continue
        for endpoint in region.endpoints:
            if endpoint.weight > 0:
                weights[endpoint.address] = weights.get(endpoint.address, 0.0) + endpoint.weight
    total = sum(weights.values())
    return {a: w / total for a, w in sorted(weights.items())} if total > 0 else {}


def layout(desired: DesiredService) -> str:
    """Fingerprint of the record set without its weights (a change here always writes)."""
    body = {
        "service": desired.service,
        "name": desired.name,
        "zone": desired.zone,
        "ttl": desired.ttl,
        "owner_id": desired.owner_id,
        # Which region serves which addresses (providers with per-region records care).
        "regions": {
            r.region: sorted(e.address for e in r.endpoints if e.weight > 0)
            for r in desired.regions
            if r.weight > 0
        },
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def published(desired: DesiredService) -> Published:
    return Published(layout=layout(desired), shares=shares(desired))


def largest_share_change(before: Mapping[str, float], after: Mapping[str, float]) -> float:
    """The largest absolute move of one address's share (a missing address counts as 0)."""
    return max((abs(after.get(a, 0.0) - before.get(a, 0.0)) for a in {*before, *after}), default=0)


def needs_write(last: Published | None, desired: DesiredService, min_share_change: float) -> bool:
    """Whether ``desired`` differs enough from the last write to be written now."""
    if last is None or not last.layout:
        return True
    now = published(desired)
    if now.layout != last.layout or set(now.shares) != set(last.shares):
        return True  # an address came or went, or the record set itself changed
    # A tiny epsilon: a move of exactly the band (0.02 computed as 0.0199999) counts.
    return largest_share_change(last.shares, now.shares) >= min_share_change - 1e-9
