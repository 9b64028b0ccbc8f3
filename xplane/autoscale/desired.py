"""How many nodes a region's pool should have (pure: no I/O, no clock).

:func:`desired` turns one window of :class:`RegionMetrics` and a region's
:class:`AutoscaleRegion` policy into a :class:`Decision`. The rules, in order:

1. **Signals** (only from fresh metrics: some sample within ``window`` of ``now``).
   Each signal that has data recommends a node count; the largest wins.

   * CPU, origin meaning: above ``scale_up_cpu`` -> up, below ``scale_down_cpu``
     -> down, inside the band -> stay. By ``scale_up_step`` / ``scale_down_step``,
     unless ``target_cpu`` is set: then the thresholds still decide *whether* to
     move, and the HPA formula ``ceil(current * cpu / target_cpu)`` decides *how
     far*, at least one node and at most one step.
   * QPS (only with ``target_qps_per_node``): ``ceil(current * qps_per_node /
     target)``, bounded by the steps; within ``QPS_TOLERANCE`` of the target -> stay.
   * RTT (only with ``max_rtt_ms``): the window's **p90** RTT above it -> up one
     step (p90, not the median: the tail is what users feel first). Never down.
   * Error rate (only with ``max_error_rate``): the mean above it -> up one step.
   * Lost nodes: ``healthy_nodes + held_nodes < min_nodes`` -> ``current +
     min(min_nodes - healthy - held, replace_budget)``, even with stale or no
     metrics (a dead region reports nothing). Healthy means serving or on its way
     (warming up): a node still warming is not replaced. Held means silent or seen
     down but not yet given up by its lifecycle (the down grace has not expired):
     silence alone is not a death (a sick control plane, a stalled heartbeat path
     look the same), so only a node the lifecycle deleted leaves a gap to fill.
     The budget (``max_replace``, :func:`replace_budget`) bounds how many one
     decision replaces, as Karpenter's disruption budgets do.

2. **Bounds**: clamp to ``[min_nodes, cap]`` where ``cap = min(max_nodes, quota)``
   (``min_nodes`` raised to a calendar window's floor while it is open or pre-warming).
   The quota is a hard account limit, so when ``min_nodes > cap`` the cap wins:
   the result is always within ``[min(min_nodes, cap), cap]``. Bounds are policy,
   not signals: they apply at once, whatever the cooldowns or the metrics say.

3. **Scale-down gates**: stale or missing metrics never scale down (no down
   signal exists without them); a low signal must have held for the whole window
   (``history.low_since``), and ``cooldown.scale_down`` must have passed since
   the last change.

   Inside a calendar window (:mod:`xplane.autoscale.calendar`) or a maintenance
   window the region never scales in (``blocked_by="window"``).

4. **Scale-up gate**: ``cooldown.scale_up`` since the last change. Lost-node
   replacement is gated too: it is not idempotent (the replacement is not ready
   yet on the next tick, so an ungated rule would add a node every tick).

The returned :class:`Decision` carries the :class:`ScaleHistory` to keep for the
next tick once it is applied (``low_since`` updated; after a change, the change
recorded and ``low_since`` reset so the next scale-down waits a full window).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel

from xplane.autoscale.calendar import CalendarFloor
from xplane.autoscale.metrics import RegionMetrics, as_utc
from xplane.config.models import AutoscaleRegion, Cooldown

Direction = Literal["up", "down", "none"]
BlockedBy = Literal["cooldown", "stabilization", "stale_metrics", "max_nodes", "quota", "window"]

QPS_TOLERANCE = 0.1  # HPA's default: ignore QPS within 10% of the target (no flapping)
DEFAULT_MAX_REPLACE = "25%"  # AutoscalePolicy.max_replace's default


def replace_budget(max_replace: int | str, pool: int) -> int:
    """How many lost nodes one decision may replace in a pool of ``pool`` nodes.

    A count is taken as is; a percentage (``"25%"``) is of the pool, rounded up, and
    never below 1 (Karpenter rounds percentages up too): a small pool still gets its
    dead node back, a large one is not doubled by one bad minute.
    """
    if isinstance(max_replace, int):
        return max(1, max_replace)
    share = float(max_replace.strip().removesuffix("%")) / 100
    # round() first: 25% of 4 is 1.0000000000000002 in floats, not 2.
    return max(1, math.ceil(round(pool * share, 9)))


class ScaleHistory(BaseModel):
    """What a region's autoscaler remembers between ticks."""

    last_scaled_at: datetime | None = None  # last applied change (either direction)
    last_direction: Literal["up", "down"] | None = None
    low_since: datetime | None = None  # when the signal went low, continuously since


class Decision(BaseModel):
    current: int
    desired: int
    direction: Direction
    reason: str
    blocked_by: BlockedBy | None = None
    history: ScaleHistory  # to carry to the next tick once this decision is applied


class _Rec(BaseModel):
    """One signal's recommendation."""

    count: int
    reason: str


def _secs(delta: timedelta) -> str:
    return f"{max(0, round(delta.total_seconds()))}s"


def _bounded(current: int, proposed: int, policy: AutoscaleRegion) -> int:
    return max(current - policy.scale_down_step, min(current + policy.scale_up_step, proposed))


def _cpu(cpu: float, current: int, policy: AutoscaleRegion, span: str) -> _Rec:
    up, down = policy.scale_up_cpu, policy.scale_down_cpu
    if cpu > up:
        step = policy.scale_up_step
        if policy.target_cpu and current > 0:
            step = min(step, max(1, math.ceil(current * cpu / policy.target_cpu) - current))
        return _Rec(count=current + step, reason=f"cpu {cpu:.2f} > {up:.2f} for {span}")
    if cpu < down:
        step = policy.scale_down_step
        if policy.target_cpu:
            step = min(step, max(1, current - math.ceil(current * cpu / policy.target_cpu)))
        return _Rec(count=current - step, reason=f"cpu {cpu:.2f} < {down:.2f} for {span}")
    return _Rec(count=current, reason=f"cpu {cpu:.2f} within [{down:.2f}, {up:.2f}]")


def _qps(per_node: float, current: int, target: float, policy: AutoscaleRegion) -> _Rec:
    ratio = per_node / target
    text = f"qps/node {per_node:.1f} vs target {target:g}"
    if current == 0 or abs(ratio - 1) <= QPS_TOLERANCE:
        return _Rec(count=current, reason=text)
    return _Rec(count=_bounded(current, math.ceil(current * ratio), policy), reason=text)


def _signals(
    metrics: RegionMetrics, policy: AutoscaleRegion, current: int, window: timedelta
) -> list[_Rec]:
    span = _secs(window)
    recs: list[_Rec] = []
    if metrics.cpu is not None:
        recs.append(_cpu(metrics.cpu, current, policy, span))
    if policy.target_qps_per_node and metrics.qps_per_node is not None:
        recs.append(_qps(metrics.qps_per_node, current, policy.target_qps_per_node, policy))
    rtt = metrics.rtt_p90_ms
    if policy.max_rtt_ms is not None and rtt is not None and rtt > policy.max_rtt_ms:
        text = f"rtt p90 {rtt:.0f}ms > {policy.max_rtt_ms:g}ms for {span}"
        recs.append(_Rec(count=current + policy.scale_up_step, reason=text))
    err = metrics.error_rate
    if policy.max_error_rate is not None and err is not None and err > policy.max_error_rate:
        text = f"error rate {err:.3f} > {policy.max_error_rate:.3f} for {span}"
        recs.append(_Rec(count=current + policy.scale_up_step, reason=text))
    return recs


def _cooldown_block(
    direction: Literal["up", "down"], cooldown: Cooldown, history: ScaleHistory, now: datetime
) -> str | None:
    if history.last_scaled_at is None:
        return None
    wait = cooldown.scale_up if direction == "up" else cooldown.scale_down
    since = now - as_utc(history.last_scaled_at)
    if since >= wait:
        return None
    last = f"scale-{history.last_direction}" if history.last_direction else "change"
    return f"cooldown: last {last} {_secs(since)} ago < {_secs(wait)}"


def desired(
    metrics: RegionMetrics | None,
    policy: AutoscaleRegion,
    cooldown: Cooldown,
    window: timedelta,
    current: int,
    history: ScaleHistory,
    now: datetime,
    healthy_nodes: int | None = None,
    *,
    held_nodes: int = 0,
    max_replace: int | str = DEFAULT_MAX_REPLACE,
    calendar: CalendarFloor | None = None,
) -> Decision:
    """The node count ``current`` should move to now; see the module docstring.

    ``healthy_nodes``: serving or coming up (None: not judged yet); ``held_nodes``:
    not healthy but not given up by their lifecycle either (never replaced).
    ``calendar``: what scheduled windows ask now (a floor; no scale-in while one is open).
    """
    now = as_utc(now)
    cap = policy.max_nodes if policy.quota is None else min(policy.max_nodes, policy.quota)
    scheduled = calendar.floor if calendar else 0
    floor = min(max(policy.min_nodes, scheduled), cap)
    floor_text = f"min_nodes {floor}"
    if calendar and scheduled > policy.min_nodes:
        floor_text = f"scheduled floor {floor}: {calendar.reason}"

    fresh = metrics is not None and metrics.is_fresh(now, window)
    recs = _signals(metrics, policy, current, window) if fresh and metrics else []
    held_note = ""
    if healthy_nodes is not None and healthy_nodes + held_nodes < policy.min_nodes:
        lost = policy.min_nodes - healthy_nodes - held_nodes
        budget = replace_budget(max_replace, current)
        count = min(lost, budget)
        also = f" + {held_nodes} down, not given up" if held_nodes else ""
        text = f"{healthy_nodes} healthy{also} < min_nodes {policy.min_nodes}: replace {count}"
        if count < lost:
            text += f" of {lost} (max_replace {budget})"
        recs.append(_Rec(count=current + count, reason=text))
    elif healthy_nodes is not None and healthy_nodes < policy.min_nodes:
        # Say why nothing is replaced: the operator sees the nodes down in `xplane status`.
        held_note = f"; {held_nodes} down, held until their lifecycle gives them up"

    if recs:
        best = max(recs, key=lambda r: r.count)
        target, reason = best.count, best.reason
    else:
        target = current
        reason = "no metrics in the window" if not fresh else "no signal with data"
        if metrics is not None and metrics.newest_at is not None and not fresh:
            age = _secs(now - as_utc(metrics.newest_at))
            reason = f"stale metrics: newest sample {age} old > window {_secs(window)}"
    reason += held_note

    low_since: datetime | None = None
    if target < current:
        low_since = as_utc(history.low_since) if history.low_since else now
    kept = history.model_copy(update={"low_since": low_since})

    def decide(count: int, why: str, blocked: BlockedBy | None = None) -> Decision:
        direction: Direction = "up" if count > current else "down" if count < current else "none"
        carry = kept
        if direction != "none":
            carry = ScaleHistory(last_scaled_at=now, last_direction=direction, low_since=None)
        return Decision(
            current=current,
            desired=count,
            direction=direction,
            reason=why,
            blocked_by=blocked,
            history=carry,
        )

    # Bounds first: they are policy and bypass every gate below.
    if current < floor:
        return decide(max(floor, min(target, cap)), f"below {floor_text}; {reason}")
    limit: BlockedBy = "quota" if cap < policy.max_nodes else "max_nodes"
    if current > cap:
        return decide(cap, f"above {limit} {cap}; {reason}")

    clamped = max(floor, min(target, cap))
    if target > current:
        if clamped == current:
            return decide(current, f"{reason}; at {limit} {cap}", limit)
        block = _cooldown_block("up", cooldown, history, now)
        if block:
            return decide(current, f"{block} (wanted {clamped}: {reason})", "cooldown")
        capped = "" if clamped == target else f"; capped at {limit} {cap}"
        return decide(clamped, reason + capped)

    if target < current:
        if clamped == current:
            return decide(current, f"{reason}; at {floor_text}")
        if calendar and calendar.no_scale_in:
            return decide(current, f"{reason}; no scale-in: {calendar.reason}", "window")
        held = now - (low_since or now)
        if held < window:
            why = f"{reason}, low for {_secs(held)} < window {_secs(window)}"
            return decide(current, why, "stabilization")
        block = _cooldown_block("down", cooldown, history, now)
        if block:
            return decide(current, f"{block} (wanted {clamped}: {reason})", "cooldown")
        return decide(clamped, reason)

    blocked: BlockedBy | None = "stale_metrics" if not fresh else None
    return decide(current, reason, blocked)
