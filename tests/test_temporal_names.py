"""The names Temporal records: signals named by reference resolve to the registered names.

Workflow histories (tests/histories, and every running workflow) hold these names, so
calling by reference must not change one; and each event reaches a loop by one signal.
"""

from __future__ import annotations

import pytest
from temporalio import workflow

from workflows.autoscale import AutoscaleWorkflow
from workflows.gtm_loop import GtmLoopWorkflow
from workflows.node_lifecycle import NodeLifecycleWorkflow
from workflows.region_lifecycle import RegionLifecycleWorkflow
from xplane import ids
from xplane.autoscale.calendar import WindowSignal
from xplane.temporal.client import signal_name


@pytest.mark.parametrize(
    ("handler", "name"),
    [
        (NodeLifecycleWorkflow.registered, "registered"),
        (NodeLifecycleWorkflow.node_status_changed, ids.NODE_STATUS_CHANGED),
        (NodeLifecycleWorkflow.drain, ids.DRAIN),
        (GtmLoopWorkflow.world_changed, ids.WORLD_CHANGED),
        (GtmLoopWorkflow.on_policy_changed, ids.ON_GTM_POLICY_CHANGED),
        (AutoscaleWorkflow.terraform_finished, "terraform_finished"),
        (AutoscaleWorkflow.node_lost, "node_lost"),
        (RegionLifecycleWorkflow.on_config_changed, ids.ON_REGION_CONFIG_CHANGED),
    ],
)
def test_a_handler_is_named_as_registered(handler: object, name: str) -> None:
    assert callable(handler)
    assert signal_name(handler) == name


def test_a_name_is_its_own_name_and_a_query_is_no_signal() -> None:
    assert signal_name("world_changed") == "world_changed"
    with pytest.raises(RuntimeError, match=r"@workflow\.signal"):
        signal_name(GtmLoopWorkflow.status)


def test_the_gtm_loop_has_one_signal_per_event() -> None:
    """Nodes changed, the policy changed; and the control loop's wake/pause/resume."""
    signals = workflow._Definition.must_from_class(GtmLoopWorkflow).signals
    assert set(signals) == {
        ids.WORLD_CHANGED,
        ids.ON_GTM_POLICY_CHANGED,
        WindowSignal.NAME,  # a maintenance window opened (its Temporal Schedule fired)
        "wake",
        "pause",
        "resume",
    }
