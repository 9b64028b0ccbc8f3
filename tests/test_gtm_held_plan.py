"""A DNS plan the safety threshold refuses is held by the GTM loop, and applied once by the
``approve_plan`` Workflow Update or dropped by ``reject_plan`` (time-skipping server, a
REAL PowerDNS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment

from tests.support.histories import keep
from tests.support.tools import needs_tool
from tests.test_gtm_loop import NODES, _answers, _beat, _gtm_loop, _seed, health_port, pdns
from tests.test_operator_updates import refusal_of
from workflows.control_loop import LoopStatus
from workflows.gtm_loop import (
    GtmLoopWorkflow,
    HeldPlan,
    PlanDecision,
    PlanDecisionResult,
    held_plan_refusal,
)
from xplane.dns.pdns_server import PdnsServer
from xplane.store import nodes as node_store
from xplane.store.db import transaction
from xplane.store.events import list_events

__all__ = ["health_port", "pdns"]  # the fixtures, shared with test_gtm_loop

TQ = "gtm-held-plan-tests"
KEY = "0:powerdns"


def test_held_plan_refusals() -> None:
    plan = HeldPlan.model_validate(
        {
            "provider_key": KEY,
            "provider": {"provider": "powerdns", "api_url": "http://x", "zone": "svc.plus"},
            "desired": {"service": "svc", "name": "api.svc.plus", "zone": "svc.plus", "ttl": 30},
            "digest": "abc",
            "refused": "too much",
            "at": "now",
        }
    )
    assert held_plan_refusal("svc", {}, None, None) == "no DNS plan is held for gtm-svc"
    assert held_plan_refusal("svc", {KEY: plan}, None, None) is None
    assert held_plan_refusal("svc", {KEY: plan}, KEY, "abc") is None
    assert held_plan_refusal("svc", {KEY: plan}, "1:route53", None) == (
        f"no DNS plan is held for provider 1:route53 (held: {KEY})"
    )
    assert held_plan_refusal("svc", {KEY: plan}, None, "old") == (
        f"the plan held for {KEY} is now abc, not old"
    )
    two = {KEY: plan, "1:route53": plan}
    assert held_plan_refusal("svc", two, None, None) == (
        "2 DNS plans are held (0:powerdns, 1:route53): name the provider"
    )


def _readdress(sessions: sessionmaker[Session], moves: dict[str, str]) -> None:
    """The store suddenly lists other addresses for jp's nodes: the old ones leaving DNS
    all at once is the mass change the safety threshold exists to stop."""
    with transaction(sessions) as session:
        for node_id, address in moves.items():
            node_store.get_node(session, node_id).address = address


@pytest.mark.usefixtures("health_port")
@needs_tool("pdns_server")
async def test_a_refused_plan_is_held_then_approved_once(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    pdns: PdnsServer,
    health_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    engine, sessions = _seed(tmp_path, pdns, health_port)
    async with _gtm_loop(time_env, sessions, "svc", TQ, "svc") as handle:
        await time_env.sleep(1)
        assert set(_answers(pdns)) == {"127.0.10.1", "127.0.10.2", "127.0.10.3"}
        no_plan = PlanDecision(reason="looks fine")
        with pytest.raises(WorkflowUpdateFailedError) as nothing:
            await handle.execute_update(GtmLoopWorkflow.approve_plan, no_plan)
        assert refusal_of(nothing.value) == "no DNS plan is held for gtm-svc"

        _readdress(sessions, {"jp-1": "127.0.10.11", "jp-2": "127.0.10.12"})
        await handle.signal(GtmLoopWorkflow.world_changed, "readdressed")
        await time_env.sleep(1)
        status: LoopStatus = await handle.query(GtmLoopWorkflow.status)
        assert status.last_error is None  # held, not failed
        held = status.details["held_plans"][KEY]
        assert "removes 2 of 3 published addresses" in held["refused"]
        assert set(_answers(pdns)) == {"127.0.10.1", "127.0.10.2", "127.0.10.3"}
        with sessions() as session:
            (event,) = list_events(session, kind_prefix="dns.plan_held")
        assert "held for approval" in event.message
        # Held: later ticks do not knock on the threshold again with the same plan.
        await handle.signal(GtmLoopWorkflow.world_changed, "again")
        await time_env.sleep(1)
        with sessions() as session:
            assert len(list_events(session, kind_prefix="dns.plan_held")) == 1

        stale = PlanDecision(reason="ok", digest="0000")
        with pytest.raises(WorkflowUpdateFailedError) as seen:
            await handle.execute_update(GtmLoopWorkflow.approve_plan, stale)
        digest = held["digest"]
        assert refusal_of(seen.value) == f"the plan held for {KEY} is now {digest}, not 0000"

        answer: PlanDecisionResult = await handle.execute_update(
            GtmLoopWorkflow.approve_plan,
            PlanDecision(reason="re-IP of jp, CHG-7", by="dana", digest=held["digest"]),
        )
        assert (answer.action, answer.provider, answer.digest) == ("approve", KEY, held["digest"])
        assert answer.write_calls >= 1 and answer.changes >= 1
        assert set(_answers(pdns)) == {"127.0.10.3"}  # exactly the held plan, applied
        status = await handle.query(GtmLoopWorkflow.status)
        assert status.details["held_plans"] == {}
        with sessions() as session:
            applied = list_events(session, kind_prefix="dns.applied")
        assert "held plan approved by dana: re-IP of jp, CHG-7" in applied[0].message
        with pytest.raises(WorkflowUpdateFailedError) as once:
            await handle.execute_update(GtmLoopWorkflow.approve_plan, no_plan)
        assert refusal_of(once.value) == "no DNS plan is held for gtm-svc"
        await keep(handle, "gtm_loop_held_plan_approved")
    engine.dispose()


@needs_tool("pdns_server")
async def test_a_rejected_plan_is_not_tried_again(
    time_env: WorkflowEnvironment,
    tmp_path: Path,
    pdns: PdnsServer,
    health_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDNS_API_KEY", pdns.api_key)
    engine, sessions = _seed(tmp_path, pdns, health_port)
    async with _gtm_loop(time_env, sessions, "svc", TQ, "svc") as handle:
        await time_env.sleep(1)
        _readdress(sessions, {"jp-1": "127.0.10.21", "jp-2": "127.0.10.22"})
        await handle.signal(GtmLoopWorkflow.world_changed, "readdressed")
        await time_env.sleep(1)
        answer: PlanDecisionResult = await handle.execute_update(
            GtmLoopWorkflow.reject_plan, PlanDecision(reason="not a planned change")
        )
        assert answer.action == "reject" and answer.provider == KEY
        await handle.signal(GtmLoopWorkflow.world_changed, "again")
        await time_env.sleep(1)
        status: LoopStatus = await handle.query(GtmLoopWorkflow.status)
        assert status.details["held_plans"] == {} and status.last_error is None
        with sessions() as session:  # not refused (nor held) a second time
            assert len(list_events(session, kind_prefix="dns.plan_held")) == 1
        assert set(_answers(pdns)) == {"127.0.10.1", "127.0.10.2", "127.0.10.3"}
        with pytest.raises(WorkflowUpdateFailedError) as gone:
            await handle.execute_update(GtmLoopWorkflow.reject_plan, PlanDecision(reason="again"))
        assert refusal_of(gone.value) == "no DNS plan is held for gtm-svc"

        # The rejection lasts while the loop wants that record set, not for ever: jp
        # comes back, then is re-addressed again, and the same plan is held again.
        _readdress(sessions, {"jp-1": "127.0.10.1", "jp-2": "127.0.10.2"})
        for wake in ("back", "ramped"):  # jp slow-starts back in over 100 s
            for node_id in NODES:
                _beat(sessions, node_id)
            await handle.signal(GtmLoopWorkflow.world_changed, wake)
            await time_env.sleep(110 if wake == "back" else 1)
        assert set(_answers(pdns)) == {"127.0.10.1", "127.0.10.2", "127.0.10.3"}
        _readdress(sessions, {"jp-1": "127.0.10.21", "jp-2": "127.0.10.22"})
        for node_id in NODES:
            _beat(sessions, node_id)
        await handle.signal(GtmLoopWorkflow.world_changed, "readdressed again")
        await time_env.sleep(1)
        status = await handle.query(GtmLoopWorkflow.status)
        assert list(status.details["held_plans"]) == [KEY]
        with sessions() as session:
            assert len(list_events(session, kind_prefix="dns.plan_held")) == 2
        await keep(handle, "gtm_loop_held_plan_rejected")
    engine.dispose()
