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
from xplane.dns.base import api_error, read_secret, unreachable
from xplane.dns.plan import (
    AddressType,
    Capabilities,
    Current,
    DesiredService,
    DnsPlan,
    DnsProvider,
    DnsValidationError,
    RecordSet,
    address_type,
    canonical_address,
    endpoint_weights,
    fqdn,
    ownership_value,
    quantise,
    registry,
    txt_quote,
    txt_unquote,
)

KIND = "powerdns"
# Record types at the name that carry addresses: XPlane replaces them (when it owns the name).
ADDRESS_TYPES = ("A", "AAAA", "LUA", "CNAME")

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


def normalise_content(rtype: str, content: str) -> str:
    if rtype in ("A", "AAAA"):
        return canonical_address(content)
    if rtype == "TXT":
        return txt_quote(txt_unquote(content))
    return content.strip()


def current_rrsets(zone_json: dict[str, Any], name: str) -> dict[str, tuple[int, list[str]]]:
    """The name's record sets from a ``GET /zones/<zone>`` body (disabled records ignored)."""
    out: dict[str, tuple[int, list[str]]] = {}
    for rrset in zone_json.get("rrsets") or []:
        if str(rrset.get("name", "")).lower() != name:
            continue
        rtype = str(rrset["type"])
        records = [r for r in rrset.get("records") or [] if not r.get("disabled")]
        contents = sorted(normalise_content(rtype, str(r["content"])) for r in records)
        if contents:
            out[rtype] = (int(rrset.get("ttl") or 0), contents)
    return out


def rrset(name: str, rtype: str, ttl: int, contents: list[str], owned: bool | None) -> RecordSet:
    """One rrset as the plan sees it; the addresses inside LUA records are counted."""
    found: set[str] = set()
    for content in contents if rtype in ADDRESS_TYPES else ():
        parsed = parse_lua(content) if rtype == "LUA" else None
        found.update(parsed[1] if parsed else [content])
    data = {"ttl": ttl, "records": sorted(contents)}
    label = f"{rtype} {', '.join(contents)}"
    return RecordSet(f"{name} {rtype}", rtype, data, addresses=found, owned=owned, label=label)


# ------------------------------------------------------------------- provider
class PowerDnsProvider(DnsProvider):
    """Talks to one pdns server's API (``config.api_url``, ``config.server_id``).

    ``create_zone=True`` lets ``apply()`` create a missing zone (Native, SOA from the
    server's default); otherwise a missing zone is a DnsValidationError naming it.
    """

    kind = KIND
    config: PowerDnsConfig
    # pickwrandom takes any integer: the largest address gets 1000, 0.1% resolution.
    capabilities = Capabilities(max_weight=1000, weights="address")

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
            raise unreachable(f"{KIND}: {what}", err) from None
        status = response.status_code
        if status >= 400 and status != 404:
            detail = _error_text(response).strip()[: 300 if status == 429 else 500]
            retry_after = response.headers.get("retry-after")
            message = f"{KIND}: {what}: HTTP {status}: {detail}"
            raise api_error(message, status, bucket=self.bucket, retry_after=retry_after)
        return response

    def read(self, desired: DesiredService) -> Current:
        name, zone = fqdn(desired.name), fqdn(desired.zone)
        response = self._request("GET", f"/zones/{zone}", params={"rrset_name": name})
        zone_missing = response.status_code == 404
        if zone_missing and not self.create_zone:
            raise DnsValidationError(
                f"{KIND}: zone {zone} does not exist on {self.config.api_url} "
                f"(server {self.config.server_id}); create it or allow create_zone"
            )
        found = {} if zone_missing else current_rrsets(response.json(), name)
        txt = [txt_unquote(c) for c in found.get("TXT", (0, []))[1]]
        owners = registry(txt, ownership_value(desired.owner_id, desired.service))
        sets = [
            rrset(name, t, ttl, contents, owners.owned or (None if t == "TXT" else False))
            for t, (ttl, contents) in found.items()
            if t in ADDRESS_TYPES or t == "TXT"
        ]
        context = {"zone": zone, "create_zone": zone_missing, "txt": owners.values}
        return Current(sets, owners.others, context)

    def wanted(self, desired: DesiredService, current: Current) -> list[RecordSet]:
        """A LUA record per address type (or plain A/AAAA sets) and the marker TXT."""
        name, ttl = fqdn(desired.name), desired.ttl
        out: list[RecordSet] = []
        lua: list[str] = []
        for rtype, weights in endpoint_weights(desired, self.config.record_type).items():
            if weights and self.config.lua_records:
                top = self.capabilities.max_weight
                lua.append(lua_content(rtype, quantise(weights, top)))
            elif weights:
                out.append(rrset(name, rtype, ttl, list(weights), True))
        if lua:
            out.append(rrset(name, "LUA", ttl, lua, True))
        quoted = [txt_quote(v) for v in current.context["txt"]]
        return [*out, rrset(name, "TXT", ttl, quoted, True)]

    def write(self, plan: DnsPlan) -> int:
        """Every change in one PATCH (REPLACE/DELETE: the only changetypes 4.7 has)."""
        zone = plan.context["zone"]
        writes = 0
        if plan.context.get("create_zone"):
            body = {"name": zone, "kind": "Native", "nameservers": [f"ns1.{zone}"]}
            self._request("POST", "/zones", json=body)
            writes += 1
        rrsets: list[dict[str, Any]] = []
        for change in plan.changes:
            name, rtype = change.key.rsplit(" ", 1)
            rrsets.append({"name": name, "type": rtype, "changetype": "DELETE"})
            if change.after is not None:
                records = [{"content": c, "disabled": False} for c in change.after["records"]]
                rrsets[-1].update(changetype="REPLACE", ttl=change.after["ttl"], records=records)
        response = self._request("PATCH", f"/zones/{zone}", json={"rrsets": rrsets})
        if response.status_code == 404:
            raise DnsValidationError(f"{KIND}: zone {zone} disappeared before apply")
        return writes + 1


def _error_text(response: httpx.Response) -> str:
    """pdns's ``{"error": "..."}`` text, or the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    return str(body.get("error", body)) if isinstance(body, dict) else response.text
