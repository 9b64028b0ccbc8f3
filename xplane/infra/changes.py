"""Which node pools a push touched (pure): paths in, region names out."""

from __future__ import annotations

import re
from collections.abc import Iterable

from xplane.infra.render import NODE_POOL_DIR

MODULES_DIR = "modules"
ZERO_SHA = "0" * 40

_TFVARS = re.compile(rf"^{NODE_POOL_DIR}/(?P<region>[^/]+)\.tfvars$")
_ROOT = re.compile(rf"^{NODE_POOL_DIR}/(?P<region>[^/]+)/")
_SERVICE = re.compile(r'^\s*service\s*=\s*"(?P<service>[^"]*)"\s*(?:(?:#|//).*)?$', re.M)


def touched_regions(changed: Iterable[str], present: Iterable[str]) -> list[str]:
    """Regions whose tfvars or root module changed, sorted.

    A change under ``modules/`` (or ``infra/cloud-init``) can alter every pool, so it
    touches every region ``present`` (the regions of the pushed tree).
    """
    regions: set[str] = set()
    shared = False
    for path in changed:
        if (match := _TFVARS.match(path) or _ROOT.match(path)) is not None:
            if match.group("region") == MODULES_DIR:
                shared = True
            else:
                regions.add(match.group("region"))
        elif path.startswith("infra/cloud-init/"):
            shared = True
    if shared:
        regions.update(present)
    return sorted(regions)


def regions_in_tree(paths: Iterable[str]) -> list[str]:
    """Regions with a root module (``infra/node-pool/<r>/main.tf``) in a tree listing."""
    found = {
        match.group("region")
        for path in paths
        if path.endswith("/main.tf") and (match := _ROOT.match(path)) is not None
    }
    found.discard(MODULES_DIR)
    return sorted(found)


def service_of(tfvars: str) -> str | None:
    """The ``service = "..."`` value of a tfvars text."""
    match = _SERVICE.search(tfvars)
    return match.group("service") if match else None
