"""The GTM what-if: the weights a config tree gives an imagined world (no servers).

``xplane gtm plan`` reads a config directory and a ``WORLD.json``
(:class:`~xplane.domain.WorldSnapshot`) and prints what the GTM loop would publish,
without ramp history (so target weights). :func:`weights_for_world` is pure;
:func:`load_world` is the thin file reader with errors that name the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from xplane.config.errors import format_path, validation_errors
from xplane.config.models import ConfigTree
from xplane.domain import WorldSnapshot
from xplane.gtm.weights import (
    ServiceWeights,
    compute_service_weights,
    pools_of_service,
)
from xplane.heartbeat import DEFAULT as DEFAULT_HEARTBEAT

# Keys of the JSON output (a contract: tests and scripts read them).
REGION_KEYS = (
    "base_weight",
    "health_ratio",
    "ready_nodes_factor",
    "latency_factor",
    "effective_weight",
    "ready_nodes",
)
_DIGITS = 6  # floats in the output: enough for any provider's quantisation


class WhatIfError(ValueError):
    """A what-if input is unusable; the message names the file and field."""


def load_world(path: Path) -> WorldSnapshot:
    """Read and validate ``WORLD.json``; :class:`WhatIfError` names the file and field."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise WhatIfError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise WhatIfError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    try:
        return WorldSnapshot.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {format_path(loc)}: {msg}" for loc, msg in validation_errors(exc, data)]
        raise WhatIfError("\n".join(lines)) from None


def weights_for_world(
    config: ConfigTree,
    world: WorldSnapshot,
    service: str | None = None,
    *,
    heartbeat_timeout_s: float = DEFAULT_HEARTBEAT.timeout_seconds,
) -> dict[str, ServiceWeights]:
    """Weights of every GTM service (or just ``service``) in ``world``, sorted by service.

    ``heartbeat_timeout_s``: the deployment's (``HeartbeatSettings``), as the GTM loop uses.
    """
    if service is not None and service not in config.gtm:
        known = ", ".join(sorted(config.gtm)) or "none"
        raise WhatIfError(f"service {service!r} has no gtm policy (gtm services: {known})")
    names = [service] if service is not None else sorted(config.gtm)
    result: dict[str, ServiceWeights] = {}
    for name in names:
        policy = config.gtm[name]
        result[name] = compute_service_weights(
            policy,
            config.regions,
            world.nodes,
            pools_of_service(name, world.pools),
            heartbeat_timeout_s,
        )
    return result


def weights_to_json(weights_by_service: dict[str, ServiceWeights]) -> dict[str, Any]:
    """The CLI's JSON document (``{"services": {svc: {fail_open, regions, records}}}``).

    Extra keys (``reason``, ``node_id``, node counts) help humans and break no reader.
    """
    services: dict[str, Any] = {}
    for name, weights in weights_by_service.items():
        regions = {}
        for region, rw in weights.regions.items():
            row: dict[str, Any] = {key: _num(getattr(rw, key)) for key in REGION_KEYS}
            row |= {"registered_nodes": rw.registered_nodes, "reason": rw.reason}
            regions[region] = row
        services[name] = {
            "fail_open": weights.fail_open,
            "reason": weights.reason,
            "regions": regions,
            "records": [
                {
                    "address": r.address,
                    "region": r.region,
                    "weight": _num(r.weight),
                    "node_id": r.node_id,
                }
                for r in weights.records
            ],
        }
    return {"services": services}


def _num(value: float | int) -> float | int:
    return round(value, _DIGITS) if isinstance(value, float) else value
