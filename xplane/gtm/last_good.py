"""DNS is never emptied and never frozen on dead addresses while a live node exists (pure).

The GTM loop asks :func:`dns_action` before it writes one provider's record set:

* ``hold`` - do not write; DNS keeps what it has, the last answer written while some
  node of the service was up (the *last good* set):

  - the answer has no address at all (every node gone): an empty name answers nobody,
    and the provider's safety check would refuse it anyway;
  - no node of the service is up (every node down, or only dead ones left to publish)
    and this provider was written before: shrinking DNS as the dead nodes are deleted
    one by one would end on whichever address was deleted last. If the nodes are in
    fact alive and only XPlane cannot hear them, the held set still serves;

* ``force`` - write past the provider's safety threshold: the loop held this provider
  on its last tick and now has something live to publish. What DNS holds are addresses
  of nodes that were all down or gone; leaving them (the threshold refuses removing
  most addresses of a name) would freeze DNS on dead addresses while a live one exists.
  Held is per provider: one publishing only some regions holds when those are empty;

* ``write`` - the ordinary case (the deadband still decides whether it is worth it).
"""

from __future__ import annotations

from typing import Literal

from xplane.dns.plan import DesiredService
from xplane.gtm.weights import ServiceWeights

DnsAction = Literal["write", "hold", "force"]


def dns_action(
    weights: ServiceWeights, desired: DesiredService, written_before: bool, holding: bool
) -> DnsAction:
    """What to do with ``desired`` (one provider's share of ``weights``).

    ``written_before``: the loop wrote this provider already (DNS holds an answer of
    ours); ``holding``: the loop's previous tick held this provider.
    """
    if not desired.addresses():
        return "hold"
    if not weights.live:
        return "hold" if written_before else "write"
    return "force" if holding else "write"
