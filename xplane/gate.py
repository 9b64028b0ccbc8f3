"""The self-health gate: may XPlane trust its own view of the world enough to act on it?

Before a destructive step (marking a node down, deleting it, revoking its token,
a replacement commit, removing addresses from DNS) XPlane asks whether the
silence it sees is the nodes' or its own. The gate reasons per region, as the
Kubernetes node controller does per zone (``--unhealthy-zone-threshold``):

* every region of a service silent at once (more than ``max_unready_fraction`` of
  the nodes of each region) -> the fault is assumed to be XPlane's own: the service
  is **held** (nothing removed, deleted or replaced);
* one region fully silent while others beat -> a real failure: **normal**, at once,
  however large the region;
* a region partly silent above ``max_unready_fraction`` -> **rate_limited**: at most
  ``disruption_rate`` nodes per heartbeat timeout; below ``min_unready_count``
  unready nodes none of these rules apply (small pools fail over normally);
* heartbeat intake unhealthy (the API stopped storing beats, stores far fewer
  than it receives, or receives far fewer than the nodes should send) -> **held
  everywhere**; a region wholly silent is left out of what the nodes should send
  (its death is real: it fails over at once);
* recovery: after a gap of more than two heartbeat intervals in the world-state
  scans (store, Temporal or worker down)
  or an unhealthy intake, no node is judged down until it has had a heartbeat
  timeout plus ``quiet_margin`` to report again;
* an operator may close the gate (and open it again) explicitly.

A hold ends by itself once its inputs have been healthy for ``stable_period``.

Everything here is pure (no I/O, no clock): the world-state scan calls
:func:`decide_gate` each tick and stores the :class:`GateDecision`; GTM, the
autoscaler and node lifecycles read it back through :func:`verdict_for` (GTM's view
of the nodes through :func:`trusted_view`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from xplane.domain import NodeSnapshot, NodeStatus
from xplane.durations import Duration, format_duration
from xplane.heartbeat import HeartbeatSettings

Verdict = Literal["normal", "rate_limited", "held"]
EVERYWHERE = "*"  # the scope of a hold that covers every service
ENV_PREFIX = "XPLANE_GATE_"


# Scans further apart than this many heartbeat intervals mean XPlane itself was down.
SCAN_GAP_INTERVALS = 2
# A node with no heartbeat for this many intervals has missed a beat (a quarter of an
# interval of slack for a late one). Also how long beats must stay short of the
# expected rate before the gate holds: by then a region that died when they fell
# short is wholly silent, so it is left out and fails over rather than holding all.
SILENT_INTERVALS = 1.25


class GateSettings(BaseModel):
    """The gate's thresholds (``XPLANE_GATE_<FIELD>`` overrides each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Above this share of unready nodes, a region is "disrupted" (Kubernetes: 0.55).
    max_unready_fraction: float = Field(default=0.55, gt=0, le=1)
    # Fewer unready nodes than this in a region (or a whole service): no rule applies.
    min_unready_count: int = Field(default=3, ge=1)
    # Removals let through per heartbeat timeout in a rate-limited region.
    disruption_rate: int = Field(default=1, ge=0)
    # Inputs healthy this long before a hold ends by itself (None: one heartbeat timeout).
    stable_period: Duration | None = None
    # Added to the heartbeat timeout for the recovery quiet period (None: one interval).
    quiet_margin: Duration | None = None
    # Intake unhealthy when beats received < this share of the beats the nodes should
    # send (regions wholly silent left out). Between the 55 % left by a 45 % loss spread
    # over every region and the 95 % left by a 5 % one.
    min_intake_ratio: float = Field(default=0.75, ge=0, le=1)
    # Intake unhealthy when beats stored < this share of beats received.
    min_stored_ratio: float = Field(default=0.5, ge=0, le=1)
    # Readers hold when the stored decision is older than this (None: 2 x timeout, >= 30 s).
    stale_after: Duration | None = None

    def stable(self, heartbeat: HeartbeatSettings) -> timedelta:
        return self.stable_period if self.stable_period is not None else heartbeat.timeout

    def quiet(self, heartbeat: HeartbeatSettings) -> timedelta:
        margin = self.quiet_margin if self.quiet_margin is not None else heartbeat.interval
        return heartbeat.timeout + margin

    def silent_after(self, heartbeat: HeartbeatSettings) -> timedelta:
        """A node with no heartbeat for longer has missed a beat (at most the timeout)."""
        return min(SILENT_INTERVALS * heartbeat.interval, heartbeat.timeout)

    def stale(self, heartbeat: HeartbeatSettings) -> timedelta:
        if self.stale_after is not None:
            return self.stale_after
        return max(2 * heartbeat.timeout, timedelta(seconds=30))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GateSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            raw = env.get(ENV_PREFIX + name.upper())
            if raw:
                values[name] = raw
        return cls.model_validate(values)


# ------------------------------------------------------------------- inputs
class RegionInput(BaseModel):
    """One region of one service as the scan sees it."""

    service: str
    region: str
    nodes: int = 0  # counted: neither drained nor deleted
    unready: int = 0  # of those, status down
    beating: int = 0  # of those, expected to beat (not already recorded down)
    silent: int = 0  # of those, no heartbeat for longer than silent_after (missed a beat)

    @property
    def wholly_silent(self) -> bool:
        """Every node that should beat has missed a beat: the region died (or is cut
        off) as a whole, a real failure, not the heartbeat path's."""
        return self.beating > 0 and self.silent >= self.beating


class IntakeInput(BaseModel):
    """What the API replicas reported about their heartbeat writes (heartbeat_intake)."""

    newest_age_seconds: float  # since the most recent report of any replica
    received_per_s: float = 0.0  # over replicas that reported recently
    written_per_s: float = 0.0


class GateInputs(BaseModel):
    regions: list[RegionInput] = Field(default_factory=list)
    intake: IntakeInput | None = None  # None: no API replica ever reported
    operator_closed: bool = False
    operator_reason: str | None = None
    operator_opened_at: datetime | None = None  # last explicit `xplane gate open`


# -------------------------------------------------------------------- state
class Hold(BaseModel):
    reasons: list[str]
    since: datetime
    clear_since: datetime | None = None  # inputs healthy since (the stable period runs)


class GateState(BaseModel):
    """Carried from one scan to the next (stored with the decision)."""

    last_scan_at: datetime | None = None
    quiet_since: datetime | None = None
    quiet_until: datetime | None = None
    quiet_reason: str | None = None
    holds: dict[str, Hold] = Field(default_factory=dict)  # EVERYWHERE or a service
    last_disruption: dict[str, datetime] = Field(default_factory=dict)  # "svc/region"
    rate_limited: list[str] = Field(default_factory=list)  # "svc/region", last scan
    intake_low_since: datetime | None = None  # beats received short of expected since
    intake_ok_since: datetime | None = None  # ...but not in the scans since (a burst)


class RegionVerdict(BaseModel):
    service: str
    region: str
    verdict: Verdict = "normal"
    reason: str = ""
    budget: int | None = None  # removals allowed now (None: no limit)


class GateQuery(BaseModel):
    """A reader's question (the ``gate_verdict`` activity): may this region lose nodes?"""

    service: str
    region: str
    now: datetime | None = None  # the workflow's clock; None: the wall clock


class GateChange(BaseModel):
    scope: str  # EVERYWHERE, a service, or "svc/region"
    kind: Literal["closed", "opened", "rate_limited", "normal"]
    reason: str


class GateDecision(BaseModel):
    at: datetime
    state: GateState
    reasons: list[str] = Field(default_factory=list)  # the hold everywhere, if any
    regions: dict[str, RegionVerdict] = Field(default_factory=dict)  # "svc/region"
    changes: list[GateChange] = Field(default_factory=list)

    @property
    def held_everywhere(self) -> bool:
        return EVERYWHERE in self.state.holds

    def verdict(self, service: str, region: str) -> RegionVerdict:
        found = self.regions.get(key(service, region))
        if found is not None:
            return found
        hold = self.state.holds.get(EVERYWHERE) or self.state.holds.get(service)
        if hold is not None:
            return RegionVerdict(
                service=service, region=region, verdict="held", reason="; ".join(hold.reasons)
            )
        return RegionVerdict(service=service, region=region)

    def summary(self) -> dict[str, Any]:
        """Small and JSON-able, for status queries and ``xplane status``."""
        return {
            "open": not self.state.holds,
            "holds": {scope: "; ".join(h.reasons) for scope, h in self.state.holds.items()},
            "rate_limited": list(self.state.rate_limited),
            "quiet_until": self.state.quiet_until.isoformat() if self.state.quiet_until else None,
        }


def key(service: str, region: str) -> str:
    return f"{service}/{region}"


# ---------------------------------------------------------------- decision
def decide_gate(
    inputs: GateInputs,
    previous: GateState,
    now: datetime,
    heartbeat: HeartbeatSettings,
    settings: GateSettings,
) -> GateDecision:
    """The gate at ``now``: holds (everywhere / per service), per-region verdicts, changes."""
    state = GateState(
        last_scan_at=now,
        quiet_since=previous.quiet_since,
        quiet_until=previous.quiet_until,
        quiet_reason=previous.quiet_reason,
        last_disruption=dict(previous.last_disruption),
    )
    global_reasons: list[str] = []
    if inputs.operator_closed:
        global_reasons.append(f"closed by operator: {inputs.operator_reason or 'no reason given'}")
    intake_reasons, state.intake_low_since, state.intake_ok_since = _intake_reasons(
        inputs, previous, now, heartbeat, settings
    )
    global_reasons.extend(intake_reasons)

    # Recovery: silence that began while XPlane could not see is not the nodes'.
    gap = now - previous.last_scan_at if previous.last_scan_at is not None else None
    quiet_cause = None
    # A scan tick may run late by up to an interval on a busy worker: only a longer
    # gap is an outage (measured: with 1 s beats and a 1 s scan tick on two busy cores,
    # "more than one interval" held the gate closed for good). A store outage that
    # left beats unstored shows as an unhealthy intake as well.
    if gap is not None and gap > SCAN_GAP_INTERVALS * heartbeat.interval:
        quiet_cause = f"no world-state scan for {format_duration(_round(gap))}"
    elif intake_reasons:
        quiet_cause = "heartbeat intake unhealthy"
    if quiet_cause is not None:
        until = now + settings.quiet(heartbeat)
        if state.quiet_until is None or until > state.quiet_until:
            if state.quiet_until is None or state.quiet_until <= now:
                state.quiet_since = now
            state.quiet_until, state.quiet_reason = until, quiet_cause
    opened = inputs.operator_opened_at
    if state.quiet_until is not None and (
        state.quiet_until <= now
        or (opened is not None and state.quiet_since and opened >= state.quiet_since)
    ):
        state.quiet_since = state.quiet_until = state.quiet_reason = None
    quiet = state.quiet_until is not None

    raw: dict[str, list[str]] = {EVERYWHERE: global_reasons}
    by_service: dict[str, list[RegionInput]] = {}
    for r in inputs.regions:
        by_service.setdefault(r.service, []).append(r)
    for service, regions in sorted(by_service.items()):
        raw[service] = _service_reasons(service, regions, settings)

    stable = settings.stable(heartbeat)
    changes: list[GateChange] = []
    for scope in sorted(set(raw) | set(previous.holds)):
        reasons = raw.get(scope, [])
        prev = previous.holds.get(scope)
        waiting = scope == EVERYWHERE and quiet
        if reasons:
            state.holds[scope] = Hold(reasons=reasons, since=prev.since if prev else now)
            if prev is None:
                changes.append(GateChange(scope=scope, kind="closed", reason="; ".join(reasons)))
            continue
        if prev is None and not waiting:
            continue
        if prev is None:  # the quiet period alone
            assert state.quiet_reason is not None
            reason = f"recovery quiet period: {state.quiet_reason}"
            state.holds[scope] = Hold(reasons=[reason], since=now, clear_since=now)
            changes.append(GateChange(scope=scope, kind="closed", reason=reason))
            continue
        clear_since = prev.clear_since or now
        by_operator = opened is not None and opened >= prev.since
        if not waiting and (by_operator or now - clear_since >= stable):
            why = "opened by operator" if by_operator else "inputs healthy"
            changes.append(
                GateChange(
                    scope=scope,
                    kind="opened",
                    reason=f"{why} for {format_duration(_round(now - clear_since))}",
                )
            )
            continue
        kept = [r for r in prev.reasons if not r.startswith("recovery quiet period")]
        if waiting:
            kept.append(f"recovery quiet period: {state.quiet_reason}")
        state.holds[scope] = Hold(
            reasons=kept or prev.reasons, since=prev.since, clear_since=clear_since
        )

    everywhere = state.holds.get(EVERYWHERE)
    decision = GateDecision(at=now, state=state, reasons=everywhere.reasons if everywhere else [])
    for r in inputs.regions:
        verdict = _region_verdict(r, decision, previous, now, heartbeat, settings)
        decision.regions[key(r.service, r.region)] = verdict
        if verdict.verdict == "rate_limited":
            state.rate_limited.append(key(r.service, r.region))
    before, after = set(previous.rate_limited), set(state.rate_limited)
    for scope in sorted(after - before):
        changes.append(
            GateChange(scope=scope, kind="rate_limited", reason=decision.regions[scope].reason)
        )
    for scope in sorted(before - after):
        changes.append(GateChange(scope=scope, kind="normal", reason="no longer rate limited"))
    decision.changes = changes
    return decision


def _intake_reasons(
    inputs: GateInputs,
    previous: GateState,
    now: datetime,
    heartbeat: HeartbeatSettings,
    settings: GateSettings,
) -> tuple[list[str], datetime | None, datetime | None]:
    """Why the heartbeat intake cannot be trusted, if it cannot; since when the beats
    received have been short of the expected rate (None: they are not), and since when
    they have not been, within such a shortfall."""
    intake = inputs.intake
    if intake is None:
        return [], None, None  # no API replica reports (heartbeats written some other way)
    beating = sum(r.beating for r in inputs.regions)
    # Beats are due from this many nodes; below min_unready_count their silence is
    # no more than a small pool failing, which must fail over.
    stale = 2 * heartbeat.interval_seconds
    if beating >= settings.min_unready_count and intake.newest_age_seconds > stale:
        reason = (
            f"heartbeat intake stalled: no heartbeat stored for {intake.newest_age_seconds:.0f}s "
            f"while {beating} nodes should beat"
        )
        return [reason], None, None
    reasons = []
    if (
        intake.received_per_s > 0
        and intake.written_per_s < settings.min_stored_ratio * intake.received_per_s
    ):
        reasons.append(
            f"heartbeat intake unhealthy: {intake.written_per_s:.1f}/s stored of "
            f"{intake.received_per_s:.1f}/s received"
        )
    short, why = _beats_short(inputs.regions, intake, heartbeat, settings)
    since, ok_since = previous.intake_low_since, None
    if short:
        since = since or now
    elif since is not None:
        # A rate over a second jumps with a burst of late beats: a shortfall ends only
        # when beats have arrived at the rate for an interval, or no node is silent.
        ok_since = previous.intake_ok_since or now
        silent = sum(r.silent for r in inputs.regions if not r.wholly_silent)
        if now - ok_since >= heartbeat.interval or silent < settings.min_unready_count:
            since = ok_since = None
    if why is not None and since is not None and now - since >= settings.silent_after(heartbeat):
        reasons.append(why)
    return reasons, since, ok_since


def _beats_short(
    regions: Sequence[RegionInput],
    intake: IntakeInput,
    heartbeat: HeartbeatSettings,
    settings: GateSettings,
) -> tuple[bool, str | None]:
    """Whether the beats received (summed over the API replicas) are short of
    ``min_intake_ratio`` of the rate the nodes should send, and why to hold for it
    (None: the store does not agree).

    Expected: one beat per interval from every node that should beat (counted, not
    recorded down), leaving out the regions wholly silent -- a region that died is a
    real failure and fails over at once, however large. The store must agree: at
    least ``min_unready_count`` of those nodes have missed a beat, and fewer than
    ``min_intake_ratio`` of them beat on time. So a received rate measured over a
    second (noisy with a few nodes) or a small pool failing never holds everything.
    The caller holds only once beats have been short for ``silent_after``: a region
    that died when they fell short is wholly silent by then, and left out.
    """
    counted = [r for r in regions if not r.wholly_silent]
    beating = sum(r.beating for r in counted)
    silent = sum(r.silent for r in counted)
    expected = beating / heartbeat.interval_seconds
    ratio = settings.min_intake_ratio
    if intake.received_per_s >= ratio * expected:
        return False, None
    if silent < settings.min_unready_count or beating - silent >= ratio * beating:
        return True, None
    left_out = len(regions) - len(counted)
    outside = f", {left_out} wholly silent region(s) left out" if left_out else ""
    return True, (
        f"heartbeat intake low: {intake.received_per_s:.1f}/s received of {expected:.1f}/s "
        f"expected from {beating} nodes ({silent} of them missed a beat{outside})"
    )


def _service_reasons(service: str, regions: list[RegionInput], settings: GateSettings) -> list[str]:
    """Every region of the service disrupted at once: the silence is XPlane's own."""
    counted = [r for r in regions if r.nodes > 0]
    if not counted or sum(r.unready for r in counted) < settings.min_unready_count:
        return []
    if all(r.unready / r.nodes > settings.max_unready_fraction for r in counted):
        parts = ", ".join(f"{r.region} {r.unready}/{r.nodes}" for r in counted)
        return [f"every region of {service} silent at once ({parts} unready)"]
    return []


def _region_verdict(
    r: RegionInput,
    decision: GateDecision,
    previous: GateState,
    now: datetime,
    heartbeat: HeartbeatSettings,
    settings: GateSettings,
) -> RegionVerdict:
    hold = decision.state.holds.get(EVERYWHERE) or decision.state.holds.get(r.service)
    if hold is not None:
        return RegionVerdict(
            service=r.service, region=r.region, verdict="held", reason="; ".join(hold.reasons)
        )
    if r.nodes == 0 or r.unready < settings.min_unready_count:
        return RegionVerdict(service=r.service, region=r.region)
    if r.unready == r.nodes:
        # The whole region at once while others beat: a real failure, fail over now.
        return RegionVerdict(service=r.service, region=r.region, reason="region fully silent")
    if r.unready / r.nodes <= settings.max_unready_fraction:
        return RegionVerdict(service=r.service, region=r.region)
    last = previous.last_disruption.get(key(r.service, r.region))
    budget = settings.disruption_rate if last is None or now - last >= heartbeat.timeout else 0
    return RegionVerdict(
        service=r.service,
        region=r.region,
        verdict="rate_limited",
        reason=f"{r.unready}/{r.nodes} unready: {settings.disruption_rate} removal(s) per "
        f"{format_duration(heartbeat.timeout)}",
        budget=budget,
    )


def spend(state: GateState, service: str, region: str, now: datetime) -> GateState:
    """Record that a rate-limited region let a removal through at ``now``."""
    return state.model_copy(
        update={"last_disruption": {**state.last_disruption, key(service, region): now}}
    )


def verdict_for(
    decision: GateDecision | None,
    service: str,
    region: str,
    now: datetime,
    heartbeat: HeartbeatSettings,
    settings: GateSettings,
    *,
    operator_closed: bool = False,
    operator_reason: str | None = None,
) -> RegionVerdict:
    """The verdict a reader (GTM, autoscaler, lifecycle) acts on.

    No decision stored yet: normal (no world-state scan has judged anything). A
    decision older than ``stale_after``: held, since the scan that keeps it fresh
    is not running and nothing it would see can be trusted. An operator's close
    holds at once, before the next scan.
    """
    if operator_closed:
        return RegionVerdict(
            service=service,
            region=region,
            verdict="held",
            reason=f"closed by operator: {operator_reason or 'no reason given'}",
        )
    if decision is None:
        return RegionVerdict(service=service, region=region)
    age = now - decision.at
    if age > settings.stale(heartbeat):
        return RegionVerdict(
            service=service,
            region=region,
            verdict="held",
            reason=f"gate not refreshed for {format_duration(_round(age))} "
            "(world-state scan not running)",
        )
    return decision.verdict(service, region)


def _round(delta: timedelta) -> timedelta:
    return timedelta(seconds=round(delta.total_seconds()))


def unconfirmed_silence(
    last_heartbeat_at: datetime | None,
    recorded_status: str | None,
    now: datetime,
    timeout: timedelta,
) -> bool:
    """Silent past the timeout, but the world-state scan has not let its down through.

    Once a gate decision exists, readers (GTM, autoscaler) take silence as down only
    when the scan recorded it: the scan judges it with the gate in the same tick, so
    a reader never acts on a silence the gate is holding (nor races the gate's
    closing). The node still counts as it was last recorded: up.
    """
    silent = last_heartbeat_at is None or now - last_heartbeat_at > timeout
    return silent and recorded_status == NodeStatus.UP.value


class RecordedFacts(Protocol):
    """What :func:`trusted_view` reads of a node besides its snapshot (a store row)."""

    @property
    def last_heartbeat_at(self) -> datetime | None: ...
    @property
    def recorded_status(self) -> str | None: ...


class GateRecord(Protocol):
    """The gate as stored: the scan's last decision and the operator's switch."""

    @property
    def decision(self) -> GateDecision | None: ...
    @property
    def operator_closed(self) -> bool: ...
    @property
    def operator_reason(self) -> str | None: ...


@dataclass(frozen=True)
class GateTrust:
    """What the gate does to GTM's view of one service's nodes, as facts a query can apply.

    ``silence_unconfirmed``: a decision exists (or the operator closed the gate), so a
    silence the world-state scan has not recorded keeps its node up (see
    :func:`unconfirmed_silence`); ``checks_untrusted``: the held regions, where a failing
    active check is not trusted; ``gate``: region -> verdict when not normal.
    :func:`trusted_view` applies it per node; ``gtm_aggregates`` in the store applies the
    same two rules in SQL, so the weights need no node list.
    """

    silence_unconfirmed: bool = False
    checks_untrusted: frozenset[str] = frozenset()
    gate: dict[str, str] = field(default_factory=dict)


def gate_trust(
    stored: GateRecord,
    service: str,
    regions: Iterable[str],
    now: datetime,
    heartbeat: HeartbeatSettings,
    settings: GateSettings,
) -> GateTrust:
    """The gate's verdicts on ``service``'s ``regions`` (those it has nodes in), as trust."""
    if stored.decision is None and not stored.operator_closed:
        return GateTrust()
    verdicts = {
        region: verdict_for(
            stored.decision,
            service,
            region,
            now,
            heartbeat,
            settings,
            operator_closed=stored.operator_closed,
            operator_reason=stored.operator_reason,
        )
        for region in set(regions)
    }
    return GateTrust(
        silence_unconfirmed=True,
        checks_untrusted=frozenset(r for r, v in verdicts.items() if v.verdict == "held"),
        gate={
            region: f"{v.verdict}: {v.reason}"
            for region, v in sorted(verdicts.items())
            if v.verdict != "normal"
        },
    )


def trusted_view(
    nodes: Sequence[NodeSnapshot],
    facts: Sequence[RecordedFacts],
    stored: GateRecord,
    service: str,
    now: datetime,
    heartbeat: HeartbeatSettings,
    settings: GateSettings,
) -> tuple[list[NodeSnapshot], dict[str, str]]:
    """The nodes as the self-health gate lets GTM see them, and the regions it holds.

    ``facts[i]`` are the recorded facts of ``nodes[i]``. Without a gate decision (no
    world-state scan ever ran) the nodes as they are. Otherwise a silence the
    world-state scan has not confirmed (it holds or has not judged it yet) keeps the
    node as last recorded, up, so it stays in DNS; in a held region a failing active
    check is not trusted either (XPlane's own probes may be what is cut off). Drains
    and operator changes still apply.
    """
    out = list(nodes)
    trust = gate_trust(stored, service, (n.region for n in nodes), now, heartbeat, settings)
    if not trust.silence_unconfirmed:
        return out, trust.gate
    for i, (node, fact) in enumerate(zip(nodes, facts, strict=True)):
        if node.status is NodeStatus.DOWN and unconfirmed_silence(
            fact.last_heartbeat_at, fact.recorded_status, now, heartbeat.timeout
        ):
            node = node.model_copy(update={"status": NodeStatus.UP, "heartbeat_age_seconds": 0.0})
        if node.region in trust.checks_untrusted and node.health_check_ok is False:
            node = node.model_copy(update={"health_check_ok": None})
        out[i] = node
    return out, trust.gate
