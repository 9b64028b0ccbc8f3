"""The effective-weight function: table tests of each rule, then properties (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xplane.config.models import GtmPolicy, Region
from xplane.domain import NodeSnapshot, NodeState, NodeStatus
from xplane.gtm.weights import ServiceWeights, compute_service_weights

TIMEOUT = 30.0
_counter = iter(range(1, 1_000_000))


def node(region: str, **fields: Any) -> NodeSnapshot:
    """A ready node of service ``svc`` unless ``fields`` say otherwise."""
    n = next(_counter)
    base: dict[str, Any] = {
        "id": f"{region}-{n:04d}",
        "service": "svc",
        "region": region,
        "address": f"10.0.{n // 256}.{n % 256}",
        "heartbeat_age_seconds": 1.0,
    }
    return NodeSnapshot(**(base | fields))


def nodes(region: str, count: int, **fields: Any) -> list[NodeSnapshot]:
    return [node(region, **fields) for _ in range(count)]


def policy(*regions: dict[str, Any], **fields: Any) -> GtmPolicy:
    return GtmPolicy.model_validate(
        {"service": "svc", "domain": "api.svc.plus", "regions": list(regions)} | fields
    )


JP = {"name": "jp", "weight": 100, "min_ready_nodes": 1, "fallback": True}
SG = {"name": "sg", "weight": 10, "min_ready_nodes": 1, "fallback": True}


def compute(
    pol: GtmPolicy,
    world: list[NodeSnapshot],
    pools: dict[str, int] | None = None,
    regions: dict[str, Region] | None = None,
) -> ServiceWeights:
    return compute_service_weights(pol, regions or {}, world, pools or {}, TIMEOUT)


def weights(result: ServiceWeights) -> dict[str, float]:
    return {k: round(v, 4) for k, v in result.weights().items()}


# name, policy, nodes, pools, expected weights, expected fail_open
CASES: list[tuple[str, GtmPolicy, list[NodeSnapshot], dict[str, int], dict[str, float], bool]] = [
    (
        "all healthy",
        policy(JP, SG),
        nodes("jp", 2) + nodes("sg", 1),
        {"jp": 2, "sg": 1},
        {"jp": 100, "sg": 10},
        False,
    ),
    (
        "region below min_ready_nodes",
        policy(JP | {"min_ready_nodes": 2}, SG),
        nodes("jp", 1) + nodes("jp", 1, status="down") + nodes("sg", 1),
        {},
        {"jp": 0, "sg": 10},
        False,
    ),
    (
        "health_ratio under threshold",
        policy(JP | {"health_threshold": 0.6}, SG),
        nodes("jp", 1) + nodes("jp", 2, status="down") + nodes("sg", 1),
        {},
        {"jp": 0, "sg": 10},
        False,
    ),
    (
        "health_ratio and ready factor scale the weight",
        policy(JP | {"health_threshold": 0.5}, SG),
        nodes("jp", 2) + nodes("jp", 1, status="down") + nodes("sg", 1),
        {"jp": 4},
        {"jp": round(100 * (2 / 3) * (2 / 4), 4), "sg": 10},
        False,
    ),
    (
        "latency twice the target halves the weight",
        policy(JP, SG, latency={"target_ms": 100}),
        nodes("jp", 3, rtt_ms=200) + nodes("sg", 1),
        {},
        {"jp": 50, "sg": 10},
        False,
    ),
    (
        "latency factor is the median of ready nodes, floored",
        policy(JP, SG, latency={"target_ms": 100, "floor": 0.25}),
        nodes("jp", 1, rtt_ms=50)
        + nodes("jp", 1, rtt_ms=900)
        + nodes("jp", 1, rtt_ms=1000)
        + nodes("jp", 1, rtt_ms=1, status="down")  # not ready: its RTT doesn't count
        + nodes("sg", 1, rtt_ms=80),
        {"jp": 3},
        {"jp": round(100 * 0.75 * 1 * 0.25, 4), "sg": 10},
        False,
    ),
    (
        "every region down: fallback regions with an up node",
        policy(JP, SG, panic_threshold=0),
        nodes("jp", 2, heartbeat_age_seconds=300) + nodes("sg", 1, status="down"),
        {},
        {"jp": 100, "sg": 0},
        True,
    ),
    (
        "no fallback region has an up node: all fallback regions",
        policy(JP, SG, {"name": "us", "weight": 50}, panic_threshold=0),
        nodes("jp", 2, status="down")
        + nodes("sg", 1, status="down")
        + nodes("us", 1, status="down"),
        {},
        {"jp": 100, "sg": 10, "us": 0},
        True,
    ),
    (
        "a non-fallback region that is 0 is not published in fail open",
        policy(JP, SG | {"fallback": False}),
        nodes("jp", 1, health_check_ok=False) + nodes("sg", 1, health_check_ok=False),
        {},
        {"jp": 100, "sg": 0},
        True,
    ),
    (
        "no region marked fallback: all count as fallback",
        policy(JP | {"fallback": False}, SG | {"fallback": False}, panic_threshold=0),
        nodes("jp", 1, status="down") + nodes("sg", 1, error_rate=0.9),
        {},
        {"jp": 0, "sg": 10},
        True,
    ),
    (
        "a region with no nodes",
        policy(JP, SG),
        nodes("jp", 2),
        {"sg": 2},
        {"jp": 100, "sg": 0},
        False,
    ),
    (
        "stale or unknown heartbeat is not ready",
        policy(JP | {"health_threshold": 0.3}, SG),
        nodes("jp", 1)
        + nodes("jp", 1, heartbeat_age_seconds=TIMEOUT + 1)
        + nodes("jp", 1, heartbeat_age_seconds=None)
        + nodes("sg", 1),
        {"jp": 1},
        {"jp": round(100 / 3, 4), "sg": 10},
        False,
    ),
    (
        "error rate over the policy's limit is not ready",
        policy(JP, SG, max_error_rate=0.1),
        nodes("jp", 1, error_rate=0.1) + nodes("jp", 1, error_rate=0.2) + nodes("sg", 1),
        {"jp": 1},
        {"jp": 50, "sg": 10},
        False,
    ),
    (
        "failing active health check is not ready; not checked yet is",
        policy(JP, SG),
        nodes("jp", 1, health_check_ok=None)
        + nodes("jp", 1, health_check_ok=True)
        + nodes("jp", 2, health_check_ok=False)
        + nodes("sg", 1),
        {"jp": 2},
        {"jp": 50, "sg": 10},
        False,
    ),
    (
        "draining and deleted nodes don't count as registered",
        policy(JP, SG),
        nodes("jp", 2)
        + nodes("jp", 1, state="drain")
        + nodes("jp", 1, status="drain")
        + nodes("jp", 1, state="delete")
        + nodes("sg", 1),
        {},
        {"jp": 100, "sg": 10},
        False,
    ),
    (
        "idle and warm nodes count as registered, not ready",
        policy(JP, SG),
        nodes("jp", 2) + nodes("jp", 1, state="warm") + nodes("jp", 1, state="idle"),
        {"jp": 2},
        {"jp": 50, "sg": 0},
        False,
    ),
    (
        "other services and unknown regions are ignored",
        policy(JP, SG),
        nodes("jp", 1) + nodes("jp", 3, service="other", status="down") + nodes("eu", 2),
        {},
        {"jp": 100, "sg": 0},
        False,
    ),
    (
        "fail open with base weights all 0 shares equally",
        policy(JP | {"weight": 0}, SG | {"weight": 0}),
        nodes("jp", 1) + nodes("sg", 1),
        {},
        {"jp": 1, "sg": 1},
        True,
    ),
]


@pytest.mark.parametrize(
    ("pol", "world", "pools", "expected", "fail_open"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_weight_table(
    pol: GtmPolicy,
    world: list[NodeSnapshot],
    pools: dict[str, int],
    expected: dict[str, float],
    fail_open: bool,
) -> None:
    result = compute(pol, world, pools)
    assert weights(result) == expected
    assert result.fail_open is fail_open
    # Records always carry exactly the published weight of each region.
    for region, weight in result.weights().items():
        total = sum(r.weight for r in result.records if r.region == region)
        has_records = any(r.region == region for r in result.records)
        assert total == pytest.approx(weight) or (weight > 0 and not has_records)


def test_reasons_say_why() -> None:
    result = compute(
        policy(JP | {"min_ready_nodes": 2}, SG | {"health_threshold": 0.9}, {"name": "us"}),
        nodes("jp", 1) + nodes("sg", 1) + nodes("sg", 1, status="down"),
    )
    assert result.fail_open
    assert "every region is at 0" in result.reason
    assert "min_ready_nodes 2" in result.regions["jp"].reason
    assert "health_threshold 0.9" in result.regions["sg"].reason
    assert "no nodes registered" in result.regions["us"].reason


def test_node_weights_split_evenly_across_ready_nodes() -> None:
    world = nodes("jp", 4) + nodes("jp", 1, status="down") + nodes("sg", 2)
    result = compute(policy(JP, SG, health={"type": "tcp"}), world, {"jp": 4, "sg": 2})
    jp = [r for r in result.records if r.region == "jp"]
    assert [r.weight for r in jp] == pytest.approx([100 * 0.8 / 4] * 4)
    assert {r.node_id for r in jp} == {n.id for n in world[:4]}
    assert [r.weight for r in result.records if r.region == "sg"] == [5.0, 5.0]
    assert [r.node_id for r in jp] == sorted(r.node_id for r in jp)


def test_fail_open_records_use_up_nodes_then_any_non_deleted() -> None:
    # jp: one up (stale heartbeat) + one down node -> only the up one is published.
    up = node("jp", heartbeat_age_seconds=999)
    down = node("jp", status="down")
    no_panic = policy(JP, SG, panic_threshold=0)
    result = compute(no_panic, [up, down, node("sg", status="down")])
    assert [(r.node_id, r.weight) for r in result.records] == [(up.id, 100.0)]

    # No up node anywhere: every non-deleted node of the fallback regions.
    a, b = node("jp", status="down"), node("jp", state="drain", status="down")
    gone = node("jp", state="delete")
    result = compute(no_panic, [a, b, gone])
    assert result.fail_open
    assert sorted(r.node_id for r in result.records) == sorted([a.id, b.id])
    assert sum(r.weight for r in result.records) == pytest.approx(100)


def test_fail_open_falls_back_to_any_region_with_addresses() -> None:
    """The fallback regions have no node at all: a non-fallback region's nodes beat nothing."""
    us = node("us", status="down")
    result = compute(policy(JP, SG, {"name": "us", "weight": 5}), [us])
    assert result.fail_open
    assert [r.node_id for r in result.records] == [us.id]
    assert result.weights()["us"] == 5


def test_defaults_resolve_from_region_then_builtin() -> None:
    pol = policy({"name": "jp"}, {"name": "sg"})
    regions = {"jp": Region(name="jp", base_weight=30, min_ready_nodes=2)}
    result = compute(pol, nodes("jp", 2) + nodes("sg", 1), regions=regions)
    assert weights(result) == {"jp": 30, "sg": 100}
    result = compute(pol, nodes("jp", 1) + nodes("sg", 1), regions=regions)
    assert weights(result) == {"jp": 0, "sg": 100}  # jp's min_ready_nodes 2 from the region


def test_retired_region_gets_no_traffic() -> None:
    regions = {"sg": Region(name="sg", retired=True)}
    result = compute(policy(JP, SG), nodes("jp", 1) + nodes("sg", 1), regions=regions)
    assert weights(result) == {"jp": 100, "sg": 0}
    assert "retired" in result.regions["sg"].reason


def test_result_round_trips_through_json() -> None:
    """The GTM loop passes it between activities as JSON."""
    result = compute(policy(JP, SG), nodes("jp", 2) + nodes("sg", 1))
    again = ServiceWeights.model_validate_json(result.model_dump_json())
    assert again == result
    assert again.model_dump()["records"][0].keys() == {"address", "region", "node_id", "weight"}


# ------------------------------------------------------------------ properties
REGION_NAMES = ["a", "b", "c", "d"]

region_st = st.fixed_dictionaries(
    {
        "weight": st.floats(0, 1000),
        "fallback": st.booleans(),
        "min_ready_nodes": st.integers(0, 3),
        "health_threshold": st.floats(0, 1),
    }
)

node_st = st.fixed_dictionaries(
    {
        "region": st.sampled_from([*REGION_NAMES, "elsewhere"]),
        "state": st.sampled_from(list(NodeState)),
        "status": st.sampled_from(list(NodeStatus)),
        "heartbeat_age_seconds": st.one_of(st.none(), st.floats(0, 60)),
        "error_rate": st.one_of(st.none(), st.floats(0, 1)),
        "health_check_ok": st.one_of(st.none(), st.booleans()),
    }
)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[GtmPolicy, list[NodeSnapshot], dict[str, int]]:
    count = draw(st.integers(1, len(REGION_NAMES)))
    specs = [draw(region_st) | {"name": name} for name in REGION_NAMES[:count]]
    # One RTT per region: latency is a property of the region here (see the
    # monotonicity test for why).
    rtts = {name: draw(st.one_of(st.none(), st.floats(1, 500))) for name in REGION_NAMES}
    rtts["elsewhere"] = None
    world = [
        NodeSnapshot(
            id=f"n{i:03d}",
            service="svc",
            address=f"10.0.0.{i}",
            rtt_ms=rtts[str(fields["region"])],
            **fields,
        )
        for i, fields in enumerate(draw(st.lists(node_st, max_size=12)))
    ]
    pools = draw(st.dictionaries(st.sampled_from(REGION_NAMES), st.integers(0, 6)))
    pol = policy(*specs, max_error_rate=draw(st.floats(0, 1)))
    return pol, world, pools


FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(worlds())
def test_weights_never_negative_and_never_all_zero(
    case: tuple[GtmPolicy, list[NodeSnapshot], dict[str, int]],
) -> None:
    pol, world, pools = case
    result = compute(pol, world, pools)
    assert all(w >= 0 for w in result.weights().values())
    assert any(w > 0 for w in result.weights().values())
    assert all(r.weight >= 0 for r in result.records)
    in_policy = {r.name for r in pol.regions}
    if any(n.region in in_policy and n.state != NodeState.DELETE for n in world):
        assert result.records, "an address exists but the answer is empty"


@FAST
@given(worlds(), st.data())
def test_a_node_going_down_never_raises_its_region_weight(
    case: tuple[GtmPolicy, list[NodeSnapshot], dict[str, int]], data: st.DataObject
) -> None:
    """With latency fixed per region. (Losing a node slower than the median can lower the
    median RTT and so legitimately raise the latency factor.) Entering fail open is the
    documented exception."""
    pol, world, pools = case
    up = [i for i, n in enumerate(world) if n.status == NodeStatus.UP]
    if not up:
        return
    i = data.draw(st.sampled_from(up))
    region = world[i].region
    after = [*world]
    after[i] = world[i].model_copy(update={"status": NodeStatus.DOWN})
    before, later = compute(pol, world, pools), compute(pol, after, pools)
    if later.fail_open and not before.fail_open:
        # Fail open publishes base weights by design (never an empty answer), which can
        # exceed the damaged weight it replaces: that is the one allowed rise.
        return
    before_w = before.weights().get(region, 0.0)
    after_w = later.weights().get(region, 0.0)
    assert after_w <= before_w + 1e-9


# ------------------------------------------------------------- panic threshold
def test_panic_spreads_over_every_registered_node_not_the_first_one_back() -> None:
    """All of jp went down; one node is back (up, still warming): it must not take every
    answer. Below the panic threshold every registered node shares them."""
    back = node("jp", state="warm")
    down = nodes("jp", 5, status="down")
    draining = node("jp", state="drain")
    result = compute(policy(JP), [back, *down, draining])
    assert result.fail_open and result.panic and result.live
    assert "panic: healthy share 0.00 < panic_threshold 0.5" in result.reason
    assert sorted(r.node_id for r in result.records) == sorted(n.id for n in [back, *down])
    assert [r.weight for r in result.records] == pytest.approx([100 / 6] * 6)


def test_panic_gives_every_node_the_same_share_across_regions() -> None:
    """One node back in sg, six registered in jp: the sg node gets 1/7, not half."""
    world = [*nodes("jp", 6, status="down"), node("sg", state="warm")]
    result = compute(policy(JP | {"weight": 100}, SG | {"weight": 100}), world)
    assert result.panic
    assert weights(result) == {"jp": 100, "sg": round(100 / 6, 4)}
    assert {round(r.weight, 4) for r in result.records} == {round(100 / 6, 4)}


def test_panic_respects_fallback_regions() -> None:
    world = nodes("jp", 2, status="down") + nodes("sg", 2, status="down")
    result = compute(policy(JP, SG | {"fallback": False}), world)
    assert result.panic and not result.live
    assert {r.region for r in result.records} == {"jp"}


def test_no_panic_at_or_above_the_threshold() -> None:
    """Every region at 0 for another reason (min_ready_nodes), the service healthy: the
    ordinary fail open (up nodes of the fallback regions)."""
    pol = policy(JP | {"min_ready_nodes": 3})
    up, down = nodes("jp", 2), node("jp", status="down")
    result = compute(pol, [*up, down])  # share 2/3 >= 0.5
    assert result.fail_open and not result.panic
    assert sorted(r.node_id for r in result.records) == sorted(n.id for n in up)


def test_panic_never_overrides_a_region_that_still_serves() -> None:
    """A dead region fails over to a healthy one at once, however low the service's
    healthy share (2 of 8 here): panic is only for when nothing is left to fail over to."""
    result = compute(policy(JP, SG), nodes("jp", 6, status="down") + nodes("sg", 2))
    assert not result.fail_open and not result.panic
    assert weights(result) == {"jp": 0, "sg": 10}
    assert {r.region for r in result.records} == {"sg"}


def test_panic_threshold_is_configurable() -> None:
    world = nodes("jp", 1, state="warm") + nodes("jp", 3, status="down")
    assert compute(policy(JP, panic_threshold=0.5), world).panic
    assert not compute(policy(JP, panic_threshold=0), world).panic


# ------------------------------------------------------------------------ live
def test_live_says_whether_any_node_is_up() -> None:
    assert compute(policy(JP), nodes("jp", 2)).live
    assert compute(policy(JP), nodes("jp", 2, status="down")).live is False
    assert compute(policy(JP), nodes("jp", 1, status="down") + nodes("jp", 1, state="warm")).live
    assert compute(policy(JP), []).live is False
