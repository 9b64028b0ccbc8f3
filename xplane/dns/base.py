"""The DNS provider interface: read current -> diff against desired -> plan -> apply.

Modelled on octoDNS: a provider first *plans* (reads what the provider has,
compares it with what XPlane wants, lists the changes) and only then *applies*.
Applying an empty plan writes nothing, so a loop that runs every few seconds
makes no API call that writes while nothing changed.

Rules every provider keeps:

* Ownership: XPlane touches only the record sets it owns. Ownership is marked
  the way external-dns's TXT registry does it, with a TXT record at the same
  name whose value is :func:`ownership_value`. A name that exists without that
  marker is refused (:class:`DnsOwnershipError`) unless ``takeover=True``.
* Safety: a plan that removes more than ``max_change_fraction`` of the addresses
  XPlane publishes at a name, or that removes every address of a name, is refused
  (:class:`DnsSafetyError`) unless ``force=True``. Addresses, not record sets, are
  counted: one PowerDNS LUA record (or Cloudflare pool) holds many addresses.
* Errors are classified: :class:`DnsRetryableError` (429, 5xx, timeouts) is
  retried by the activity's retry policy; :class:`DnsAuthError` and
  :class:`DnsValidationError` are not, and say what to fix.
* Secrets come from the environment or a file named in the config, never logged.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from typing import Any, Literal

from pydantic import BaseModel, Field

OWNERSHIP_PREFIX = "heritage=xplane"


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


# ------------------------------------------------------------------------ plan
class DnsChange(BaseModel):
    action: Literal["create", "update", "delete"]
    key: str  # provider-native identity, e.g. "api.svc.plus. A" or "A/jp" (set identifier)
    before: Any = None
    after: Any = None
    # Only weights/TTL change, no address comes or goes: a routine GTM move that the
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


# A name publishing this few addresses is exempt from the fraction: with two, losing one
# node is already 50% and must fail over without --force. Emptying it is still refused.
SMALL_NAME_ADDRESSES = 2


def check_safety(plan: DnsPlan, max_change_fraction: float, force: bool) -> None:
    """Refuse a plan that is too large or empties a name, unless forced (octoDNS-style).

    Too large: it takes away more than ``max_change_fraction`` of the addresses published
    before (additions, weight changes and ``expected_removals`` don't count) from a
    name with more than :data:`SMALL_NAME_ADDRESSES`. A provider that reports no
    addresses is judged by record sets, as before.
    """
    if force or plan.empty:
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
        changed = sum(1 for c in plan.changes if c.action != "create" and not c.weight_only)
        fraction = changed / plan.owned_record_sets
        # Small zones (<= 2 record sets) always change a large share: don't block them.
        if plan.owned_record_sets > 2 and fraction > max_change_fraction:
            raise DnsSafetyError(
                f"{plan.provider}: plan for {plan.name} changes {changed} of "
                f"{plan.owned_record_sets} owned record sets ({fraction:.0%} > "
                f"{max_change_fraction:.0%}); use force to apply"
            )


def read_secret(env_name: str | None, file_path: str | None = None) -> str:
    """A credential from a file (preferred when named) or the environment; never logged."""
    if file_path:
        try:
            with open(file_path, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as err:
            raise DnsAuthError(f"cannot read credential file {file_path}: {err.strerror}") from None
    if env_name and os.environ.get(env_name):
        return os.environ[env_name]
    raise DnsAuthError(f"credential not set: environment variable {env_name} is empty")


class DnsProvider(ABC):
    """One DNS backend. Synchronous: activities run it in a thread pool."""

    kind: str  # "powerdns" | "cloudflare" | "route53" | "alidns"

    @abstractmethod
    def plan(self, desired: DesiredService, *, takeover: bool = False) -> DnsPlan:
        """Read the provider, diff against ``desired``; write nothing."""

    @abstractmethod
    def apply(self, plan: DnsPlan, *, force: bool = False) -> ApplyResult:
        """Write the plan's changes (check_safety first); empty plan -> no write."""

    def sync(
        self, desired: DesiredService, *, force: bool = False, takeover: bool = False
    ) -> ApplyResult:
        """Plan and apply in one call (what the GTM loop's activity does)."""
        return self.apply(self.plan(desired, takeover=takeover), force=force)
