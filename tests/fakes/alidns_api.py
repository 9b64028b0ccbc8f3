"""A loopback AliDNS (RPC API 2015-01-09) that checks every request's v1 signature.

The signature is recomputed with the official ``aliyun-python-sdk-core`` signer
(its ``rpc_signature_composer``), i.e. independently of ``xplane.dns.alidns_signing``.
State lives in :class:`AliDnsState`; answers have AliDNS's shape (``RequestId``,
``DomainRecords.Record``, ``TotalCount``/``PageNumber``/``PageSize``) and errors
are ``{Code, Message, RequestId}`` with the matching HTTP status.

Actions: DescribeDomainRecords (RRKeyWord substring match like the real API,
TypeKeyWord, paging), AddDomainRecord, UpdateDomainRecord, DeleteDomainRecord,
SetDomainRecordStatus, DescribeDNSSLBSubDomains, SetDNSSLBStatus,
UpdateDNSSLBWeight (1-100, refused until weighting is open for the sub-domain).
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from aliyunsdkcore.auth.composer import rpc_signature_composer as sdk_signer

from tests.fakes import LoopbackServer

_compose = getattr(sdk_signer, "__compose_string_to_sign")
_signature = getattr(sdk_signer, "__get_signature")

WRITE_ACTIONS = {
    "AddDomainRecord",
    "UpdateDomainRecord",
    "DeleteDomainRecord",
    "SetDomainRecordStatus",
    "SetDNSSLBStatus",
    "UpdateDNSSLBWeight",
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class AliDnsState:
    keys: dict[str, str]  # AccessKeyId -> secret
    domains: set[str]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    slb: dict[tuple[str, str, str], bool] = field(default_factory=dict)  # (sub, type, line)
    writes: int = 0
    calls: list[str] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)
    throttle_next: int = 0  # answer the next N calls with Throttling.User
    throttle_status: int = 400  # what AliDNS sends with it (gateways in front may send 429)
    throttle_retry_after: str | None = None  # a Retry-After header on throttled answers
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))

    def add(self, domain: str, rr: str, rtype: str, value: str, **extra: Any) -> str:
        """Seed a record directly (what another tool or a human created)."""
        record_id = str(next(self._ids))
        self.records[record_id] = {
            "RecordId": record_id,
            "DomainName": domain,
            "RR": rr,
            "Type": rtype,
            "Value": value,
            "TTL": int(extra.get("TTL", 600)),
            "Line": extra.get("Line", "default"),
            "Status": extra.get("Status", "ENABLE"),
            "Weight": int(extra.get("Weight", 1)),
            "Locked": False,
        }
        return record_id

    def at(self, rr: str, rtype: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r["RR"] == rr and rtype in (None, r["Type"])]


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeAliDNS/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        state: AliDnsState = self.server.state  # type: ignore[attr-defined]
        params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            body = self.rfile.read(length).decode()
            params.update(parse_qsl(body, keep_blank_values=True))
        request_id = str(uuid.uuid4()).upper()
        try:
            with state.lock:
                answer = _dispatch(state, method, params)
            status = 200
        except ApiError as err:
            answer = {"Code": err.code, "Message": err.message}
            status = err.status
        answer["RequestId"] = request_id
        data = json.dumps(answer).encode()
        self.send_response(status)
        if answer.get("Code") == "Throttling.User" and state.throttle_retry_after is not None:
            self.send_header("Retry-After", state.throttle_retry_after)
        self.send_header("Content-Type", "application/json;charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _verify(state: AliDnsState, method: str, params: dict[str, str]) -> None:
    for name in ("AccessKeyId", "Signature", "SignatureNonce", "Timestamp", "Version"):
        if not params.get(name):
            raise ApiError(400, "MissingParameter", f"The input parameter {name} is mandatory.")
    if params.get("SignatureMethod") != "HMAC-SHA1" or params.get("SignatureVersion") != "1.0":
        raise ApiError(400, "InvalidParameter", "SignatureMethod/SignatureVersion not supported.")
    secret = state.keys.get(params["AccessKeyId"])
    if secret is None:
        raise ApiError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
    unsigned = {k: v for k, v in params.items() if k != "Signature"}
    expected = _signature(_compose(method, unsigned), secret)
    if expected != params["Signature"]:
        raise ApiError(
            400,
            "SignatureDoesNotMatch",
            "Specified signature is not matched with our calculation.",
        )
    if params["SignatureNonce"] in state.nonces:
        raise ApiError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")
    state.nonces.add(params["SignatureNonce"])


def _record(state: AliDnsState, params: dict[str, str]) -> dict[str, Any]:
    record = state.records.get(params.get("RecordId", ""))
    if record is None:
        raise ApiError(400, "DomainRecordNotBelongToUser", "The DNS record does not exist.")
    return record


def _check_value(rtype: str, value: str) -> None:
    import ipaddress

    if rtype in ("A", "AAAA"):
        try:
            version: int = ipaddress.ip_address(value).version
        except ValueError:
            version = 0
        if version != (4 if rtype == "A" else 6):
            raise ApiError(400, "InvalidValue", f"The {rtype} record value {value} is invalid.")


def _dispatch(state: AliDnsState, method: str, p: dict[str, str]) -> dict[str, Any]:
    _verify(state, method, p)
    action = p.get("Action", "")
    state.calls.append(action)
    if state.throttle_next > 0:
        state.throttle_next -= 1
        raise ApiError(
            state.throttle_status,
            "Throttling.User",
            "Request was denied due to user flow control.",
        )
    if action in WRITE_ACTIONS:
        state.writes += 1
    handler = _ACTIONS.get(action)
    if handler is None:
        raise ApiError(400, "InvalidAction.NotFound", f"Specified api {action} is not found.")
    return handler(state, p)


def _describe(state: AliDnsState, p: dict[str, str]) -> dict[str, Any]:
    domain = p.get("DomainName", "")
    if domain not in state.domains:
        raise ApiError(400, "InvalidDomainName.NoExist", f"The domain {domain} does not exist.")
    page, size = int(p.get("PageNumber", 1)), int(p.get("PageSize", 20))
    if not 1 <= size <= 500:
        raise ApiError(400, "InvalidPageSize", "PageSize must be between 1 and 500.")
    rows = [
        r
        for r in sorted(state.records.values(), key=lambda r: int(r["RecordId"]))
        if r["DomainName"] == domain
        and p.get("RRKeyWord", "") in r["RR"]  # substring, as the real API does
        and p.get("TypeKeyWord", r["Type"]) == r["Type"]
    ]
    chunk = rows[(page - 1) * size : page * size]
    return {
        "TotalCount": len(rows),
        "PageNumber": page,
        "PageSize": size,
        "DomainRecords": {"Record": [dict(r) for r in chunk]},
    }


def _add(state: AliDnsState, p: dict[str, str]) -> dict[str, Any]:
    if p.get("DomainName") not in state.domains:
        raise ApiError(400, "InvalidDomainName.NoExist", "The domain does not exist.")
    _check_value(p["Type"], p["Value"])
    line = p.get("Line", "default")
    for r in state.at(p["RR"]):
        if r["Line"] != line or r["DomainName"] != p["DomainName"]:
            continue
        if "CNAME" in (r["Type"], p["Type"]):  # a CNAME excludes other records on its line
            raise ApiError(400, "DomainRecordConflict", "The DNS record conflicts with others.")
        if r["Type"] == p["Type"] and r["Value"] == p["Value"]:
            raise ApiError(400, "DomainRecordDuplicate", "The DNS record already exists.")
    record_id = state.add(
        p["DomainName"], p["RR"], p["Type"], p["Value"], TTL=p.get("TTL", 600), Line=line
    )
    return {"RecordId": record_id}


def _update(state: AliDnsState, p: dict[str, str]) -> dict[str, Any]:
    record = _record(state, p)
    _check_value(p["Type"], p["Value"])
    new = {
        "RR": p["RR"],
        "Type": p["Type"],
        "Value": p["Value"],
        "TTL": int(p.get("TTL", record["TTL"])),
        "Line": p.get("Line", record["Line"]),
    }
    if all(record[k] == v for k, v in new.items()):
        raise ApiError(400, "DomainRecordDuplicate", "The DNS record already exists.")
    record.update(new)
    return {"RecordId": record["RecordId"]}


def _delete(state: AliDnsState, p: dict[str, str]) -> dict[str, Any]:
    record = _record(state, p)
    del state.records[record["RecordId"]]
    return {"RecordId": record["RecordId"]}


def _status(state: AliDnsState, p: dict[str, str]) -> dict[str, Any]:
    record = _record(state, p)
    if p.get("Status") not in ("Enable", "Disable"):
        raise ApiError(400, "InvalidStatus", "Status must be Enable or Disable.")
    record["Status"] = p["Status"].upper()
    return {"RecordId": record["RecordId"], "Status": p["Status"]}


def _fqdn(record: dict[str, Any]) -> str:
    rr, domain = record["RR"], record["DomainName"]
    return domain if rr == "@" else f"{rr}.{domain}"


def _slb_list(state: AliDnsState, p: dict[str, str]) -> dict[str, Any]:
    groups: dict[tuple[str, str, str], int] = {}
    for r in state.records.values():
        if r["DomainName"] != p.get("DomainName") or r["Type"] not in ("A", "AAAA"):
            continue
        if p.get("Rr") and r["RR"] != p["Rr"]:
            continue
        key = (_fqdn(r), r["Type"], r["Line"])
        groups[key] = groups.get(key, 0) + 1
    entries = [
        {
            "SubDomain": sub,
            "Type": t,
            "Line": line,
            "RecordCount": n,
            "Open": state.slb.get((sub, t, line), False),
        }
        for (sub, t, line), n in sorted(groups.items())
    ]
    return {
        "TotalCount": len(entries),
        "PageNumber": 1,
        "PageSize": len(entries),
        "SlbSubDomains": {"SlbSubDomain": entries},
    }


def _slb_set(state: AliDnsState, p: dict[str, str]) -> dict[str, Any]:
    key = (p["SubDomain"], p.get("Type", "A"), p.get("Line", "default"))
    state.slb[key] = p.get("Open", "true").lower() == "true"
    return {"Open": state.slb[key], "RecordCount": 0}


def _weight(state: AliDnsState, p: dict[str, str]) -> dict[str, Any]:
    record = _record(state, p)
    weight = int(p.get("Weight", 0))
    if not 1 <= weight <= 100:
        raise ApiError(400, "InvalidWeight", f"Weight must be 1-100, not {weight}.")
    if not state.slb.get((_fqdn(record), record["Type"], record["Line"]), False):
        raise ApiError(400, "DnsSLBNotOpen", "Weighted round-robin is not enabled for the record.")
    record["Weight"] = weight
    return {"RecordId": record["RecordId"]}


_ACTIONS = {
    "DescribeDomainRecords": _describe,
    "AddDomainRecord": _add,
    "UpdateDomainRecord": _update,
    "DeleteDomainRecord": _delete,
    "SetDomainRecordStatus": _status,
    "DescribeDNSSLBSubDomains": _slb_list,
    "SetDNSSLBStatus": _slb_set,
    "UpdateDNSSLBWeight": _weight,
}


def start(state: AliDnsState) -> LoopbackServer:
    return LoopbackServer(_Handler, state).start()
