"""The DNS plan every provider shares, in octoDNS's manner: pure, no I/O.

A provider (:class:`DnsProvider`) first *plans* — reads what it has, lays out what
XPlane wants in its own record model, and this module compares the two — and only
then *applies*. Applying an empty plan writes nothing, so a loop that runs every few
seconds makes no API call that writes while nothing changed. A provider supplies only
:meth:`~DnsProvider.read` (its current records), :meth:`~DnsProvider.wanted` (the
desired state in its record model, from :func:`endpoint_weights` / :func:`region_addresses`
and :func:`quantise` to its :class:`Capabilities`) and :meth:`~DnsProvider.write`.

Rules kept here, once for every provider:

* Provider settings (zone, TTL, owner, ``regions:``) are applied in one place:
  :func:`effective_desired`, which :func:`desired_for_provider` uses too.
* Ownership: XPlane touches only what it owns, marked the way external-dns's TXT
  registry does it (a TXT record at the name whose value is :func:`ownership_value`,
  see :func:`registry`) or, where a provider has no TXT at the name, per record
  (Cloudflare's comment/description). What someone else holds is refused
  (:class:`DnsOwnershipError`) unless ``takeover=True``.
* The diff: create / update / delete per record set; an update that only re-weighs
  (:attr:`RecordSet.weights`) is *weight-only*, a routine GTM move.
* Safety (:func:`check_safety`): a plan that removes more than ``max_change_fraction``
  of the addresses published at a name, or removes every address, is refused
  (:class:`DnsSafetyError`) unless ``force=True``. Addresses, not record sets, are
  counted (one PowerDNS LUA record or Cloudflare pool holds many); weight-only
  changes and the addresses the caller removes on purpose are not.
* Errors are classified: :class:`DnsRetryableError` (429, 5xx, timeouts) is retried by
  the activity's retry policy; :class:`DnsAuthError` and :class:`DnsValidationError`
  are not, and say what to fix (the one classifier is :func:`xplane.dns.base.api_error`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, Field

from xplane.config.models import DnsProviderConfigBase, GtmPolicy, default_zone
from xplane.gtm.weights import ServiceWeights

OWNERSHIP_PREFIX = "heritage=xplane"
AddressType = Literal["A", "AAAA"]
RecordTypeSetting = Literal["A", "AAAA", "auto"]
K = TypeVar("K")


def ownership_value(owner_id: str, service: str) -> str:
    """The TXT value that marks a record set as XPlane's (external-dns style)."""
    return f"{OWNERSHIP_PREFIX},owner={owner_id},service={service}"


# ---------------------------------------------------------------- desired state
class DesiredEndpoint(BaseModel):
    address: str  # IPv4 or IPv6
    weight: float = Field(ge=0)  # this node's share: the region's weight split over its ready nodes


class DesiredRegion(BaseModel):
    region: str
    weight: float = Field(ge=0)  # effective region weight (0 = region out of DNS)
    endpoints: list[DesiredEndpoint] = Field(default_factory=list)


class DesiredService(BaseModel):
    """What one provider should publish for one service's domain."""

    service: str
    name: str  # FQDN without trailing dot, e.g. api.svc.plus
    zone: str  # zone without trailing dot, e.g. svc.plus
    ttl: int = 30
    owner_id: str = "xplane"
    regions: list[DesiredRegion] = Field(default_factory=list)

    def addresses(self) -> set[str]:
        return {
            e.address for r in self.regions if r.weight > 0 for e in r.endpoints if e.weight > 0
        }


def desired_for_provider(
    policy: GtmPolicy, provider: DnsProviderConfigBase, weights: ServiceWeights
) -> DesiredService:
    """The record set one provider should publish: the weights with its settings applied."""
    regions: list[DesiredRegion] = []
    for name, region in sorted(weights.regions.items()):
        endpoints = [
            DesiredEndpoint(address=r.address, weight=r.weight)
            for r in weights.records
            if r.region == name and r.weight > 0
        ]
        endpoints.sort(key=lambda e: e.address)
        regions.append(
            DesiredRegion(region=name, weight=region.effective_weight, endpoints=endpoints)
        )
    raw = DesiredService(
        service=policy.service,
        name=policy.domain,
        zone=default_zone(policy.domain),
        regions=regions,
    )
    return effective_desired(raw, provider)


def digest(desired: DesiredService) -> str:
    """Stable fingerprint of a desired record set: the loop writes only when it changes."""
    body = json.dumps(desired.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def effective_desired(desired: DesiredService, config: DnsProviderConfigBase) -> DesiredService:
    """``desired`` with the provider config's settings applied: the one place they are.

    Fields set in the provider's config (``ttl``, ``owner_id``, ``zone``) win over the
    caller's defaults; ``regions:`` limits what this provider publishes (None = all; an
    empty list = none). Names are normalised (lower case, no trailing dot) and the name
    must lie inside the zone.
    """
    update: dict[str, object] = {}
    for name in ("ttl", "owner_id", "zone"):
        value = getattr(config, name)
        if name in config.model_fields_set and value is not None:
            update[name] = value
    if config.regions is not None:
        keep = set(config.regions)
        update["regions"] = [r for r in desired.regions if r.region in keep]
    out = desired.model_copy(update=update)
    name, zone = out.name.lower().rstrip("."), out.zone.lower().rstrip(".")
    if name != zone and not name.endswith("." + zone):
        raise DnsValidationError(f"{name} is not inside zone {zone} (service {out.service})")
    return out.model_copy(update={"name": name, "zone": zone})


# ------------------------------------------------------------ addresses, weights
def fqdn(name: str) -> str:
    """``api.svc.plus`` -> ``api.svc.plus.`` (lower case; APIs want the trailing dot)."""
    return name.strip().lower().rstrip(".") + "."


def address_type(address: str) -> AddressType:
    """``A`` for IPv4, ``AAAA`` for IPv6; DnsValidationError for anything else."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise DnsValidationError(f"not an IP address: {address!r}") from None
    return "A" if ip.version == 4 else "AAAA"


def canonical_address(address: str) -> str:
    """One spelling per address (IPv6 compressed, lower case) so comparisons are exact."""
    try:
        return str(ipaddress.ip_address(address.strip()))
    except ValueError:
        return address.strip()


def wanted_types(setting: RecordTypeSetting) -> tuple[AddressType, ...]:
    return ("A", "AAAA") if setting == "auto" else (setting,)


def endpoint_weights(
    desired: DesiredService, setting: RecordTypeSetting = "auto"
) -> dict[AddressType, dict[str, float]]:
    """Per record type, each published address with its weight (regions and nodes > 0).

    An address listed twice (two regions sharing an anycast IP) gets the sum. Addresses
    of a family the provider is not configured for (``record_type: A`` and an IPv6
    node) are left out: that is what the setting asks for.
    """
    out: dict[AddressType, dict[str, float]] = {t: {} for t in wanted_types(setting)}
    for region in desired.regions:
        if region.weight <= 0:
            continue
        for endpoint in region.endpoints:
            rtype = address_type(endpoint.address)
            if endpoint.weight > 0 and rtype in out:
                address = canonical_address(endpoint.address)
                out[rtype][address] = out[rtype].get(address, 0.0) + endpoint.weight
    return out


def region_addresses(
    desired: DesiredService, setting: RecordTypeSetting = "auto"
) -> dict[str, tuple[float, dict[AddressType, list[str]]]]:
    """Per region with weight > 0: (region weight, ready addresses by record type, sorted)."""
    types = wanted_types(setting)
    out: dict[str, tuple[float, dict[AddressType, list[str]]]] = {}
    for region in desired.regions:
        if region.weight <= 0:
            continue
        by_type: dict[AddressType, set[str]] = {}
        for endpoint in region.endpoints:
            rtype = address_type(endpoint.address)
            if endpoint.weight > 0 and rtype in types:
                by_type.setdefault(rtype, set()).add(canonical_address(endpoint.address))
        if by_type:
            out[region.region] = (region.weight, {t: sorted(a) for t, a in by_type.items()})
    return out


def resting_addresses(
    desired: DesiredService, setting: RecordTypeSetting = "auto"
) -> dict[AddressType, list[str]]:
    """Per record type, the addresses at weight 0 (their region or node) and not published
    elsewhere: what a provider that :attr:`~Capabilities.disables` keeps, disabled."""
    live = endpoint_weights(desired, setting)
    out: dict[AddressType, set[str]] = {t: set() for t in live}
    for region in desired.regions:
        for endpoint in region.endpoints:
            address = canonical_address(endpoint.address)
            rtype = address_type(address)
            if rtype in out and address not in live[rtype]:
                out[rtype].add(address)
    return {t: sorted(a) for t, a in out.items()}


def quantise(weights: Mapping[K, float], top: int) -> dict[K, int]:
    """Integer weights in 1..top with the same proportions; zero/negative weights dropped.

    The one quantiser of every provider (its :attr:`Capabilities.max_weight` is ``top``).
    The largest weight becomes ``top`` (best resolution; stable while the ratios are),
    the others are rounded, and a positive weight never rounds to 0 (it becomes 1), so
    a region XPlane wants in DNS stays in DNS.
    """
    positive = {k: w for k, w in weights.items() if w > 0}
    if not positive:
        return {}
    scale = top / max(positive.values())
    return {k: max(1, min(top, round(w * scale))) for k, w in positive.items()}


# ------------------------------------------------------------------- ownership
class Registry(NamedTuple):
    """What the TXT values at a name say about ownership (external-dns's TXT registry)."""

    owned: bool  # our marker is there
    others: list[str]  # other owners' markers (only looked at when ours is missing)
    values: list[str]  # the TXT values to publish: foreign ones kept, ours added


def registry(txt_values: Iterable[str], marker: str) -> Registry:
    """Ownership by ``marker`` among the (unquoted) TXT values at a name."""
    values = list(txt_values)
    owned = marker in values
    others = [] if owned else [v for v in values if is_marker(v)]
    return Registry(owned, others, sorted({v for v in values if not is_marker(v)} | {marker}))


def is_marker(value: str) -> bool:
    return value.startswith(OWNERSHIP_PREFIX)


def txt_quote(value: str) -> str:
    """Zone-file TXT content: ``"value"`` with quotes and backslashes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def txt_unquote(content: str) -> str:
    """Inverse of :func:`txt_quote`; joins the ``"a" "b"`` strings of one TXT record."""
    text = content.strip()
    if not text.startswith('"'):
        return text
    parts: list[str] = []
    current: list[str] = []
    inside = escaped = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            if inside:
                parts.append("".join(current))
                current = []
            inside = not inside
        elif inside:
            current.append(char)
    return "".join(parts)


# ------------------------------------------------------------------------ plan
@dataclass
class RecordSet:
    """One record set (or record, pool, load balancer) at the name, as the plan compares it.

    ``data`` and ``weights`` are compared; a difference in ``weights`` alone is a
    weight-only update, and weights the wanted set does not name are not compared.
    ``native`` (the provider's own form, with ids) becomes the change's before/after.
    """

    key: str  # identity at the name, e.g. "api.svc.plus. LUA", "A/api-jp", "A 192.0.2.1"
    type: str  # for messages: "A", "CNAME", "pool", ...
    data: Any = None
    weights: Mapping[str, Any] = field(default_factory=dict)
    addresses: Collection[str] = ()  # what it answers with (none while disabled)
    owned: bool | None = True  # False: someone else's (takeover); None: claims nothing
    enabled: bool = True  # a disabled wanted set is kept disabled, never created
    native: Any = None  # defaults to data
    label: str = ""  # for messages; defaults to key

    def view(self) -> Any:
        return self.native if self.native is not None else self.data


class DnsChange(BaseModel):
    action: Literal["create", "update", "delete"]
    key: str  # provider-native identity, e.g. "api.svc.plus. A" or "A/jp" (set identifier)
    before: Any = None
    after: Any = None
    # Only weights change, no address comes or goes: a routine GTM move that the
    # safety threshold does not count (it guards against mass address changes).
    weight_only: bool = False


class DnsPlan(BaseModel):
    provider: str  # e.g. "powerdns", "route53"
    service: str
    name: str
    changes: list[DnsChange] = Field(default_factory=list)
    owned_record_sets: int = 0  # how many record sets XPlane owned before the plan
    removes_all_addresses: bool = False  # the plan leaves the name with no address
    # Addresses XPlane published at the name before the plan (empty when it did not own
    # it yet) and after it: what the safety threshold counts.
    addresses_before: list[str] = Field(default_factory=list)
    addresses_after: list[str] = Field(default_factory=list)
    # Addresses the caller removes on purpose (their nodes are judged not ready): the
    # safety threshold does not count them.
    expected_removals: list[str] = Field(default_factory=list)
    # provider-private data apply() needs (ids of existing records, etc.)
    context: dict[str, Any] = Field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        if self.empty:
            return f"{self.provider}: {self.name}: no changes"
        counts: dict[str, int] = {}
        for change in self.changes:
            counts[change.action] = counts.get(change.action, 0) + 1
        parts = ", ".join(f"{n} {a}" for a, n in sorted(counts.items()))
        return f"{self.provider}: {self.name}: {parts}"


class ApplyResult(BaseModel):
    provider: str
    name: str
    applied: bool  # False when the plan was empty (nothing written)
    write_calls: int = 0  # API calls that wrote
    changes: list[DnsChange] = Field(default_factory=list)
    # The safety threshold refused the plan and the caller asked to hold it (nothing written).
    refused: str | None = None


def check_ownership(
    provider: str,
    name: str,
    marker: str,
    current: Iterable[RecordSet],
    other_owners: Iterable[str] = (),
    takeover: bool = False,
) -> None:
    """Refuse to write over another owner's marker or records XPlane did not create."""
    if takeover:
        return
    others = list(other_owners)
    if others:
        raise DnsOwnershipError(
            f"{provider}: {name} is marked as owned by someone else ({others[0]!r}, "
            f"we are {marker!r}); use takeover to replace it"
        )
    foreign = [r for r in current if r.owned is False]
    if foreign:
        types = ", ".join(sorted({r.type for r in foreign}))
        listed = ", ".join(r.label or r.key for r in foreign)
        raise DnsOwnershipError(
            f"{provider}: {name} already has {types} records that XPlane did not create "
            f"({listed}; no ownership marker {marker!r}); use takeover to replace them"
        )


def make_plan(
    provider: str,
    desired: DesiredService,
    current: list[RecordSet],
    wanted: list[RecordSet],
    *,
    takeover: bool = False,
    other_owners: Iterable[str] = (),
    context: dict[str, Any] | None = None,
) -> DnsPlan:
    """The changes turning ``current`` (what XPlane may manage at the name) into ``wanted``.

    Changes are sorted by key; a second current set with a key already seen (a duplicate
    record) is deleted. A name where nothing is published and nothing is to be published
    gets no plan (XPlane does not mark an empty name).
    """
    marker = ownership_value(desired.owner_id, desired.service)
    check_ownership(provider, desired.name, marker, current, other_owners, takeover)
    plan = DnsPlan(provider=provider, service=desired.service, name=desired.name)
    plan.context = context or {}
    if not any(w.addresses for w in wanted) and all(c.owned is None for c in current):
        return plan
    have: dict[str, RecordSet] = {}
    for record in current:
        if record.key in have:
            plan.changes.append(DnsChange(action="delete", key=record.key, before=record.view()))
        have.setdefault(record.key, record)
    want = {w.key: w for w in wanted}
    for key in sorted(have.keys() | want.keys()):
        before, after = have.get(key), want.get(key)
        if after is None:
            assert before is not None
            plan.changes.append(DnsChange(action="delete", key=key, before=before.view()))
        elif before is None:
            if after.enabled:
                plan.changes.append(DnsChange(action="create", key=key, after=after.view()))
        elif before.data != after.data or any(
            before.weights.get(k) != v for k, v in after.weights.items()
        ):
            change = DnsChange(action="update", key=key, before=before.view(), after=after.view())
            change.weight_only = before.data == after.data
            plan.changes.append(change)
    plan.owned_record_sets = sum(1 for c in current if c.owned)
    plan.removes_all_addresses = any(c.addresses for c in current) and not any(
        w.addresses for w in wanted
    )
    plan.addresses_before = sorted({a for c in current if c.owned for a in c.addresses})
    plan.addresses_after = sorted({a for w in wanted for a in w.addresses})
    return plan


# A name publishing this few addresses is exempt from the fraction: with two, losing one
# node is already 50% and must fail over without --force. Emptying it is still refused.
SMALL_NAME_ADDRESSES = 2


def check_safety(plan: DnsPlan, max_change_fraction: float, force: bool) -> None:
    """Refuse a plan that is too large or empties a name, unless forced (octoDNS-style).

    Weight-only changes are routine (a failing region moves its share to all others at
    once) and not looked at. Too large: the plan takes away more than
    ``max_change_fraction`` of the addresses published before (additions and
    ``expected_removals`` don't count) from a name with more than
    :data:`SMALL_NAME_ADDRESSES`. A provider that reports no addresses is judged by
    record sets.
    """
    changes = [c for c in plan.changes if not c.weight_only]
    if force or not changes:
        return
    if plan.removes_all_addresses:
        raise DnsSafetyError(
            f"{plan.provider}: plan for {plan.name} removes every address; use force to apply"
        )
    before = set(plan.addresses_before)
    if before:
        removed = before - set(plan.addresses_after) - set(plan.expected_removals)
        fraction = len(removed) / len(before)
        if len(before) > SMALL_NAME_ADDRESSES and fraction > max_change_fraction:
            raise DnsSafetyError(
                f"{plan.provider}: plan for {plan.name} removes {len(removed)} of "
                f"{len(before)} published addresses ({fraction:.0%} > "
                f"{max_change_fraction:.0%}); use force to apply"
            )
        return
    if plan.owned_record_sets > 0:
        changed = sum(1 for c in changes if c.action != "create")
        fraction = changed / plan.owned_record_sets
        # Small zones (<= 2 record sets) always change a large share: don't block them.
        if plan.owned_record_sets > 2 and fraction > max_change_fraction:
            raise DnsSafetyError(
                f"{plan.provider}: plan for {plan.name} changes {changed} of "
                f"{plan.owned_record_sets} owned record sets ({fraction:.0%} > "
                f"{max_change_fraction:.0%}); use force to apply"
            )


# -------------------------------------------------------------------- provider
@dataclass(frozen=True)
class Capabilities:
    """What a provider's record model can say (octoDNS's ``SUPPORTS_*``)."""

    max_weight: int  # weights are integers 1..max_weight (what quantise() scales to)
    weights: Literal["address", "region", "none"]  # what a weight belongs to
    disables: bool = False  # a region at 0 keeps its records disabled instead of deleted


class DnsProvider(ABC):
    """One DNS backend: reads, lays out, writes; the plan is this module's.

    Synchronous: activities run it in a thread pool.
    """

    kind: str  # "powerdns" | "cloudflare" | "route53" | "alidns"
    capabilities: Capabilities
    config: DnsProviderConfigBase

    @abstractmethod
    def read(self, desired: DesiredService) -> Current:
        """What the provider has at ``desired.name`` (only what XPlane may manage)."""

    @abstractmethod
    def wanted(self, desired: DesiredService, current: Current) -> list[RecordSet]:
        """``desired`` in the provider's record model."""

    @abstractmethod
    def write(self, plan: DnsPlan) -> int:
        """Write a non-empty plan's changes; returns the API calls that wrote."""

    def check(self, plan: DnsPlan) -> None:
        """Refuse, while planning, a plan the provider's API would reject (default: none)."""
        return None

    def plan(self, desired: DesiredService, *, takeover: bool = False) -> DnsPlan:
        """Read the provider, diff against ``desired``; write nothing."""
        desired = effective_desired(desired, self.config)
        current = self.read(desired)
        wanted = self.wanted(desired, current)
        plan = make_plan(
            self.kind,
            desired,
            current.sets,
            wanted,
            takeover=takeover,
            other_owners=current.other_owners,
            context=current.context,
        )
        self.check(plan)
        return plan

    def apply(self, plan: DnsPlan, *, force: bool = False) -> ApplyResult:
        """Write the plan's changes (check_safety first); empty plan -> no write."""
        check_safety(plan, self.config.max_change_fraction, force)
        if plan.empty:
            return ApplyResult(provider=self.kind, name=plan.name, applied=False)
        writes = self.write(plan)
        return ApplyResult(
            provider=self.kind,
            name=plan.name,
            applied=True,
            write_calls=writes,
            changes=plan.changes,
        )

    def sync(
        self, desired: DesiredService, *, force: bool = False, takeover: bool = False
    ) -> ApplyResult:
        """Plan and apply in one call (what the GTM loop's activity does)."""
        return self.apply(self.plan(desired, takeover=takeover), force=force)


@dataclass
class Current:
    """What :meth:`DnsProvider.read` found: the sets, other owners' markers, and what
    ``write`` will need (zone ids and the like)."""

    sets: list[RecordSet] = field(default_factory=list)
    other_owners: list[str] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- errors
class DnsError(Exception):
    """Base of provider errors; ``retryable`` tells the activity layer what to do."""

    retryable = False


class DnsRetryableError(DnsError):
    retryable = True


class DnsAuthError(DnsError):
    pass


class DnsValidationError(DnsError):
    pass


class DnsOwnershipError(DnsError):
    pass


class DnsSafetyError(DnsError):
    pass
