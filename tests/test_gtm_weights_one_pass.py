"""The GTM tick's weights and unready addresses come from one pass (observe_gtm)."""

from __future__ import annotations

import pytest

from tests.test_gtm_weights import JP, SG, node, nodes, policy
from xplane.domain import NodeSnapshot, NodeState, NodeStatus
from xplane.gtm.weights import (
    compute_service_weights,
    compute_weights_and_unready,
    unready_addresses,
)

TIMEOUT = 30.0


def _mixed() -> list[NodeSnapshot]:
    return [
        *nodes("jp", 10),  # enough ready nodes for jp's health ratio to pass
        node("jp", status=NodeStatus.DOWN),
        node("jp", health_check_ok=False),
        node("jp", heartbeat_age_seconds=99.0),
        node("jp", error_rate=0.9),
        node("jp", state=NodeState.DRAIN),
        node("sg", state=NodeState.WARM),
        *nodes("sg", 2),
        node("sg", service="other"),
        node("xx"),  # a region the policy does not name
    ]


@pytest.mark.parametrize(
    "world",
    [
        _mixed(),
        [node("jp", status=NodeStatus.DOWN), node("sg", health_check_ok=False)],  # fail open
        [],
    ],
    ids=["mixed", "fail-open", "empty"],
)
def test_one_pass_gives_what_the_two_functions_give(world: list[NodeSnapshot]) -> None:
    pol = policy(JP, SG, max_error_rate=0.5)
    pools = {"jp": 12, "sg": 3}
    weights, unready = compute_weights_and_unready(pol, {}, iter(world), pools, TIMEOUT)
    assert weights == compute_service_weights(pol, {}, world, pools, TIMEOUT)
    assert unready == unready_addresses(pol, world, TIMEOUT)


def test_unready_names_exactly_the_nodes_not_published() -> None:
    world = _mixed()
    pol = policy(JP, SG, max_error_rate=0.5)
    weights, unready = compute_weights_and_unready(pol, {}, world, {}, TIMEOUT)
    published = {r.address for r in weights.records}
    mine = {n.address for n in world if n.service == "svc"}
    assert published and unready
    assert set(unready) == mine - published
