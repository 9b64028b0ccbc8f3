"""AliDNS (Alibaba Cloud DNS, API 2015-01-09): weighted A/AAAA records with SLB weights.

What XPlane publishes at ``<rr>.<zone>`` on the configured line (``default``,
``oversea``, ...): one A/AAAA record per node address.

* Weights: AliDNS "DNS SLB" weights (``UpdateDNSSLBWeight``, 1-100) after
  ``SetDNSSLBStatus`` has enabled weighting for the sub-domain and type (the API
  refuses weights before that). Node weights are quantised proportionally: the
  heaviest record of a type gets 100, the others ``round(100 * w / max)`` clamped
  to 1..100. Weights matter (and are written) only while two or more records of
  a type are enabled.
* A region at weight 0 (or a node at weight 0) keeps its records, **disabled**
  with ``SetDomainRecordStatus`` (architecture: "AliDNS 0 = disabled record"), so
  bringing it back is one status flip; an address no longer desired at all is deleted.
* Ownership: a TXT record at the same RR and line whose value is
  :func:`~xplane.dns.base.ownership_value` (external-dns's TXT registry, as
  ``base.py`` describes). With the marker every A/AAAA record on that line at
  that RR is XPlane's; without it any A/AAAA/CNAME there is refused unless
  ``takeover=True`` (then the marker is created and the records adopted).

No AliDNS server can run here: the tests drive :class:`AliDnsClient` against a
loopback server (``tests/fakes/alidns_api.py``) that verifies every request's v1
signature with the official SDK's signer and answers in AliDNS's JSON format.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from xplane.config.models import AliDnsConfig
from xplane.dns import ratelimit
from xplane.dns.alidns_signing import signed_params
from xplane.dns.base import (
    ApplyResult,
    DesiredService,
    DnsAuthError,
    DnsChange,
    DnsError,
    DnsOwnershipError,
    DnsPlan,
    DnsProvider,
    DnsRetryableError,
    DnsValidationError,
    check_safety,
    ownership_value,
    read_secret,
)

_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "IncompleteSignature")
_RETRYABLE_CODES = ("Throttling", "ServiceUnavailable", "InternalError", "UnknownError")
_MAX_PAGES = 1000  # a runaway paginator stops here instead of looping forever


# ---------------------------------------------------------------------- client
class AliDnsClient:
    """A minimal AliDNS RPC client: signs (v1 HMAC-SHA1), POSTs, classifies errors."""

    def __init__(
        self,
        endpoint: str,
        access_key_id: str,
        access_key_secret: str,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._endpoint = endpoint.rstrip("/") + "/"
        self._key_id = access_key_id
        self._secret = access_key_secret
        self._http = httpx.Client(timeout=timeout)
        self.bucket = ratelimit.limiter("alidns", ratelimit.account_key(endpoint, access_key_id))

    def close(self) -> None:
        self._http.close()

    def call(self, action: str, **params: str | int) -> dict[str, Any]:
        """One API call; returns the JSON answer or raises a classified :class:`DnsError`."""
        body = signed_params(
            action,
            {k: str(v) for k, v in params.items()},
            self._key_id,
            self._secret,
            method="POST",
        )
        self.bucket.acquire()
        try:
            response = self._http.post(self._endpoint, data=body)
        except httpx.TransportError as err:
            raise DnsRetryableError(f"alidns: {action}: {type(err).__name__}: {err}") from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status_code != 200:
            error = classify_error(action, response.status_code, answer)
            if response.status_code == 429 or str(answer.get("Code", "")).startswith("Throttling"):
                retry_after = ratelimit.parse_retry_after(response.headers.get("retry-after"))
                raise ratelimit.throttled(self.bucket, str(error), retry_after)
            raise error
        return answer


def classify_error(action: str, status: int, answer: dict[str, Any]) -> DnsError:
    """Map an AliDNS error answer to the DNS error classes (what the activity retries)."""
    code = str(answer.get("Code", "")) or f"HTTP{status}"
    message = f"alidns: {action}: {code}: {answer.get('Message', '')}".rstrip(": ")
    if answer.get("RequestId"):
        message += f" (RequestId {answer['RequestId']})"
    if code.startswith(_RETRYABLE_CODES) or status >= 500 or status == 429:
        return DnsRetryableError(message)
    if code.startswith(_AUTH_CODES) or status in (401, 403):
        return DnsAuthError(message)
    return DnsValidationError(message)


# ----------------------------------------------------------------- data + pure
class AliRecord(BaseModel):
    """One record as DescribeDomainRecords lists it (fields XPlane reads)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    record_id: str = Field(alias="RecordId")
    rr: str = Field(alias="RR")
    type: str = Field(alias="Type")
    value: str = Field(alias="Value")
    ttl: int = Field(default=600, alias="TTL")
    line: str = Field(default="default", alias="Line")
    status: str = Field(default="ENABLE", alias="Status")
    weight: int | None = Field(default=None, alias="Weight")


class WantedRecord(BaseModel):
    type: str
    value: str
    enabled: bool
    weight: int  # 1..100, meaningful only while the type's SLB is needed


def relative_rr(name: str, zone: str) -> str:
    """``api.svc.plus`` in ``svc.plus`` -> ``api``; the apex -> ``@``."""
    if name == zone:
        return "@"
    if not name.endswith("." + zone):
        raise DnsValidationError(f"alidns: {name} is not inside zone {zone}")
    return name[: -len(zone) - 1]


def record_type(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


def quantise_weights(weights: dict[str, float]) -> dict[str, int]:
    """Proportional 1..100 integers: the heaviest gets 100, nothing positive rounds to 0."""
    top = max(weights.values(), default=0.0)
    if top <= 0:
        return {key: 1 for key in weights}
    return {key: min(100, max(1, round(100 * w / top))) for key, w in weights.items()}


def wanted_records(desired: DesiredService, allowed_types: set[str]) -> list[WantedRecord]:
    """Every address of ``desired`` as a record: enabled with its quantised weight, or
    disabled (its region or node is at weight 0)."""
    enabled: dict[tuple[str, str], float] = {}
    disabled: set[tuple[str, str]] = set()
    for region in desired.regions:
        for endpoint in region.endpoints:
            key = (record_type(endpoint.address), endpoint.address)
            if key[0] not in allowed_types:
                continue
            if region.weight > 0 and endpoint.weight > 0:
                enabled[key] = enabled.get(key, 0.0) + endpoint.weight
            else:
                disabled.add(key)
    out: list[WantedRecord] = []
    for rtype in sorted(allowed_types):
        of_type = {value: w for (t, value), w in enabled.items() if t == rtype}
        for value, weight in sorted(quantise_weights(of_type).items()):
            out.append(WantedRecord(type=rtype, value=value, enabled=True, weight=weight))
    out.extend(
        WantedRecord(type=t, value=v, enabled=False, weight=1)
        for t, v in sorted(disabled - set(enabled))
    )
    return out


def _snapshot(record: AliRecord) -> dict[str, Any]:
    return record.model_dump(exclude={"rr", "line"})


def diff_records(
    wanted: list[WantedRecord],
    owned: list[AliRecord],
    slb_open: dict[str, bool],
    ttl: int,
) -> list[DnsChange]:
    """Changes turning ``owned`` (records XPlane owns at the RR/line) into ``wanted``.

    Pure. ``slb_open`` maps record type -> whether weighting is on at AliDNS.
    """
    changes: list[DnsChange] = []
    by_key: dict[tuple[str, str], AliRecord] = {}
    for record in owned:
        key = (record.type, record.value)
        if key in by_key:  # a duplicate of a record already matched: drop it
            changes.append(
                DnsChange(action="delete", key=f"{key[0]} {key[1]}", before=_snapshot(record))
            )
        else:
            by_key[key] = record
    enabled_count: dict[str, int] = {}
    for want in wanted:
        if want.enabled:
            enabled_count[want.type] = enabled_count.get(want.type, 0) + 1
    for rtype in sorted(enabled_count):
        if enabled_count[rtype] > 1 and not slb_open.get(rtype, False):
            changes.append(DnsChange(action="update", key=f"SLB {rtype}", before=False, after=True))
    for want in wanted:
        key = (want.type, want.value)
        weighted = enabled_count.get(want.type, 0) > 1
        after: dict[str, Any] = {
            "type": want.type,
            "value": want.value,
            "ttl": ttl,
            "status": "ENABLE" if want.enabled else "DISABLE",
            "weight": want.weight if weighted and want.enabled else None,
        }
        current = by_key.pop(key, None)
        if current is None:
            if want.enabled:  # a disabled record that does not exist stays absent
                changes.append(DnsChange(action="create", key=f"{key[0]} {key[1]}", after=after))
            continue
        after["record_id"] = current.record_id
        differs = (
            current.ttl != ttl
            or current.status != after["status"]
            or (after["weight"] is not None and current.weight != after["weight"])
        )
        if differs:
            changes.append(
                DnsChange(
                    action="update",
                    key=f"{key[0]} {key[1]}",
                    before=_snapshot(current),
                    after=after,
                )
            )
    for key, record in sorted(by_key.items()):
        changes.append(
            DnsChange(action="delete", key=f"{key[0]} {key[1]}", before=_snapshot(record))
        )
    return changes


def is_weight_only(change: DnsChange) -> bool:
    """An update that only re-weighs a live record (or turns weighting on)."""
    if change.key.startswith("SLB "):
        return True
    if change.action != "update" or not isinstance(change.before, dict):
        return False
    before, after = change.before, change.after
    return before["ttl"] == after["ttl"] and before["status"] == after["status"]


def safety_view(plan: DnsPlan) -> DnsPlan:
    """The plan as the safety threshold sees it: without weight-only updates.

    Shifting weights between live records is the GTM loop's everyday job (a failing
    region moves its share to all others at once); the threshold guards against
    records appearing, disappearing or being disabled en masse.
    """
    kept = [c for c in plan.changes if not is_weight_only(c)]
    return plan.model_copy(update={"changes": kept})


# -------------------------------------------------------------------- provider
class AliDns(DnsProvider):
    kind = "alidns"

    def __init__(
        self,
        config: AliDnsConfig,
        *,
        client: AliDnsClient | None = None,
        page_size: int = 100,
    ) -> None:
        self.config = config
        self.page_size = page_size
        self._client = client or AliDnsClient(
            config.endpoint,
            read_secret(config.access_key_id_env),
            read_secret(config.access_key_secret_env),
        )

    # ------------------------------------------------------------------ reads
    def _records(self, zone: str, rr: str) -> list[AliRecord]:
        """Every record at exactly ``rr`` (RRKeyWord is a substring match: filter here)."""
        found: list[AliRecord] = []
        for page in range(1, _MAX_PAGES + 1):
            answer = self._client.call(
                "DescribeDomainRecords",
                DomainName=zone,
                RRKeyWord=rr,
                PageNumber=page,
                PageSize=self.page_size,
            )
            batch = (answer.get("DomainRecords") or {}).get("Record") or []
            found.extend(AliRecord.model_validate(r) for r in batch)
            total = int(answer.get("TotalCount", 0))
            if not batch or page * self.page_size >= total:
                break
        return [r for r in found if r.rr == rr]

    def _slb_open(self, zone: str, rr: str, name: str) -> dict[str, bool]:
        """Whether weighting is on, by record type, for ``name`` on the configured line."""
        answer = self._client.call(
            "DescribeDNSSLBSubDomains", DomainName=zone, Rr=rr, PageNumber=1, PageSize=100
        )
        entries = (answer.get("SlbSubDomains") or {}).get("SlbSubDomain") or []
        return {
            str(e.get("Type")): bool(e.get("Open"))
            for e in entries
            if e.get("SubDomain") == name and e.get("Line", "default") == self.config.line
        }

    # ------------------------------------------------------------------- plan
    def plan(self, desired: DesiredService, *, takeover: bool = False) -> DnsPlan:
        cfg = self.config
        zone = cfg.zone or desired.zone
        rr = relative_rr(desired.name, zone)
        if cfg.regions is not None:
            desired = desired.model_copy(
                update={"regions": [r for r in desired.regions if r.region in cfg.regions]}
            )
        types: set[str] = {"A", "AAAA"} if cfg.record_type == "auto" else {cfg.record_type}
        marker = ownership_value(desired.owner_id, desired.service)
        on_line = [r for r in self._records(zone, rr) if r.line == cfg.line]
        has_marker = any(r.type == "TXT" and r.value.strip('"') == marker for r in on_line)
        addresses = [r for r in on_line if r.type in ("A", "AAAA")]
        cnames = [r for r in on_line if r.type == "CNAME"]
        changes: list[DnsChange] = []
        if not has_marker:
            foreign = addresses + cnames
            if foreign and not takeover:
                listed = ", ".join(f"{r.type} {r.value}" for r in foreign)
                raise DnsOwnershipError(
                    f"alidns: {desired.name} (line {cfg.line}) has records XPlane does not own "
                    f"({listed}) and no ownership TXT {marker!r}; use takeover to adopt them"
                )
            changes.append(DnsChange(action="create", key="TXT owner", after={"value": marker}))
            changes.extend(
                DnsChange(action="delete", key=f"CNAME {r.value}", before=_snapshot(r))
                for r in cnames
            )
        owned = [r for r in addresses if r.type in types]
        wanted = wanted_records(desired, types)
        changes.extend(
            diff_records(wanted, owned, self._slb_open(zone, rr, desired.name), desired.ttl)
        )
        live_before = any(r.status == "ENABLE" for r in owned)
        return DnsPlan(
            provider=self.kind,
            service=desired.service,
            name=desired.name,
            changes=changes,
            owned_record_sets=len(owned) if has_marker else 0,
            removes_all_addresses=live_before and not any(w.enabled for w in wanted),
            addresses_before=sorted({r.value for r in owned if r.status == "ENABLE"})
            if has_marker
            else [],
            addresses_after=sorted({w.value for w in wanted if w.enabled}),
            context={"zone": zone, "rr": rr, "line": cfg.line, "ttl": desired.ttl},
        )

    # ------------------------------------------------------------------ apply
    def apply(self, plan: DnsPlan, *, force: bool = False) -> ApplyResult:
        check_safety(safety_view(plan), self.config.max_change_fraction, force)
        if plan.empty:
            return ApplyResult(provider=self.kind, name=plan.name, applied=False)
        writes = 0
        ctx = plan.context

        def write(action: str, **params: str | int) -> dict[str, Any]:
            nonlocal writes
            writes += 1
            return self._client.call(action, **params)

        def add(rtype: str, value: str) -> str:
            answer = write(
                "AddDomainRecord",
                DomainName=ctx["zone"],
                RR=ctx["rr"],
                Type=rtype,
                Value=value,
                TTL=ctx["ttl"],
                Line=ctx["line"],
            )
            return str(answer["RecordId"])

        # Order: a taken-over CNAME goes first (it excludes every other record), then
        # claim ownership, add and enable, turn weighting on and weigh, disable, and
        # delete last, so the name keeps answering while it changes.
        phases: list[list[DnsChange]] = [[] for _ in range(6)]
        cnames, owner, live, slb, disable, delete = phases
        for change in plan.changes:
            if change.key.startswith("CNAME "):
                cnames.append(change)
            elif change.key == "TXT owner":
                owner.append(change)
            elif change.key.startswith("SLB "):
                slb.append(change)
            elif change.action == "delete":
                delete.append(change)
            elif change.action == "update" and change.after["status"] == "DISABLE":
                disable.append(change)
            else:
                live.append(change)
        for change in cnames:
            write("DeleteDomainRecord", RecordId=change.before["record_id"])
        for change in owner:
            add("TXT", change.after["value"])
        weights: list[tuple[str, int]] = []
        for change in live:
            after = change.after
            if change.action == "create":
                record_id = add(after["type"], after["value"])
            else:
                record_id = after["record_id"]
                self._update_record(write, change, ctx)
            if after["weight"] is not None and (
                change.action == "create" or change.before.get("weight") != after["weight"]
            ):
                weights.append((record_id, after["weight"]))
        for change in slb:
            params: dict[str, str | int] = {
                "DomainName": ctx["zone"],
                "SubDomain": plan.name,
                "Type": change.key.split()[1],
                "Open": "true",
            }
            if ctx["line"] != "default":
                params["Line"] = ctx["line"]
            write("SetDNSSLBStatus", **params)
        for record_id, weight in weights:  # only once weighting is on (the API insists)
            write("UpdateDNSSLBWeight", RecordId=record_id, Weight=weight)
        for change in disable:
            self._update_record(write, change, ctx)
        for change in delete:
            write("DeleteDomainRecord", RecordId=change.before["record_id"])
        return ApplyResult(
            provider=self.kind,
            name=plan.name,
            applied=True,
            write_calls=writes,
            changes=plan.changes,
        )

    @staticmethod
    def _update_record(write: Any, change: DnsChange, ctx: dict[str, Any]) -> None:
        """TTL and status of an existing record (its weight is written separately)."""
        before, after = change.before, change.after
        if before["ttl"] != after["ttl"]:
            write(
                "UpdateDomainRecord",
                RecordId=after["record_id"],
                RR=ctx["rr"],
                Type=after["type"],
                Value=after["value"],
                TTL=after["ttl"],
                Line=ctx["line"],
            )
        if before["status"] != after["status"]:
            status = "Enable" if after["status"] == "ENABLE" else "Disable"
            write("SetDomainRecordStatus", RecordId=after["record_id"], Status=status)
