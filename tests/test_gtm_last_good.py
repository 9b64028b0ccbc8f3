"""DNS never empty, never frozen on dead addresses while a live node exists (pure rules).

A small simulation of one provider: each tick computes the weights of a world, asks
:func:`dns_action`, and "writes" through the real safety check of :mod:`xplane.dns.plan`
(a plan removing most addresses of a name is refused unless forced).
"""

from __future__ import annotations

from typing import Any

import pytest

from xplane.config.models import DnsProviderConfig, GtmPolicy
from xplane.dns.plan import (
    DesiredService,
    DnsChange,
    DnsPlan,
    DnsSafetyError,
    check_safety,
    desired_for_provider,
)
from xplane.domain import NodeSnapshot, NodeState, NodeStatus
from xplane.gtm.last_good import dns_action
from xplane.gtm.weights import ServiceWeights, compute_service_weights, unready_addresses

POLICY = GtmPolicy.model_validate(
    {
        "service": "svc",
        "domain": "api.svc.plus",
        "regions": [{"name": "jp", "weight": 100}, {"name": "sg", "weight": 100}],
        "dns": {"provider": "powerdns"},
    }
)
PROVIDER = POLICY.dns_providers()[0]


def node(n: int, region: str = "jp", **fields: Any) -> NodeSnapshot:
    base: dict[str, Any] = {"id": f"{region}-{n}", "service": "svc", "region": region,
                            "address": f"10.0.0.{n}", "heartbeat_age_seconds": 1.0}  # fmt: skip
    return NodeSnapshot(**(base | fields))


class Dns:
    """One provider's published addresses, written the way the GTM loop writes them."""

    def __init__(self, provider: DnsProviderConfig = PROVIDER) -> None:
        self.provider = provider
        self.addresses: set[str] = set()
        self.written = False
        self.holding = False

    def tick(self, world: list[NodeSnapshot]) -> str:
        weights = compute_service_weights(POLICY, {}, world, {}, 30.0)
        desired = desired_for_provider(POLICY, self.provider, weights)
        action = dns_action(weights, desired, self.written, self.holding)
        if action != "hold":
            self._write(desired, force=action == "force")
        self.holding = action == "hold"
        return action

    def _write(self, desired: DesiredService, *, force: bool) -> None:
        after = desired.addresses()
        changes = [] if after == self.addresses else [DnsChange(action="update", key="A")]
        plan = DnsPlan(
            provider="sim",
            service="svc",
            name=desired.name,
            changes=changes,
            removes_all_addresses=not after,
            addresses_before=sorted(self.addresses),
            addresses_after=sorted(after),
        )
        check_safety(plan, PROVIDER.max_change_fraction, force)
        self.addresses, self.written = after, True


def test_all_nodes_die_then_one_comes_back() -> None:
    dns = Dns()
    healthy = [node(i) for i in range(1, 7)]
    assert dns.tick(healthy) == "write"
    good = {n.address for n in healthy}
    assert dns.addresses == good

    # Every agent killed: down, then deleted one by one. DNS keeps the last good set.
    down = [n.model_copy(update={"status": NodeStatus.DOWN}) for n in healthy]
    for left in range(6, -1, -1):
        assert dns.tick(down[:left]) == "hold"
        assert dns.addresses == good

    # A new node comes back (another address): it is in DNS, the dead ones are gone.
    back = node(9, "sg", state="warm")
    assert dns.tick([back]) == "force"
    assert dns.addresses == {back.address}
    assert dns.tick([back]) == "write"  # and the loop is back to ordinary writes


def test_without_force_the_safety_check_would_freeze_dns_on_the_dead() -> None:
    """Why ``force``: the same transition as an ordinary write is refused."""
    dns = Dns()
    dns.tick([node(i) for i in range(1, 7)])
    with pytest.raises(DnsSafetyError):
        dns._write(
            desired_for_provider(POLICY, PROVIDER, _weights([node(9, state="warm")])), force=False
        )


def test_one_node_back_while_the_dead_are_still_registered_is_spread_over_all() -> None:
    dns = Dns()
    healthy = [node(i) for i in range(1, 7)]
    dns.tick(healthy)
    down = [n.model_copy(update={"status": NodeStatus.DOWN}) for n in healthy]
    assert dns.tick(down) == "hold"
    back = [down[0].model_copy(update={"status": NodeStatus.UP}), *down[1:]]
    # One of six up: panic spreads over all six (the first one back does not take every
    # answer); forced, as every write after a hold is, though nothing is removed here.
    assert dns.tick(back) == "force"
    assert dns.addresses == {n.address for n in healthy}


def test_a_provider_of_one_region_holds_while_that_region_is_gone_then_takes_the_new_node() -> None:
    """jp stays live; the provider publishing sg alone keeps sg's last address while sg
    has no node, and the first sg node ready replaces it."""
    dns = Dns(PROVIDER.model_copy(update={"regions": ["sg"]}))
    jp = [node(1)]
    sg = [node(i, "sg") for i in range(11, 15)]
    assert dns.tick(jp + sg) == "write"
    assert dns.addresses == {n.address for n in sg}
    for left in range(3, 0, -1):  # sg's nodes are deleted one by one: jp carries on
        assert dns.tick(jp + sg[:left]) == "write"
    assert dns.tick(jp) == "hold"  # the last one gone: nothing to publish, kept
    assert dns.addresses == {sg[0].address}
    warming = node(20, "sg", state="warm")
    assert dns.tick([*jp, warming]) == "hold"  # not ready while jp serves: not published yet
    ready = warming.model_copy(update={"state": NodeState.ACTIVE})
    assert dns.tick([*jp, ready]) == "force"
    assert dns.addresses == {ready.address}


def test_a_fresh_loop_publishes_dead_nodes_rather_than_nothing() -> None:
    dns = Dns()
    assert dns.tick([node(1, status="down"), node(2, status="down")]) == "write"
    assert dns.addresses == {"10.0.0.1", "10.0.0.2"}


def test_nothing_to_publish_is_never_written() -> None:
    dns = Dns()
    assert dns.tick([]) == "hold"
    assert dns.addresses == set() and not dns.written


def test_dns_action_rules() -> None:
    live = _weights([node(1)])
    dead = _weights([node(1, status="down")])
    some = desired_for_provider(POLICY, PROVIDER, live)
    none = some.model_copy(update={"regions": []})
    assert dns_action(live, none, written_before=True, holding=False) == "hold"
    assert dns_action(dead, some, written_before=True, holding=False) == "hold"
    assert dns_action(dead, some, written_before=False, holding=False) == "write"
    assert dns_action(live, some, written_before=True, holding=True) == "force"
    assert dns_action(live, some, written_before=True, holding=False) == "write"


def _weights(world: list[NodeSnapshot]) -> ServiceWeights:
    return compute_service_weights(POLICY, {}, world, {}, 30.0)


def test_a_region_judged_down_is_an_expected_removal_and_passes_the_threshold() -> None:
    """jp holds 4 of 6 addresses and fails while sg serves: removing 67 % is refused as
    a mass removal unless the removed addresses are nodes judged not ready."""
    jp = [node(i) for i in range(1, 5)]
    sg = [node(i, "sg") for i in range(5, 7)]
    down = [n.model_copy(update={"status": NodeStatus.DOWN}) for n in jp]
    unready = unready_addresses(POLICY, down + sg, 30.0)
    assert unready == sorted(n.address for n in jp)
    plan = DnsPlan(
        provider="sim",
        service="svc",
        name="api.svc.plus",
        changes=[DnsChange(action="update", key="A")],
        addresses_before=sorted(n.address for n in jp + sg),
        addresses_after=sorted(n.address for n in sg),
    )
    with pytest.raises(DnsSafetyError, match="removes 4 of 6"):
        check_safety(plan, PROVIDER.max_change_fraction, force=False)
    check_safety(plan.model_copy(update={"expected_removals": unready}), 0.5, force=False)
    # Only the expected ones are excused: with jp-1 still up, its removal counts.
    partly = unready_addresses(POLICY, [jp[0], *down[1:], *sg], 30.0)
    with pytest.raises(DnsSafetyError, match="removes 1 of 6"):
        check_safety(plan.model_copy(update={"expected_removals": partly}), 0.1, force=False)
    # Drained and given-up nodes leave on purpose too; ready ones never are unready.
    drained = jp[0].model_copy(update={"state": NodeState.DRAIN})
    gone = jp[1].model_copy(update={"state": NodeState.DELETE})
    assert unready_addresses(POLICY, [drained, gone, *sg], 30.0) == sorted(
        [drained.address, gone.address]
    )
