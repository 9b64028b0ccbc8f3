"""Desired DNS state for provider and plan tests: ``api.svc.plus`` in ``svc.plus``."""

from __future__ import annotations

from collections.abc import Mapping

from xplane.dns.plan import DesiredEndpoint, DesiredRegion, DesiredService

Regions = Mapping[str, tuple[float, Mapping[str, float]]]  # region -> (weight, {address: w})


def desired_service(regions: Regions, ttl: int = 30) -> DesiredService:
    """The service ``api`` with ``regions`` (each node with its own weight)."""
    return DesiredService(
        service="api",
        name="api.svc.plus",
        zone="svc.plus",
        ttl=ttl,
        regions=[
            DesiredRegion(
                region=name,
                weight=weight,
                endpoints=[DesiredEndpoint(address=a, weight=w) for a, w in nodes.items()],
            )
            for name, (weight, nodes) in regions.items()
        ],
    )
