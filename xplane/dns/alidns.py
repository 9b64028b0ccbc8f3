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
* Ownership: a TXT record at the same RR and line whose value is the ownership
  value (the TXT registry of :mod:`xplane.dns.plan`). With the marker every A/AAAA
  record on that line at that RR is XPlane's; without it any A/AAAA/CNAME there is
  refused unless ``takeover=True`` (then the marker is created and the records adopted).

No AliDNS server can run here: the tests drive :class:`AliDnsClient` against a
loopback server (``tests/fakes/alidns_api.py``) that verifies every request's v1
signature with the official SDK's signer and answers in AliDNS's JSON format.
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from xplane.config.models import AliDnsConfig
from xplane.dns import ratelimit
from xplane.dns.alidns_signing import signed_params
from xplane.dns.base import api_error, read_secret, unreachable
from xplane.dns.plan import (
    Capabilities,
    Current,
    DesiredService,
    DnsChange,
    DnsError,
    DnsPlan,
    DnsProvider,
    DnsValidationError,
    RecordSet,
    endpoint_weights,
    ownership_value,
    quantise,
    registry,
    resting_addresses,
    wanted_types,
)

_AUTH_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "IncompleteSignature")
_RETRYABLE_CODES = ("ServiceUnavailable", "InternalError", "UnknownError")
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
        self.writes = 0  # calls that write (all but Describe*)

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
        self.writes += not action.startswith("Describe")
        try:
            response = self._http.post(self._endpoint, data=body)
        except httpx.TransportError as err:
            raise unreachable(f"alidns: {action}", err) from None
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        answer = answer if isinstance(answer, dict) else {}
        if response.status_code != 200:
            retry_after = response.headers.get("retry-after")
            raise classify_error(action, response.status_code, answer, self.bucket, retry_after)
        return answer


def classify_error(
    action: str,
    status: int,
    answer: dict[str, Any],
    bucket: ratelimit.RateLimiter | None = None,
    retry_after: str | None = None,
) -> DnsError:
    """An AliDNS error answer as a DNS error (what the activity retries)."""
    code = str(answer.get("Code", "")) or f"HTTP{status}"
    message = f"alidns: {action}: {code}: {answer.get('Message', '')}".rstrip(": ")
    if answer.get("RequestId"):
        message += f" (RequestId {answer['RequestId']})"
    return api_error(
        message,
        status,
        code,
        bucket=bucket,
        retry_after=retry_after,
        retryable=_RETRYABLE_CODES,
        auth=_AUTH_CODES,
    )


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


def relative_rr(name: str, zone: str) -> str:
    """``api.svc.plus`` in ``svc.plus`` -> ``api``; the apex -> ``@``."""
    if name == zone:
        return "@"
    if not name.endswith("." + zone):
        raise DnsValidationError(f"alidns: {name} is not inside zone {zone}")
    return name[: -len(zone) - 1]


def record(
    rtype: str,
    value: str,
    ttl: int,
    status: str,
    weight: int | None,
    owned: bool | None = True,
    native: dict[str, Any] | None = None,
) -> RecordSet:
    """One A/AAAA record; its weight is compared only where one is wanted (weighting on)."""
    native = native or {"type": rtype, "value": value, "ttl": ttl, "status": status}
    native.setdefault("weight", weight)
    return RecordSet(
        f"{rtype} {value}",
        rtype,
        {"ttl": ttl, "status": status},
        {"weight": weight} if weight is not None else {},
        [value] if status == "ENABLE" else [],
        owned,
        status == "ENABLE",
        native,
    )


# -------------------------------------------------------------------- provider
class AliDns(DnsProvider):
    """On the configured line (``default``, ``oversea``, ...) one record per address."""

    kind = "alidns"
    config: AliDnsConfig
    # DNS SLB weights are 1..100; a region at 0 keeps its records, disabled.
    capabilities = Capabilities(max_weight=100, weights="address", disables=True)

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

    def read(self, desired: DesiredService) -> Current:
        line, rr = self.config.line, relative_rr(desired.name, desired.zone)
        on_line = [r for r in self._records(desired.zone, rr) if r.line == line]
        marker = ownership_value(desired.owner_id, desired.service)
        owners = registry((r.value.strip('"') for r in on_line if r.type == "TXT"), marker)
        types = wanted_types(self.config.record_type)
        sets = [
            record(r.type, r.value, r.ttl, r.status, r.weight, owners.owned and r.type in types,
                   r.model_dump(exclude={"rr", "line"}))
            for r in on_line
            if r.type in types or (r.type == "CNAME" and not owners.owned)
        ]  # fmt: skip
        if owners.owned:
            sets.append(RecordSet("TXT owner", "TXT", {"value": marker}, owned=None))
        # Weighting is switched on per sub-domain, line and type (off until it is).
        answer = self._client.call(
            "DescribeDNSSLBSubDomains", DomainName=desired.zone, Rr=rr, PageNumber=1, PageSize=100
        )
        slb = {
            str(e.get("Type")): bool(e.get("Open"))
            for e in (answer.get("SlbSubDomains") or {}).get("SlbSubDomain") or []
            if e.get("SubDomain") == desired.name and e.get("Line", "default") == line
        }
        for rtype in types:
            sets.append(RecordSet(f"SLB {rtype}", "SLB", owned=None))
            sets[-1].weights = {"open": slb.get(rtype, False)}
        context = {"zone": desired.zone, "rr": rr, "line": line, "ttl": desired.ttl}
        return Current(sets, owners.others, context)

    def wanted(self, desired: DesiredService, current: Current) -> list[RecordSet]:
        """Every address as a record: enabled with its weight (quantised per type, written
        while two or more of the type are enabled) or disabled (region or node at 0)."""
        marker = ownership_value(desired.owner_id, desired.service)
        out = [RecordSet("TXT owner", "TXT", {"value": marker}, owned=None)]
        enabled: set[str] = set()
        for rtype, weights in endpoint_weights(desired, self.config.record_type).items():
            slb = len(weights) > 1
            out.append(RecordSet(f"SLB {rtype}", "SLB", weights={"open": True} if slb else {}))
            for value, weight in sorted(quantise(weights, self.capabilities.max_weight).items()):
                out.append(record(rtype, value, desired.ttl, "ENABLE", weight if slb else None))
                enabled.add(value)
        for rtype, values in resting_addresses(desired, self.config.record_type).items():
            out += [record(rtype, value, desired.ttl, "DISABLE", None) for value in values]
        return out

    def write(self, plan: DnsPlan) -> int:
        """A taken-over CNAME goes first (it excludes every other record), then claim
        ownership, add and enable, turn weighting on and weigh, disable, and delete
        last, so the name keeps answering while it changes."""
        ctx, writes = plan.context, self._client.writes
        at = {"DomainName": ctx["zone"], "RR": ctx["rr"], "Line": ctx["line"]}
        weights: list[tuple[str, int]] = []  # written once weighting is on (the API insists)
        for change in sorted(plan.changes, key=_phase):
            if _phase(change) >= 5:
                self._weigh(weights)
            before, after = change.before or {}, change.after or {}
            if change.action == "delete":
                self._client.call("DeleteDomainRecord", RecordId=before["record_id"])
            elif change.key == "TXT owner":
                value = after["value"]
                self._client.call("AddDomainRecord", Type="TXT", Value=value, TTL=ctx["ttl"], **at)
            elif change.key.startswith("SLB "):
                line = {"Line": ctx["line"]} if ctx["line"] != "default" else {}
                self._client.call(
                    "SetDNSSLBStatus",
                    DomainName=ctx["zone"],
                    SubDomain=plan.name,
                    Type=change.key.split()[1],
                    Open="true",
                    **line,
                )
            elif change.action == "create":
                new = {"Type": after["type"], "Value": after["value"], "TTL": after["ttl"]}
                record_id = str(self._client.call("AddDomainRecord", **new, **at)["RecordId"])
                weights += [(record_id, after["weight"])] if after["weight"] is not None else []
            else:
                record_id = before["record_id"]
                if before["ttl"] != after["ttl"]:
                    new = {"Type": after["type"], "Value": after["value"], "TTL": after["ttl"]}
                    rr = {"RR": ctx["rr"], "Line": ctx["line"]}
                    self._client.call("UpdateDomainRecord", RecordId=record_id, **new, **rr)
                if before["status"] != after["status"]:
                    status = "Enable" if after["status"] == "ENABLE" else "Disable"
                    self._client.call("SetDomainRecordStatus", RecordId=record_id, Status=status)
                if after["weight"] is not None and before.get("weight") != after["weight"]:
                    weights.append((record_id, after["weight"]))
        self._weigh(weights)
        return self._client.writes - writes

    def _weigh(self, weights: list[tuple[str, int]]) -> None:
        for record_id, weight in weights:
            self._client.call("UpdateDNSSLBWeight", RecordId=record_id, Weight=weight)
        weights.clear()


def _phase(change: DnsChange) -> int:
    kind = change.key.split()[0]
    if kind in ("CNAME", "TXT", "SLB"):
        return {"CNAME": 0, "TXT": 1, "SLB": 3}[kind]
    if change.action == "delete":
        return 6
    return 5 if change.after["status"] == "DISABLE" else 2
