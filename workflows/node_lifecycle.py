"""NodeLifecycleWorkflow (ID ``node-<node_id>``): idle -> warm -> active -> drain -> delete.

Started by the API on registration (signal-with-start), driven by the
world-state loop's ``node_status_changed`` signals (transitions only, never
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

from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Literal, TypeAlias

from pydantic import BaseModel
from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import policies
from workflows.autoscale import AutoscaleWorkflow
from workflows.gtm_loop import GtmLoopWorkflow
from xplane import ids

with workflow.unsafe.imports_passed_through():
    from activities.nodes import NodeActivities
    from xplane.domain import NodeState, NodeStatus
    from xplane.gate import GateQuery, RegionVerdict
    from xplane.lifecycle.node_fsm import (
        IllegalTransition,
        NodeEvent,
        event_for,
        next_state,
        operator_refusal,
    )
    from xplane.messages import (
        DrainRequest,
        NodeActionRequest,
        NodeActionResult,
        NodeLifecycleCarry,
        NodeLifecycleParams,
        NodeStateRecord,
        NodeStatusChange,
        Transition,
    )

HISTORY_KEEP = 20  # transitions kept in the status query
# Patch: giving a node up (delete, token revoked, replacement asked) waits for the
# self-health gate. Runs that started before it give up at once, as they did.
GATE_PATCH = "node-give-up-waits-for-gate"
SEEN_KEEP = 8  # transition ids remembered: a retry re-sends within seconds
REASON_KEEP = 512  # the store's state_reason / drain_reason columns

InboxItem: TypeAlias = tuple[NodeEvent, str]


class NodeLifecycleStatus(BaseModel):
    node_id: str
    state: NodeState
    since: datetime | None
    reason: str
    down_since: datetime | None
    history: list[Transition]
    refused: list[str]
    held_by_gate: str | None = None


@workflow.defn(name=ids.NODE_LIFECYCLE)
class NodeLifecycleWorkflow:
    def __init__(self) -> None:
        self.carry = NodeLifecycleCarry()
        self.params: NodeLifecycleParams | None = None
        # Inbox items an update waits for (by identity), and their outcome once handled:
        # (state before, state after, refusal or None).
        self._awaited: list[InboxItem] = []
        self._answers: dict[int, tuple[NodeState, NodeState, str | None]] = {}

    # ------------------------------------------------------------------ signals
    @workflow.signal(name=ids.NODE_STATUS_CHANGED)
    def node_status_changed(self, change: NodeStatusChange) -> None:
        if change.transition is not None:
            if change.transition in self.carry.transitions_seen:
                return  # the same transition again: a retried world-state scan
            self.carry.transitions_seen = [
                *self.carry.transitions_seen[-(SEEN_KEEP - 1) :],
                change.transition,
            ]
        event = event_for(NodeStatus(change.status))
        self.carry.inbox.append((event, change.reason or f"status {change.status}"))

    @workflow.signal
    def registered(self, address: str = "") -> None:
        """What the API's signal-with-start carries on (re-)registration: no transition."""

    @workflow.signal(name=ids.DRAIN)
    def drain(self, request: DrainRequest) -> None:
        self.carry.inbox.append((NodeEvent.DRAIN, f"drain by {request.by}: {request.reason}"))

    @workflow.signal
    def deregistered(self, reason: str = "deregistered") -> None:
        self.carry.inbox.append((NodeEvent.DEREGISTERED, reason))

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
        refusal = operator_refusal(self._node(), self.carry.state, event)
        if refusal is not None:
            raise ValueError(refusal)

    async def _operator(
        self, event: NodeEvent, reason: str, action: Literal["drain", "undrain"]
    ) -> NodeActionResult:
        item: InboxItem = (event, reason[:REASON_KEEP])
        self._awaited.append(item)
        self.carry.inbox.append(item)
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
            self._answers[id(item)] = (before, self.carry.state, refusal)

    @workflow.query
    def status(self) -> NodeLifecycleStatus:
        return NodeLifecycleStatus(
            node_id=workflow.info().workflow_id.removeprefix("node-"),
            state=self.carry.state,
            since=self.carry.since,
            reason=self.carry.reason,
            down_since=self.carry.down_since,
            history=self.carry.history,
            refused=self.carry.refused,
            held_by_gate=self.carry.gate_reason if self.carry.gate_held_until else None,
        )

    # --------------------------------------------------------------------- run
    @workflow.run
    async def run(self, params: NodeLifecycleParams) -> NodeLifecycleStatus:
        self.params = params
        if params.carry is not None:
            # Keep signals that arrived before this run started (signal-with-start).
            early, self.carry = self.carry, params.carry
            self.carry.inbox.extend(early.inbox)
            self.carry.transitions_seen.extend(early.transitions_seen)
        if self.carry.since is None:
            self.carry.since = workflow.now()
        while self.carry.state is not NodeState.DELETE:
            item = await self._next_event()
            before = self.carry.state
            refusal = await self._handle(*item)
            self._answer(item, before, refusal)
            # An update waiting for its inbox item is answered in this run, first.
            if workflow.info().is_continue_as_new_suggested() and not self._awaited:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(params.model_copy(update={"carry": self.carry}))
        for item in self._awaited:  # queued behind the event that deleted the node
            self._answer(item, self.carry.state, f"node {self._node()} is already deleted")
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    def _deadline(self) -> tuple[datetime, NodeEvent] | None:
        """The timer-driven event of the current state, if it has one."""
        assert self.params is not None and self.carry.since is not None
        timings = self.params.timings
        if self.carry.state is NodeState.WARM:
            return self.carry.since + timedelta(seconds=timings.warmup_seconds), NodeEvent.WARMED
        if self.carry.state is NodeState.IDLE and self.carry.down_since is not None:
            grace = timedelta(seconds=timings.down_grace_seconds)
            at = self.carry.down_since + grace
            if self.carry.gate_held_until is not None:
                at = max(at, self.carry.gate_held_until)
            return at, NodeEvent.GRACE_EXPIRED
        if self.carry.state is NodeState.DRAIN:
            wait = timedelta(seconds=timings.dns_ttl_seconds + timings.drain_timeout_seconds)
            return self.carry.since + wait, NodeEvent.DRAINED
        return None

    async def _next_event(self) -> InboxItem:
        deadline = self._deadline()
        if not self.carry.inbox:
            timeout = None
            if deadline is not None:
                timeout = max((deadline[0] - workflow.now()).total_seconds(), 0.001)
            try:
                await workflow.wait_condition(lambda: bool(self.carry.inbox), timeout=timeout)
            except TimeoutError:
                assert deadline is not None
                return deadline[1], _timer_reason(deadline[1])
        return self.carry.inbox.pop(0)

    async def _handle(self, event: NodeEvent, reason: str) -> str | None:
        """Apply one event; the refusal when the state machine does not allow it."""
        assert self.params is not None
        before = self.carry.state
        if event is NodeEvent.UP and before in (NodeState.WARM, NodeState.ACTIVE):
            return None  # already healthy: nothing to do
        gated = event is NodeEvent.GRACE_EXPIRED and workflow.patched(GATE_PATCH)
        if gated and await self._gate_holds():
            return None
        self.carry.gate_held_until = self.carry.gate_reason = None
        try:
            after = next_state(before, event)
        except IllegalTransition as err:
            message = f"{workflow.now().isoformat()}: refused: {err}"
            workflow.logger.warning("node %s: %s", self.params.node_id, message)
            self.carry.refused = [*self.carry.refused[-(HISTORY_KEEP - 1) :], message]
            return f"node {self.params.node_id}: {err}"
        now = workflow.now()
        if event in (NodeEvent.DOWN, NodeEvent.UNDRAIN):  # undrained: back up within the grace
            self.carry.down_since = now
        elif event in (NodeEvent.UP, NodeEvent.DRAIN, NodeEvent.DEREGISTERED):
            self.carry.down_since = None
        self.carry.state, self.carry.since, self.carry.reason = after, now, reason
        self.carry.history = [
            *self.carry.history[-(HISTORY_KEEP - 1) :],
            Transition(at=now, from_state=before, to_state=after, event=event, reason=reason),
        ]
        workflow.upsert_search_attributes([ids.SA_STATE.value_set(after.value)])
        await workflow.execute_activity_method(
            NodeActivities.record_node_state,
            NodeStateRecord(
                node_id=self.params.node_id,
                service=self.params.service,
                region=self.params.region,
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
            gtm: workflow.ExternalWorkflowHandle[GtmLoopWorkflow]
            gtm = workflow.get_external_workflow_handle_for(
                GtmLoopWorkflow.run, ids.gtm_id(self.params.service)
            )
            await _best_effort(
                gtm.signal(
                    GtmLoopWorkflow.world_changed, f"node {self.params.node_id} {after.value}"
                ),
                ids.WORLD_CHANGED,
                gtm.id,
            )
        if event is NodeEvent.GRACE_EXPIRED:
            autoscale: workflow.ExternalWorkflowHandle[AutoscaleWorkflow]
            autoscale = workflow.get_external_workflow_handle_for(
                AutoscaleWorkflow.run, ids.autoscale_id(self.params.service, self.params.region)
            )
            await _best_effort(
                autoscale.signal(AutoscaleWorkflow.node_lost, self.params.node_id),
                "node_lost",
                autoscale.id,
            )
        return None

    async def _gate_holds(self) -> bool:
        """Ask the self-health gate before giving the node up; held: ask again later.

        A gate that cannot be read holds too: XPlane's view is then not to be trusted.
        """
        assert self.params is not None
        try:
            verdict: RegionVerdict = await workflow.execute_activity_method(
                NodeActivities.gate_verdict,
                GateQuery(
                    service=self.params.service, region=self.params.region, now=workflow.now()
                ),
                start_to_close_timeout=policies.DB_TIMEOUT,
                retry_policy=policies.DB,
            )
            held, reason = verdict.verdict == "held", verdict.reason
        except ActivityError as err:
            held, reason = True, f"gate unreadable: {err}"
        if not held:
            return False
        recheck = max(1.0, min(self.params.timings.down_grace_seconds / 4, 30.0))
        self.carry.gate_held_until = workflow.now() + timedelta(seconds=recheck)
        if self.carry.gate_reason != reason:
            workflow.logger.warning(
                "node %s: give-up held by the gate: %s", self.params.node_id, reason
            )
        self.carry.gate_reason = reason
        return True


async def _best_effort(signal: Awaitable[None], name: str, workflow_id: str) -> None:
    """Send a signal; the receiver's own tick catches up if it isn't running."""
    try:
        await signal
    except ApplicationError as err:
        workflow.logger.info("signal %s to %s not delivered: %s", name, workflow_id, err)


def _timer_reason(event: NodeEvent) -> str:
    return {
        NodeEvent.WARMED: "warm-up period passed while healthy",
        NodeEvent.GRACE_EXPIRED: "down for longer than the grace period: given up",
        NodeEvent.DRAINED: "drain period (DNS TTL + drain timeout) elapsed",
    }.get(event, event.value)
