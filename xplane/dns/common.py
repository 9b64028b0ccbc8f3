"""Pure helpers the PowerDNS and Route53 providers share (no I/O).

* which addresses a provider publishes and with what weight (per record type),
* integer quantisation of weights that keeps proportions and never turns a
  positive weight into 0,
* the ownership decision (external-dns-style TXT marker),
* HTTP status -> error class mapping.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

from xplane.config.models import DnsProviderConfigBase
from xplane.dns.base import (
    OWNERSHIP_PREFIX,
    DesiredService,
    DnsAuthError,
    DnsError,
    DnsOwnershipError,
    DnsRetryableError,
    DnsValidationError,
)

AddressType = Literal["A", "AAAA"]
RecordTypeSetting = Literal["A", "AAAA", "auto"]
K = TypeVar("K")


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


def select_regions(desired: DesiredService, allowed: list[str] | None) -> DesiredService:
    """The provider config's ``regions:`` limit (None = all)."""
    if allowed is None:
        return desired
    keep = set(allowed)
    return desired.model_copy(update={"regions": [r for r in desired.regions if r.region in keep]})


def endpoint_weights(
    desired: DesiredService, setting: RecordTypeSetting = "auto"
) -> dict[AddressType, dict[str, float]]:
    """Per record type, each published address with its weight (regions and nodes > 0).

    An address listed twice (two regions sharing an anycast IP) gets the sum. Addresses
    of a family the provider is not configured for (``record_type: A`` and an IPv6
    node) are left out: that is what the setting asks for.
    """
    types = wanted_types(setting)
    out: dict[AddressType, dict[str, float]] = {t: {} for t in types}
    for region in desired.regions:
        if region.weight <= 0:
            continue
        for endpoint in region.endpoints:
            if endpoint.weight <= 0:
                continue
            rtype = address_type(endpoint.address)
            if rtype in out:
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
            if endpoint.weight <= 0:
                continue
            rtype = address_type(endpoint.address)
            if rtype in types:
                by_type.setdefault(rtype, set()).add(canonical_address(endpoint.address))
        if by_type:
            out[region.region] = (region.weight, {t: sorted(a) for t, a in by_type.items()})
    return out


def quantise(weights: Mapping[K, float], top: int) -> dict[K, int]:
    """Integer weights in 1..top with the same proportions; zero/negative weights dropped.

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


def is_marker(value: str) -> bool:
    return value.startswith(OWNERSHIP_PREFIX)


def check_ownership(
    *,
    provider: str,
    name: str,
    marker: str,
    txt_values: Iterable[str],
    foreign_address_sets: Iterable[str],
    takeover: bool,
) -> bool:
    """Whether XPlane owns ``name`` already; raise DnsOwnershipError when it may not write.

    ``txt_values`` are the unquoted TXT values at the name; ``foreign_address_sets``
    names the address-like record sets present there (A/AAAA/CNAME/...). A name holding
    another owner's marker, or address records without any marker, is refused unless
    ``takeover``. Returns True when our own marker is present.
    """
    values = list(txt_values)
    if marker in values:
        return True
    others = [v for v in values if is_marker(v)]
    if takeover:
        return False
    if others:
        raise DnsOwnershipError(
            f"{provider}: {name} is marked as owned by someone else ({others[0]!r}, "
            f"we are {marker!r}); use takeover to replace it"
        )
    existing = sorted(set(foreign_address_sets))
    if existing:
        raise DnsOwnershipError(
            f"{provider}: {name} already has {', '.join(existing)} records that XPlane did not "
            f"create (no TXT marker {marker!r}); use takeover to replace them"
        )
    return False


# ---------------------------------------------------------------------- errors
def http_error(provider: str, what: str, status: int, detail: str) -> DnsError:
    """The error class for an HTTP failure: 401/403 auth, 429/5xx retryable, else validation."""
    message = f"{provider}: {what}: HTTP {status}: {detail.strip()[:500]}"
    if status in (401, 403):
        return DnsAuthError(message)
    if status == 429 or status >= 500 or status == 408:
        return DnsRetryableError(message)
    return DnsValidationError(message)


def effective_desired(desired: DesiredService, config: DnsProviderConfigBase) -> DesiredService:
    """``desired`` with the provider config's explicit settings applied.

    Fields set in the provider's config (``ttl``, ``owner_id``, ``zone``) win over the
    caller's defaults; ``regions:`` limits what this provider publishes. Names are
    normalised (lower case, no trailing dot) and the name must lie inside the zone.
    """
    update: dict[str, object] = {}
    for field in ("ttl", "owner_id", "zone"):
        value = getattr(config, field)
        if field in config.model_fields_set and value is not None:
            update[field] = value
    out = select_regions(desired.model_copy(update=update), config.regions)
    name, zone = out.name.lower().rstrip("."), out.zone.lower().rstrip(".")
    if name != zone and not name.endswith("." + zone):
        raise DnsValidationError(f"{name} is not inside zone {zone} (service {out.service})")
    return out.model_copy(update={"name": name, "zone": zone})
