"""PowerDNS authoritative (HTTP API, 4.7) provider: weighted answers as LUA records.

One name gets at most three record sets that XPlane owns:

* ``LUA``: one record per address type, ``A "pickwrandom({{600,'192.0.2.1'},...})"``,
  so each query is answered with one address picked by weight (or plain ``A``/``AAAA``
  record sets when ``lua_records: false``: every address, unweighted);
* ``TXT``: the ownership marker (other TXT values at the name are kept).

``plan()`` reads the name's record sets (one GET) and diffs; ``apply()`` writes every
change in one PATCH (``REPLACE``/``DELETE``: the only changetypes 4.7 has). A PATCH
flushes pdns's caches, so answers change at once.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from xplane.config.models import PowerDnsConfig
from xplane.dns import ratelimit
from xplane.dns.base import (
    ApplyResult,
    DesiredService,
    DnsChange,
    DnsPlan,
    DnsProvider,
    DnsRetryableError,
    DnsValidationError,
    check_safety,
    ownership_value,
    read_secret,
)
from xplane.dns.common import (
    AddressType,
    RecordTypeSetting,
    address_type,
    canonical_address,
    check_ownership,
    effective_desired,
    endpoint_weights,
    fqdn,
    http_error,
    is_marker,
    quantise,
    txt_quote,
    txt_unquote,
)

KIND = "powerdns"
LUA_TOP_WEIGHT = 1000  # the largest address gets 1000: 0.1% resolution for the others
# Record types at the name that carry addresses: XPlane replaces them (when it owns the name).
ADDRESS_TYPES = ("A", "AAAA", "LUA", "CNAME")

RRSet = tuple[int, tuple[str, ...]]  # (ttl, sorted record contents)

_LUA_ITEM = r"\{[1-9][0-9]*,'[0-9A-Fa-f:.]+'\}"
_LUA_PICK = re.compile(rf"^(A|AAAA) \"pickwrandom\(\{{{_LUA_ITEM}(,{_LUA_ITEM})*\}}\)\"$")
_LUA_ENTRY = re.compile(r"\{([0-9]+),'([^']+)'\}")


# ------------------------------------------------------------------ pure parts
def lua_content(rtype: AddressType, weights: dict[str, int]) -> str:
    """``A "pickwrandom({{w,'ip'},...})"`` for positive integer weights (sorted by address)."""
    entries = ",".join(f"{{{w},'{a}'}}" for a, w in sorted(weights.items()))
    content = f'{rtype} "pickwrandom({{{entries}}})"'
    validate_lua(content)
    return content


def validate_lua(content: str) -> None:
    """Refuse LUA text pdns would accept but then SERVFAIL on at query time."""
    match = _LUA_PICK.match(content)
    if not match:
        raise DnsValidationError(f"powerdns: malformed LUA record content {content!r}")
    rtype = match.group(1)
    for weight, address in _LUA_ENTRY.findall(content):
        if address_type(address) != rtype or int(weight) <= 0:
            raise DnsValidationError(
                f"powerdns: LUA {rtype} record has a bad entry {{{weight},'{address}'}}"
            )


def parse_lua(content: str) -> tuple[str, dict[str, int]] | None:
    """``(type, {address: weight})`` of a pickwrandom LUA record, None for other LUA."""
    match = _LUA_PICK.match(content.strip())
    if not match:
        return None
    return match.group(1), {a: int(w) for w, a in _LUA_ENTRY.findall(content)}


def desired_rrsets(
    desired: DesiredService, lua_records: bool, record_type: RecordTypeSetting
) -> dict[str, RRSet]:
    """The address record sets XPlane wants at the name, by type (TXT not included)."""
    out: dict[str, RRSet] = {}
    lua: list[str] = []
    for rtype, weights in endpoint_weights(desired, record_type).items():
        if not weights:
            continue
        if lua_records:
            lua.append(lua_content(rtype, quantise(weights, LUA_TOP_WEIGHT)))
        else:
            out[rtype] = (desired.ttl, tuple(sorted(weights)))
    if lua:
        out["LUA"] = (desired.ttl, tuple(sorted(lua)))
    return out


def normalise_content(rtype: str, content: str) -> str:
    if rtype in ("A", "AAAA"):
        return canonical_address(content)
    if rtype == "TXT":
        return txt_quote(txt_unquote(content))
    return content.strip()


def current_rrsets(zone_json: dict[str, Any], name: str) -> dict[str, RRSet]:
    """The name's record sets from a ``GET /zones/<zone>`` body (disabled records ignored)."""
    out: dict[str, RRSet] = {}
    for rrset in zone_json.get("rrsets") or []:
        if str(rrset.get("name", "")).lower() != name:
            continue
        rtype = str(rrset["type"])
        records = [r for r in rrset.get("records") or [] if not r.get("disabled")]
        contents = tuple(sorted(normalise_content(rtype, str(r["content"])) for r in records))
        if contents:
            out[rtype] = (int(rrset.get("ttl") or 0), contents)
    return out


def rrset_addresses(rrsets: dict[str, RRSet]) -> list[str]:
    """Every address the name's address record sets publish (inside LUA records too)."""
    found: set[str] = set()
    for rtype in ADDRESS_TYPES:
        for content in rrsets.get(rtype, (0, ()))[1]:
            parsed = parse_lua(content) if rtype == "LUA" else None
            found.update(parsed[1] if parsed else [content])
    return sorted(found)


def _rrset_view(rrset: RRSet | None) -> dict[str, Any] | None:
    return None if rrset is None else {"ttl": rrset[0], "records": list(rrset[1])}


def diff(
    name: str, current: dict[str, RRSet], wanted: dict[str, RRSet], managed: set[str]
) -> tuple[list[DnsChange], list[dict[str, Any]]]:
    """Changes and the PATCH ``rrsets`` that turn ``current`` into ``wanted``.

    Only types in ``managed`` are deleted when unwanted; others at the name are left alone.
    """
    changes: list[DnsChange] = []
    patch: list[dict[str, Any]] = []
    for rtype in sorted(managed | set(wanted)):
        before, after = current.get(rtype), wanted.get(rtype)
        if before == after:
            continue
        key = f"{name} {rtype}"
        if after is None:
            changes.append(DnsChange(action="delete", key=key, before=_rrset_view(before)))
            patch.append({"name": name, "type": rtype, "changetype": "DELETE"})
            continue
        action = "create" if before is None else "update"
        changes.append(
            DnsChange(action=action, key=key, before=_rrset_view(before), after=_rrset_view(after))
        )
        records = [{"content": c, "disabled": False} for c in after[1]]
        patch.append(
            {
                "name": name,
                "type": rtype,
                "ttl": after[0],
                "changetype": "REPLACE",
                "records": records,
            }
        )
    return changes, patch


# ------------------------------------------------------------------- provider
class PowerDnsProvider(DnsProvider):
    """Talks to one pdns server's API (``config.api_url``, ``config.server_id``).

    ``create_zone=True`` lets ``apply()`` create a missing zone (Native, SOA from the
    server's default); otherwise a missing zone is a DnsValidationError naming it.
    """

    kind = KIND

    def __init__(
        self,
        config: PowerDnsConfig,
        api_key: str | None = None,
        *,
        client: httpx.Client | None = None,
        create_zone: bool = False,
        timeout: float = 10.0,
    ) -> None:
        self.config = config
        self._api_key = api_key or read_secret(config.api_key_env, config.api_key_file)
        self._client = client or httpx.Client(timeout=timeout)
        self._owns_client = client is None
        self.create_zone = create_zone
        self._base = f"{config.api_url.rstrip('/')}/api/v1/servers/{config.server_id}"
        self.bucket = ratelimit.limiter(KIND, ratelimit.account_key(self._base))

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        what = f"{method} {self._base}{path}"
        self.bucket.acquire()
        try:
            response = self._client.request(
                method, self._base + path, headers={"X-API-Key": self._api_key}, **kwargs
            )
        except httpx.TransportError as err:
            raise DnsRetryableError(f"{KIND}: {what}: {type(err).__name__}: {err}") from None
        if response.status_code == 429:  # a rate-limiting proxy in front of the API
            text = f"{KIND}: {what}: HTTP 429: {_error_text(response).strip()[:300]}"
            retry_after = ratelimit.parse_retry_after(response.headers.get("retry-after"))
            raise ratelimit.throttled(self.bucket, text, retry_after)
        if response.status_code >= 400 and response.status_code != 404:
            raise http_error(KIND, what, response.status_code, _error_text(response))
        return response

    # ---------------------------------------------------------------- plan
    def plan(self, desired: DesiredService, *, takeover: bool = False) -> DnsPlan:
        desired = effective_desired(desired, self.config)
        name, zone = fqdn(desired.name), fqdn(desired.zone)
        response = self._request("GET", f"/zones/{zone}", params={"rrset_name": name})
        zone_missing = response.status_code == 404
        if zone_missing and not self.create_zone:
            raise DnsValidationError(
                f"{KIND}: zone {zone} does not exist on {self.config.api_url} "
                f"(server {self.config.server_id}); create it or allow create_zone"
            )
        current = {} if zone_missing else current_rrsets(response.json(), name)

        wanted = desired_rrsets(desired, self.config.lua_records, self.config.record_type)
        marker = ownership_value(desired.owner_id, desired.service)
        txt_values = [txt_unquote(c) for c in current.get("TXT", (0, ()))[1]]
        present = [t for t in ADDRESS_TYPES if t in current]
        owned = check_ownership(
            provider=KIND,
            name=desired.name,
            marker=marker,
            txt_values=txt_values,
            foreign_address_sets=present,
            takeover=takeover,
        )
        plan = DnsPlan(provider=KIND, service=desired.service, name=desired.name)
        if not wanted and not present:
            return plan  # nothing published and nothing to publish: don't mark an empty name
        # Keep foreign TXT values (site verification, SPF); drop other owners' markers.
        kept = sorted({v for v in txt_values if not is_marker(v)} | {marker})
        wanted["TXT"] = (desired.ttl, tuple(txt_quote(v) for v in kept))
        changes, patch = diff(name, current, wanted, set(ADDRESS_TYPES))
        plan.changes = changes
        plan.owned_record_sets = (len(present) + 1) if owned else 0
        plan.removes_all_addresses = bool(present) and not any(t in wanted for t in ADDRESS_TYPES)
        if owned:
            plan.addresses_before = rrset_addresses(current)
            plan.addresses_after = rrset_addresses(wanted)
        plan.context = {"zone": zone, "rrsets": patch, "create_zone": zone_missing}
        return plan

    # --------------------------------------------------------------- apply
    def apply(self, plan: DnsPlan, *, force: bool = False) -> ApplyResult:
        check_safety(plan, self.config.max_change_fraction, force)
        result = ApplyResult(provider=KIND, name=plan.name, applied=False)
        if plan.empty:
            return result
        zone = plan.context["zone"]
        writes = 0
        if plan.context.get("create_zone"):
            body = {"name": zone, "kind": "Native", "nameservers": [f"ns1.{zone}"]}
            self._request("POST", "/zones", json=body)
            writes += 1
        response = self._request("PATCH", f"/zones/{zone}", json={"rrsets": plan.context["rrsets"]})
        writes += 1
        if response.status_code == 404:
            raise DnsValidationError(f"{KIND}: zone {zone} disappeared before apply")
        return result.model_copy(
            update={"applied": True, "write_calls": writes, "changes": plan.changes}
        )


def _error_text(response: httpx.Response) -> str:
    """pdns's ``{"error": "..."}`` text, or the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    return str(body.get("error", body)) if isinstance(body, dict) else response.text
