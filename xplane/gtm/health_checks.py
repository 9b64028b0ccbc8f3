"""Active health checks: XPlane probes every registered node itself (the policy's ``health``).

The rules, pure: :func:`next_health` / :class:`HealthTracker`, a state machine with
hysteresis (a node's health flips only after ``healthy_threshold`` consecutive
successes or ``unhealthy_threshold`` consecutive failures, so one lost probe doesn't
flap DNS), and where a probe goes (:func:`probe_port`, :func:`probe_url`). The probes
themselves are I/O: :func:`xplane.probes.health.probe_all`.

The GTM loop's activity persists the tracker's verdicts as ``health_check_ok``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer

from xplane.config.models import HealthCheck

DEFAULT_PORT = 80


# ------------------------------------------------------------------ state machine
class CheckState(BaseModel):
    """One node's check history: ``healthy`` is None until a threshold is first reached."""

    healthy: bool | None = None
    consecutive_ok: int = Field(default=0, ge=0)
    consecutive_fail: int = Field(default=0, ge=0)


def _pack_states(states: Mapping[str, CheckState]) -> dict[str, list[bool | int | None]]:
    return {
        node: [state.healthy, state.consecutive_ok, state.consecutive_fail]
        for node, state in states.items()
    }


_STATE_FIELDS = ("healthy", "consecutive_ok", "consecutive_fail")


def _unpack_states(value: Any) -> Any:
    """Either form: node id -> ``[healthy, ok, fail]`` (compact) or -> a CheckState's fields."""
    if not isinstance(value, dict) or not isinstance(next(iter(value.values()), None), list):
        return value  # the full form (or models already): nothing to unpack
    return {
        node: dict(zip(_STATE_FIELDS, state, strict=True)) if isinstance(state, list) else state
        for node, state in value.items()
    }


# Node id -> tracker state, in a workflow's history as node id -> [healthy, ok, fail]: one
# entry per node, so at 10,000 nodes the field names were half the GTM loop's payloads.
# Histories written before keep the full form, which still reads.
HealthStates = Annotated[
    dict[str, CheckState],
    BeforeValidator(_unpack_states),
    PlainSerializer(_pack_states, when_used="json"),
]


def next_health(
    prev: CheckState | None, ok: bool, healthy_threshold: int, unhealthy_threshold: int
) -> CheckState:
    """The state after one more probe result (pure)."""
    prev = prev or CheckState()
    if ok:
        oks, fails = prev.consecutive_ok + 1, 0
        healthy = True if oks >= healthy_threshold else prev.healthy
    else:
        oks, fails = 0, prev.consecutive_fail + 1
        healthy = False if fails >= unhealthy_threshold else prev.healthy
    return CheckState(healthy=healthy, consecutive_ok=oks, consecutive_fail=fails)


class HealthTracker:
    """:func:`next_health` for many nodes, with the thresholds of one check."""

    def __init__(self, check: HealthCheck, states: Mapping[str, CheckState] | None = None) -> None:
        self.check = check
        self.states: dict[str, CheckState] = dict(states or {})

    def observe(self, node_id: str, ok: bool) -> CheckState:
        state = next_health(
            self.states.get(node_id),
            ok,
            self.check.healthy_threshold,
            self.check.unhealthy_threshold,
        )
        self.states[node_id] = state
        return state

    def observe_all(self, results: Iterable[ProbeResult]) -> dict[str, bool | None]:
        """Feed a round of probes; return node id -> verdict for nodes whose verdict changed."""
        changed: dict[str, bool | None] = {}
        for result in results:
            before = self.states.get(result.node_id, CheckState()).healthy
            after = self.observe(result.node_id, result.ok).healthy
            if after != before:
                changed[result.node_id] = after
        return changed

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the state of nodes no longer registered."""
        wanted = set(keep)
        self.states = {k: v for k, v in self.states.items() if k in wanted}


# ------------------------------------------------------------------------ probes
class ProbeTarget(BaseModel):
    """A node to probe: its address (IPv4, IPv6 or a host name) and advertised port."""

    node_id: str
    address: str
    port: int | None = Field(default=None, ge=1, le=65535)


class ProbeResult(BaseModel):
    node_id: str
    address: str
    port: int
    ok: bool
    status_code: int | None = None  # http only
    error: str | None = None
    latency_ms: float


def probe_port(target: ProbeTarget, check: HealthCheck) -> int:
    """The check's port, else the node's advertised port, else 80."""
    return check.port or target.port or DEFAULT_PORT


def probe_url(host: str, port: int, path: str) -> str:
    """``http://host:port/path`` with an IPv6 address bracketed."""
    host = host.strip("[]")
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a host name
    return f"http://{host}:{port}/{path.lstrip('/')}"


def probe_order(
    targets: Iterable[ProbeTarget], known: Collection[str], after: str | None
) -> list[ProbeTarget]:
    """The order to probe ``targets`` in when a tick may not reach them all (pure).

    Never-probed nodes first (``known``: the ids with a tracker state), so a new node
    does not wait a whole round; then the others by id, starting after ``after`` (the
    last one probed in the previous tick) and wrapping, so a fleet larger than one
    tick's budget is covered in turn.
    """
    targets = list(targets)
    fresh = sorted((t for t in targets if t.node_id not in known), key=lambda t: t.node_id)
    seen = sorted((t for t in targets if t.node_id in known), key=lambda t: t.node_id)
    if after is not None:
        cut = next((i for i, t in enumerate(seen) if t.node_id > after), len(seen))
        seen = seen[cut:] + seen[:cut]
    return fresh + seen
