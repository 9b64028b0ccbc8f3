"""The DNS plan every provider shares (xplane/dns/plan.py), without any server: settings,
desired state, ownership, the diff, weight-only changes, the safety threshold, quantising."""

from __future__ import annotations

import pytest

from tests.support.dns import desired_service
from xplane.config.models import GtmPolicy, PowerDnsConfig, Route53Config
from xplane.dns.plan import (
    DesiredEndpoint,
    DesiredRegion,
    DesiredService,
    DnsChange,
    DnsOwnershipError,
    DnsPlan,
    DnsSafetyError,
    DnsValidationError,
    RecordSet,
    check_safety,
    desired_for_provider,
    digest,
    effective_desired,
    endpoint_weights,
    make_plan,
    ownership_value,
    quantise,
    region_addresses,
    registry,
    resting_addresses,
)
from xplane.gtm.weights import RegionWeight, ServiceWeights, WeightedRecord

MARKER = ownership_value("xplane", "api")


def desired(**regions: tuple[float, dict[str, float]]) -> DesiredService:
    """desired(jp=(60, {"192.0.2.1": 30, ...}), ...)"""
    return desired_service(regions)


def address(key: str, owned: bool | None = True, weight: int | None = None) -> RecordSet:
    """A one-address record set keyed ``A <address>`` (weights: only where given)."""
    ip = key.split()[1]
    weights = {"weight": weight} if weight is not None else {}
    return RecordSet(key, "A", {"ttl": 30}, weights, [ip], owned)


def plan(
    current: list[RecordSet],
    wanted: list[RecordSet],
    takeover: bool = False,
    other_owners: tuple[str, ...] = (),
) -> DnsPlan:
    """The shared plan for api.svc.plus."""
    return make_plan(
        "test", desired(), current, wanted, takeover=takeover, other_owners=other_owners
    )


# ------------------------------------------------------------------ quantising
def test_quantise_keeps_proportions_and_never_zeroes_a_positive_weight() -> None:
    assert quantise({"a": 0.6, "b": 0.3, "c": 0.1}, 1000) == {"a": 1000, "b": 500, "c": 167}
    assert quantise({"a": 100.0, "b": 0.001, "c": 0.0}, 255) == {"a": 255, "b": 1}
    assert quantise({"a": 50, "b": 25, "c": 0.01}, 100) == {"a": 100, "b": 50, "c": 1}
    assert quantise({"a": 3, "b": 3}, 100) == {"a": 100, "b": 100}
    # nothing positive: nothing to publish (no provider writes a weight for it)
    assert quantise({"a": 0.0}, 255) == {}


def test_weights_per_address_and_per_region() -> None:
    want = desired(
        jp=(60, {"192.0.2.1": 30, "2001:0DB8::1": 30}),
        us=(40, {"192.0.2.1": 20, "192.0.2.9": 0}),  # an anycast address in two regions
        eu=(0, {"192.0.2.7": 10}),
    )
    assert endpoint_weights(want) == {
        "A": {"192.0.2.1": 50},
        "AAAA": {"2001:db8::1": 30},  # one spelling per address
    }
    assert endpoint_weights(want, "A") == {"A": {"192.0.2.1": 50}}
    assert region_addresses(want) == {
        "jp": (60, {"A": ["192.0.2.1"], "AAAA": ["2001:db8::1"]}),
        "us": (40, {"A": ["192.0.2.1"]}),
    }
    # what a provider that disables rather than deletes keeps (not also live elsewhere)
    assert resting_addresses(want) == {"A": ["192.0.2.7", "192.0.2.9"], "AAAA": []}
    assert resting_addresses(want, "AAAA") == {"AAAA": []}
    with pytest.raises(DnsValidationError, match="not an IP address"):
        endpoint_weights(desired(jp=(1, {"api.example.net": 1})))


# ------------------------------------------------------- settings and desired
def test_provider_settings_apply_in_one_place() -> None:
    base = desired(jp=(1, {"192.0.2.1": 1}), us=(1, {"192.0.2.2": 1}))
    # defaults leave the caller's values; explicit ones win
    assert effective_desired(base, PowerDnsConfig(provider="powerdns")) == base
    config = PowerDnsConfig(provider="powerdns", ttl=120, owner_id="cluster-a", regions=["us"])
    out = effective_desired(base.model_copy(update={"name": "API.svc.plus."}), config)
    assert (out.ttl, out.owner_id, out.name) == (120, "cluster-a", "api.svc.plus")
    assert [r.region for r in out.regions] == ["us"]
    # an empty regions list publishes nothing through this provider
    none = effective_desired(base, PowerDnsConfig(provider="powerdns", regions=[]))
    assert none.regions == []
    with pytest.raises(DnsValidationError, match=r"not inside zone other\.plus"):
        effective_desired(base, PowerDnsConfig(provider="powerdns", zone="other.plus"))


def test_desired_for_provider_and_its_digest() -> None:
    policy = GtmPolicy.model_validate(
        {
            "service": "api",
            "domain": "api.svc.plus",
            "regions": [{"name": "jp"}, {"name": "us"}],
            "providers": [{"provider": "route53", "ttl": 60, "regions": ["jp"]}],
        }
    )
    region = RegionWeight(
        base_weight=100,
        health_ratio=1,
        ready_nodes_factor=1,
        latency_factor=1,
        effective_weight=100,
        ready_nodes=2,
        registered_nodes=2,
        desired_nodes=2,
    )
    weights = ServiceWeights(
        service="api",
        regions={"jp": region, "us": region},
        records=[
            WeightedRecord("192.0.2.2", "jp", "n2", 50),
            WeightedRecord("192.0.2.1", "jp", "n1", 50),
            WeightedRecord("192.0.2.3", "us", "n3", 100),
        ],
    )
    (provider,) = policy.providers
    assert isinstance(provider, Route53Config)
    got = desired_for_provider(policy, provider, weights)
    assert got == DesiredService(
        service="api",
        name="api.svc.plus",
        zone="svc.plus",
        ttl=60,
        regions=[
            DesiredRegion(
                region="jp",
                weight=100,
                endpoints=[
                    DesiredEndpoint(address="192.0.2.1", weight=50),
                    DesiredEndpoint(address="192.0.2.2", weight=50),
                ],
            )
        ],
    )
    # the digest the loop carries across runs, pinned: the value the code before the
    # shared plan gave (a different one would rewrite DNS once after an upgrade)
    assert digest(got) == "a55c03e2d1959260"
    assert digest(got.model_copy(update={"ttl": 30})) != digest(got)


# ------------------------------------------------------------------- ownership
def test_registry_reads_the_txt_marker() -> None:
    ours = registry(["site-verification=abc", MARKER], MARKER)
    assert ours.owned and not ours.others
    assert ours.values == sorted(["site-verification=abc", MARKER])
    theirs = registry([ownership_value("cluster-b", "api")], MARKER)
    assert not theirs.owned and theirs.others == [ownership_value("cluster-b", "api")]
    assert theirs.values == [MARKER]  # the other owner's marker goes on takeover


def test_foreign_records_and_other_owners_are_refused_unless_takeover() -> None:
    foreign = [address("A 198.51.100.7", owned=False)]
    with pytest.raises(DnsOwnershipError, match=r"A records that XPlane did not create \(A 198"):
        plan(foreign, [address("A 192.0.2.1")])
    with pytest.raises(DnsOwnershipError, match="owned by someone else"):
        plan([], [address("A 192.0.2.1")], other_owners=("heritage=xplane,owner=b",))
    taken = plan(foreign, [address("A 192.0.2.1")], takeover=True)
    assert [(c.action, c.key) for c in taken.changes] == [
        ("create", "A 192.0.2.1"),
        ("delete", "A 198.51.100.7"),
    ]
    # what was someone else's is not counted as XPlane's before the plan
    assert taken.owned_record_sets == 0 and taken.addresses_before == []


# ------------------------------------------------------------------------ diff
def test_diff_creates_updates_deletes_and_counts_addresses() -> None:
    marker = RecordSet("TXT", "TXT", {"values": [MARKER]}, owned=True)
    current = [marker, address("A 192.0.2.1"), address("A 192.0.2.2"), address("A 192.0.2.2")]
    moved = RecordSet("A 192.0.2.1", "A", {"ttl": 60}, {}, ["192.0.2.1"])
    result = plan(current, [marker, moved, address("A 192.0.2.3")])
    assert [(c.action, c.key) for c in result.changes] == [
        ("delete", "A 192.0.2.2"),  # the duplicate, first
        ("update", "A 192.0.2.1"),
        ("delete", "A 192.0.2.2"),
        ("create", "A 192.0.2.3"),
    ]
    update = result.changes[1]
    assert update.before == {"ttl": 30} and update.after == {"ttl": 60} and not update.weight_only
    assert result.owned_record_sets == 4
    assert result.addresses_before == ["192.0.2.1", "192.0.2.2"]
    assert result.addresses_after == ["192.0.2.1", "192.0.2.3"]
    assert not result.removes_all_addresses
    assert plan(current[:3], current[:3]).empty  # the same again: nothing to write


def test_weight_only_updates_and_unnamed_weights() -> None:
    current = [address("A 192.0.2.1", weight=10), address("A 192.0.2.2", weight=10)]
    reweighed = plan(current, [address("A 192.0.2.1", weight=20), address("A 192.0.2.2")])
    # the second wants no weight: its current one is not compared
    (change,) = reweighed.changes
    assert (change.key, change.action, change.weight_only) == ("A 192.0.2.1", "update", True)


def test_disabled_sets_are_kept_never_created_and_native_is_shown() -> None:
    off = RecordSet("A 192.0.2.9", "A", {"status": "off"}, enabled=False, native={"id": "r9"})
    assert plan([], [off, address("A 192.0.2.1")]).changes[0].key == "A 192.0.2.1"
    on = RecordSet("A 192.0.2.9", "A", {"status": "on"}, {}, ["192.0.2.9"], native={"id": "r9"})
    (change,) = plan([on], [off]).changes
    assert change.before == change.after == {"id": "r9"}  # the provider's own form


def test_an_empty_name_is_not_marked_and_emptying_one_is_flagged() -> None:
    marker = RecordSet("TXT", "TXT", {"values": [MARKER]})
    foreign_txt = RecordSet("TXT", "TXT", {"values": ["spf"]}, owned=None)
    assert plan([foreign_txt], [marker]).empty  # nothing published, nothing to publish
    emptied = plan([marker, address("A 192.0.2.1")], [marker])
    assert emptied.removes_all_addresses and emptied.changes[0].action == "delete"


# ---------------------------------------------------------------------- safety
def _plan(before: list[str], after: list[str], **fields: object) -> DnsPlan:
    """A plan of one update (unless ``changes`` says) from ``before`` to ``after``."""
    body: dict[str, object] = {"provider": "test", "service": "api", "name": "api.svc.plus"}
    body |= {"changes": [DnsChange(action="update", key="A")], **fields}
    return DnsPlan.model_validate(body | {"addresses_before": before, "addresses_after": after})


FOUR = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]


def test_safety_threshold_counts_removed_addresses() -> None:
    with pytest.raises(DnsSafetyError, match="removes 3 of 4 published addresses"):
        check_safety(_plan(FOUR, FOUR[:1]), 0.5, force=False)
    check_safety(_plan(FOUR, FOUR[:2]), 0.5, force=False)  # half is within 0.5
    check_safety(_plan(FOUR, FOUR[:1]), 0.5, force=True)
    # removals the caller announced (nodes judged not ready) are not counted
    check_safety(_plan(FOUR, FOUR[:1], expected_removals=FOUR[1:3]), 0.5, force=False)
    # a name with two addresses fails over without force
    check_safety(_plan(FOUR[:2], FOUR[:1]), 0.5, force=False)


def test_safety_refuses_emptying_and_ignores_weight_only_changes() -> None:
    with pytest.raises(DnsSafetyError, match="removes every address"):
        check_safety(_plan(FOUR[:1], [], removes_all_addresses=True), 0.5, force=False)
    weight_only = [DnsChange(action="update", key="A", weight_only=True)]
    check_safety(_plan(FOUR, [], removes_all_addresses=True, changes=weight_only), 0.5, force=False)


def test_safety_falls_back_to_record_sets_without_addresses() -> None:
    changes = [DnsChange(action="delete", key=k) for k in ("a", "b", "c")]
    with pytest.raises(DnsSafetyError, match="changes 3 of 4 owned record sets"):
        check_safety(_plan([], [], owned_record_sets=4, changes=changes), 0.5, force=False)
    changes.append(DnsChange(action="update", key="d", weight_only=True))
    check_safety(_plan([], [], owned_record_sets=8, changes=changes), 0.5, force=False)
