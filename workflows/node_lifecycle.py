"""NodeLifecycleWorkflow (ID ``node-<node_id>``): idle -> warm -> active -> drain -> delete.

Started by the API on registration (signal-with-start), driven by the
world-state loop's ``heartbeat_state_changed`` signals (transitions only, never
heartbeats), by ``drain`` (operator or autoscaler) and ``deregistered``.
Timers give the time-based transitions: warm-up, the down grace period, and
drain (record TTL + drain timeout). The transition rules are the pure
:mod:`xplane.lifecycle.node_fsm`; illegal events are refused and logged.

Operators act through the ``drain`` / ``undrain`` Workflow Updates: validated against
the current state (a refusal names why and leaves no trace in history), queued behind
the events already in the inbox, and answered once the transition is written.

Every transition is written to the store (the API and GTM read the store,
never this workflow), wakes ``gtm-<service>`` when traffic must move, and a
node given up after the grace period signals ``node_lost`` to
``autoscale-<service>-<region>`` so the pool is refilled.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal, TypeAlias

from pydantic import BaseModel, Field
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import ids, policies

with workflow.unsafe.imports_passed_through():
    from xplane.domain import NodeState
    from xplane.gate import GateQuery, RegionVerdict
    from xplane.lifecycle.node_fsm import (
        IllegalTransition,
        NodeEvent,
        next_state,
        operator_refusal,
    )

HISTORY_KEEP = 20  # transitions kept in the status query
# Patch: giving a node up (delete, token revoked, replacement asked) waits for the
# self-health gate. Runs that started before it give up at once, as they did.
GATE_PATCH = "node-give-up-waits-for-gate"
SEEN_KEEP = 8  # transition ids remembered: a retry re-sends within seconds
REASON_KEEP = 512  # the store's state_reason / drain_reason columns


class NodeTimings(BaseModel):
    warmup_seconds: float = 10.0  # healthy this long in warm -> active
    down_grace_seconds: float = 120.0  # down this long -> given up
    dns_ttl_seconds: float = 30.0  # clients may cache the record this long
    drain_timeout_seconds: float = 30.0  # extra time for connections to finish

    @classmethod
    def from_env(cls) -> NodeTimings:
        """Defaults, overridden by XPLANE_NODE_WARMUP / _DOWN_GRACE / _DRAIN_TIMEOUT (seconds).

        Read by whoever starts the workflow (API, world-state activity), never in
        workflow code, so the values are fixed in the run's input.
        """
        import os

        names = {
            "warmup_seconds": "XPLANE_NODE_WARMUP",
            "down_grace_seconds": "XPLANE_NODE_DOWN_GRACE",
            "drain_timeout_seconds": "XPLANE_NODE_DRAIN_TIMEOUT",
        }
        return cls(**{k: float(os.environ[v]) for k, v in names.items() if os.environ.get(v)})


class HeartbeatChange(BaseModel):
    """From the world-state loop: the node's observed status changed."""

    status: Literal["up", "down", "drain"]
    reason: str = ""
    # Names the scan's transition ("<was>-><status>@<scan time>"): a retried scan that
    # re-sends one it delivered before dying is ignored. None (older senders): applied.
    transition: str | None = None


class DrainRequest(BaseModel):
    by: str = "operator"
    reason: str = "drain requested"


class NodeActionRequest(BaseModel):
    """An operator's ``drain`` / ``undrain`` Workflow Update: answered, or refused."""

    reason: str
    by: str = "operator"


class NodeActionResult(BaseModel):
    """What a ``drain`` / ``undrain`` update did."""

    node_id: str
    action: Literal["drain", "undrain"]
    from_state: NodeState
    state: NodeState
    message: str


InboxItem: TypeAlias = tuple[NodeEvent, str]


class Transition(BaseModel):
    at: datetime
    from_state: NodeState
    to_state: NodeState
    event: NodeEvent
    reason: str


class NodeLifecycleCarry(BaseModel):
    state: NodeState = NodeState.IDLE
    since: datetime | None = None
    reason: str = "registered"
    down_since: datetime | None = None
    # The self-health gate held the give-up: ask again at this time (and why).
    gate_held_until: datetime | None = None
    gate_reason: str | None = None
    history: list[Transition] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
    inbox: list[tuple[NodeEvent, str]] = Field(default_factory=list)
    transitions_seen: list[str] = Field(default_factory=list)  # recent HeartbeatChange ids


class NodeLifecycleParams(BaseModel):
    node_id: str
    service: str
    region: str
    timings: NodeTimings = Field(default_factory=NodeTimings)
    carry: NodeLifecycleCarry | None = None


class NodeLifecycleStatus(BaseModel):
    node_id: str
    state: NodeState
    since: datetime | None
    reason: str
    down_since: datetime | None
    history: list[Transition]
    refused: list[str]
    held_by_gate: str | None = None


class NodeStateRecord(BaseModel):
    """Input of the ``record_node_state`` activity."""

    node_id: str
    service: str
    region: str
    from_state: NodeState
    state: NodeState
    event: NodeEvent
    reason: str
    at: datetime
    request_drain: bool = False
    withdraw_drain: bool = False  # undrain: the agent is no longer told to drain


@workflow.defn(name=ids.NODE_LIFECYCLE)
class NodeLifecycleWorkflow:
    def __init__(self) -> None:
        self.c = NodeLifecycleCarry()
        self.p: NodeLifecycleParams | None = None
        # Inbox items an update waits for (by identity), and their outcome once handled:
        # (state before, state after, refusal or None).
        self._awaited: list[InboxItem] = []
        self._answers: dict[int, tuple[NodeState, NodeState, str | None]] = {}

    # ------------------------------------------------------------------ signals
    @workflow.signal
    def heartbeat_state_changed(self, change: HeartbeatChange) -> None:
        if change.transition is not None:
            if change.transition in self.c.transitions_seen:
                return  # the same transition again: a retried world-state scan
            self.c.transitions_seen = [
                *self.c.transitions_seen[-(SEEN_KEEP - 1) :],
                change.transition,
            ]
        event = {"up": NodeEvent.UP, "down": NodeEvent.DOWN, "drain": NodeEvent.DRAIN}[
            change.status
        ]
        self.c.inbox.append((event, change.reason or f"status {change.status}"))

    @workflow.signal
    def registered(self, address: str = "") -> None:
        """What the API's signal-with-start carries on (re-)registration: no transition."""

    @workflow.signal
    def drain(self, request: DrainRequest) -> None:
        self.c.inbox.append((NodeEvent.DRAIN, f"drain by {request.by}: {request.reason}"))

    @workflow.signal
    def deregistered(self, reason: str = "deregistered") -> None:
        self.c.inbox.append((NodeEvent.DEREGISTERED, reason))

    # ------------------------------------------------------------------ updates
    # Operators' actions, answered: the validator refuses what cannot apply (the caller
    # sees why, nothing reaches history), the handler queues the event behind the
    # machine events already in the inbox and answers once the run loop handled it.
    @workflow.update(name="drain")
    async def drain_update(self, request: NodeActionRequest) -> NodeActionResult:
        return await self._operator(
            NodeEvent.DRAIN, f"drain by {request.by}: {request.reason}", "drain"
        )

    @drain_update.validator
    def _validate_drain(self, request: NodeActionRequest) -> None:
        self._validate(NodeEvent.DRAIN, request)

    @workflow.update(name="undrain")
    async def undrain_update(self, request: NodeActionRequest) -> NodeActionResult:
        return await self._operator(
            NodeEvent.UNDRAIN, f"undrain by {request.by}: {request.reason}", "undrain"
        )

    @undrain_update.validator
    def _validate_undrain(self, request: NodeActionRequest) -> None:
        self._validate(NodeEvent.UNDRAIN, request)

    def _node(self) -> str:
        return workflow.info().workflow_id.removeprefix("node-")

    def _validate(self, event: NodeEvent, request: NodeActionRequest) -> None:
        if not request.reason.strip():
            raise ValueError("a reason is required")
        refusal = operator_refusal(self._node(), self.c.state, event)
        if refusal is not None:
            raise ValueError(refusal)

    async def _operator(
        self, event: NodeEvent, reason: str, action: Literal["drain", "undrain"]
    ) -> NodeActionResult:
        item: InboxItem = (event, reason[:REASON_KEEP])
        self._awaited.append(item)
        self.c.inbox.append(item)
        await workflow.wait_condition(lambda: id(item) in self._answers)
        before, after, refusal = self._answers.pop(id(item))
        self._awaited = [i for i in self._awaited if i is not item]
        if refusal is not None:  # the state moved on between validation and handling
            raise ApplicationError(refusal, type="ActionRefused", non_retryable=True)
        return NodeActionResult(
            node_id=self._node(),
            action=action,
            from_state=before,
            state=after,
            message=f"node {self._node()}: {before.value} -> {after.value}",
        )

    def _answer(self, item: InboxItem, before: NodeState, refusal: str | None) -> None:
        if id(item) not in self._answers and any(i is item for i in self._awaited):
            self._answers[id(item)] = (before, self.c.state, refusal)

    @workflow.query
    def status(self) -> NodeLifecycleStatus:
        return NodeLifecycleStatus(
            node_id=workflow.info().workflow_id.removeprefix("node-"),
            state=self.c.state,
            since=self.c.since,
            reason=self.c.reason,
            down_since=self.c.down_since,
            history=self.c.history,
            refused=self.c.refused,
            held_by_gate=self.c.gate_reason if self.c.gate_held_until else None,
        )

    # --------------------------------------------------------------------- run
    @workflow.run
    async def run(self, params: NodeLifecycleParams) -> NodeLifecycleStatus:
        self.p = params
        if params.carry is not None:
            # Keep signals that arrived before this run started (signal-with-start).
            early, self.c = self.c, params.carry
            self.c.inbox.extend(early.inbox)
            self.c.transitions_seen.extend(early.transitions_seen)
        if self.c.since is None:
            self.c.since = workflow.now()
        while self.c.state is not NodeState.DELETE:
            item = await self._next_event()
            before = self.c.state
            refusal = await self._handle(*item)
            self._answer(item, before, refusal)
            # An update waiting for its inbox item is answered in this run, first.
            if workflow.info().is_continue_as_new_suggested() and not self._awaited:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(params.model_copy(update={"carry": self.c}))
        for item in self._awaited:  # queued behind the event that deleted the node
            self._answer(item, self.c.state, f"node {self._node()} is already deleted")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    def _deadline(self) -> tuple[datetime, NodeEvent] | None:
        """The timer-driven event of the current state, if it has one."""
        assert self.p is not None and self.c.since is not None
        t = self.p.timings
        if self.c.state is NodeState.WARM:
            return self.c.since + timedelta(seconds=t.warmup_seconds), NodeEvent.WARMED
        if self.c.state is NodeState.IDLE and self.c.down_since is not None:
            grace = timedelta(seconds=t.down_grace_seconds)
            at = self.c.down_since + grace
            if self.c.gate_held_until is not None:
                at = max(at, self.c.gate_held_until)
            return at, NodeEvent.GRACE_EXPIRED
        if self.c.state is NodeState.DRAIN:
            wait = timedelta(seconds=t.dns_ttl_seconds + t.drain_timeout_seconds)
            return self.c.since + wait, NodeEvent.DRAINED
        return None

    async def _next_event(self) -> InboxItem:
        deadline = self._deadline()
        if not self.c.inbox:
            timeout = None
            if deadline is not None:
                timeout = max((deadline[0] - workflow.now()).total_seconds(), 0.001)
            try:
                await workflow.wait_condition(lambda: bool(self.c.inbox), timeout=timeout)
            except TimeoutError:
                assert deadline is not None
                return deadline[1], _timer_reason(deadline[1])
        return self.c.inbox.pop(0)

    async def _handle(self, event: NodeEvent, reason: str) -> str | None:
        """Apply one event; the refusal when the state machine does not allow it."""
        assert self.p is not None
        before = self.c.state
        if event is NodeEvent.UP and before in (NodeState.WARM, NodeState.ACTIVE):
            return None  # already healthy: nothing to do
        gated = event is NodeEvent.GRACE_EXPIRED and workflow.patched(GATE_PATCH)
        if gated and await self._gate_holds():
            return None
        self.c.gate_held_until = self.c.gate_reason = None
        try:
            after = next_state(before, event)
        except IllegalTransition as err:
            message = f"{workflow.now().isoformat()}: refused: {err}"
            workflow.logger.warning("node %s: %s", self.p.node_id, message)
            self.c.refused = [*self.c.refused[-(HISTORY_KEEP - 1) :], message]
            return f"node {self.p.node_id}: {err}"
        now = workflow.now()
        if event in (NodeEvent.DOWN, NodeEvent.UNDRAIN):  # undrained: back up within the grace
            self.c.down_since = now
        elif event in (NodeEvent.UP, NodeEvent.DRAIN, NodeEvent.DEREGISTERED):
            self.c.down_since = None
        self.c.state, self.c.since, self.c.reason = after, now, reason
        self.c.history = [
            *self.c.history[-(HISTORY_KEEP - 1) :],
            Transition(at=now, from_state=before, to_state=after, event=event, reason=reason),
        ]
        workflow.upsert_search_attributes([ids.SA_STATE.value_set(after.value)])
        await workflow.execute_activity(
            "record_node_state",
            NodeStateRecord(
                node_id=self.p.node_id,
                service=self.p.service,
                region=self.p.region,
                from_state=before,
                state=after,
                event=event,
                reason=reason,
                at=now,
                request_drain=after is NodeState.DRAIN,
                withdraw_drain=event is NodeEvent.UNDRAIN,
            ),
            start_to_close_timeout=policies.DB_TIMEOUT,
            retry_policy=policies.DB,
        )
        if NodeState.ACTIVE in (before, after) or after is NodeState.DELETE:
            await self._signal(
                ids.gtm_id(self.p.service), "world_changed", f"node {self.p.node_id} {after.value}"
            )
        if event is NodeEvent.GRACE_EXPIRED:
            await self._signal(
                ids.autoscale_id(self.p.service, self.p.region), "node_lost", self.p.node_id
            )
        return None

    async def _gate_holds(self) -> bool:
        """Ask the self-health gate before giving the node up; held: ask again later.

        A gate that cannot be read holds too: XPlane's view is then not to be trusted.
        """
        assert self.p is not None
        try:
            verdict: RegionVerdict = await workflow.execute_activity(
                "gate_verdict",
                GateQuery(service=self.p.service, region=self.p.region, now=workflow.now()),
                result_type=RegionVerdict,
                start_to_close_timeout=policies.DB_TIMEOUT,
                retry_policy=policies.DB,
            )
            held, reason = verdict.verdict == "held", verdict.reason
        except ActivityError as err:
            held, reason = True, f"gate unreadable: {err}"
        if not held:
            return False
        recheck = max(1.0, min(self.p.timings.down_grace_seconds / 4, 30.0))
        self.c.gate_held_until = workflow.now() + timedelta(seconds=recheck)
        if self.c.gate_reason != reason:
            workflow.logger.warning("node %s: give-up held by the gate: %s", self.p.node_id, reason)
        self.c.gate_reason = reason
        return True

    async def _signal(self, workflow_id: str, signal: str, arg: str) -> None:
        """Best effort: the receiver's own tick catches up if it isn't running."""
        try:
            await workflow.get_external_workflow_handle(workflow_id).signal(signal, arg)
        except ApplicationError as err:
            workflow.logger.info("signal %s to %s not delivered: %s", signal, workflow_id, err)


def _timer_reason(event: NodeEvent) -> str:
    return {
        NodeEvent.WARMED: "warm-up period passed while healthy",
        NodeEvent.GRACE_EXPIRED: "down for longer than the grace period: given up",
        NodeEvent.DRAINED: "drain period (DNS TTL + drain timeout) elapsed",
    }.get(event, event.value)
