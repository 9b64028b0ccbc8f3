"""A loopback Cloudflare API v4 for the official ``cloudflare`` SDK (``base_url`` points here).

It speaks the documented envelope ``{"success", "errors", "messages", "result",
"result_info": {page, per_page, count, total_count, total_pages}}`` for:

* ``GET /zones?name=``
* ``GET/POST /zones/{z}/dns_records`` (filters ``name``/``name.exact``, ``type``,
  ``page``, ``per_page``) and ``PUT/PATCH/DELETE /zones/{z}/dns_records/{id}``
* ``GET/POST /accounts/{a}/load_balancers/pools`` and ``GET/PUT .../pools/{id}``
* ``GET/POST /zones/{z}/load_balancers`` and ``GET/PUT .../load_balancers/{id}``

Every request needs ``Authorization: Bearer <token>`` (401 envelope otherwise).
Validation answers 400 with Cloudflare's error codes (TTL, addresses, A/CNAME
conflicts, pools and load balancers that reference unknown pools). Faults can be
queued: ``fail_next(429)`` (with ``Retry-After: 1``, or ``retry_after=N``; ``None``
sends none; like Cloudflare, every call before that time is answered 429 too and
counted in ``early_calls``) or ``success_false_next("...")`` (HTTP 200 with
``success: false``, which the SDK turns into ``None`` without raising).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes import LoopbackServer

PREFIX = "/client/v4"
NOW = "2024-05-01T12:00:00.000000Z"


class ApiError(Exception):
    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class CloudflareState:
    token: str
    zones: dict[str, str]  # zone id -> name
    account_id: str = "acc0001"
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    pools: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_balancers: dict[str, dict[str, Any]] = field(default_factory=dict)
    writes: int = 0
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    # queued (status, message, Retry-After header of a 429)
    faults: list[tuple[int, str, str | None]] = field(default_factory=list)
    max_per_page: int = 5000
    blocked_until: float = 0.0  # monotonic time a 429's Retry-After runs out
    early_calls: int = 0  # calls made before it did
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_id(self) -> str:
        return f"{next(self._ids):032x}"

    def fail_next(
        self, status: int = 429, message: str = "Rate limited", retry_after: float | None = 1
    ) -> None:
        self.faults.append((status, message, None if retry_after is None else f"{retry_after:g}"))

    def success_false_next(self, message: str = "Internal error") -> None:
        self.faults.append((200, message, None))

    def add_record(self, zone_id: str, name: str, rtype: str, content: str, **extra: Any) -> str:
        """Seed a record directly (made by someone else)."""
        record_id = self.new_id()
        self.records[record_id] = _record(
            record_id,
            zone_id,
            self.zones[zone_id],
            {
                "name": name,
                "type": rtype,
                "content": content,
                **extra,
            },
        )
        return record_id

    def at(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records.values() if r["name"] == name]


def _record(record_id: str, zone_id: str, zone: str, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record_id,
        "zone_id": zone_id,
        "zone_name": zone,
        "name": body["name"],
        "type": body["type"],
        "content": body["content"],
        "ttl": int(body.get("ttl", 1)),
        "proxied": bool(body.get("proxied", False)),
        "proxiable": body["type"] in ("A", "AAAA", "CNAME"),
        "comment": body.get("comment"),
        "tags": list(body.get("tags") or []),
        "settings": {},
        "meta": {},
        "created_on": NOW,
        "modified_on": NOW,
    }


def _envelope(result: Any, info: dict[str, int] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if info is not None:
        body["result_info"] = info
    return body


def _page(items: list[Any], query: dict[str, str], default_per_page: int, cap: int) -> dict:
    page = max(1, int(query.get("page", 1)))
    per_page = min(cap, max(1, int(query.get("per_page", default_per_page))))
    chunk = items[(page - 1) * per_page : page * per_page]
    total_pages = (len(items) + per_page - 1) // per_page
    info = {
        "page": page,
        "per_page": per_page,
        "count": len(chunk),
        "total_count": len(items),
        "total_pages": total_pages,
    }
    return _envelope(chunk, info)


class _Handler(BaseHTTPRequestHandler):
    server_version = "FakeCloudflare/1.0"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        state: CloudflareState = self.server.state  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status = 200
        retry_after: str | None = None
        try:
            with state.lock:
                state.calls.append((method, url.path))
                if self.headers.get("Authorization") != f"Bearer {state.token}":
                    raise ApiError(401, 10000, "Authentication error")
                now = time.monotonic()
                if now < state.blocked_until:
                    state.early_calls += 1
                    retry_after = f"{math.ceil(state.blocked_until - now)}"
                    raise ApiError(429, 10429, "Rate limited: Retry-After not honoured")
                if state.faults:
                    status, message, retry_after = state.faults.pop(0)
                    if status == 429 and retry_after is not None:
                        state.blocked_until = now + float(retry_after)
                    raise ApiError(status, 1000 if status == 200 else 10429, message)
                body = json.loads(raw) if raw else {}
                answer = _route(state, method, url.path.removeprefix(PREFIX), query, body)
                if method != "GET":
                    state.writes += 1
        except ApiError as err:
            status = err.status
            answer = {
                "success": False,
                "errors": [{"code": err.code, "message": err.message}],
                "messages": [],
                "result": None,
            }
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 429 and retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(data)


def _route(
    state: CloudflareState, method: str, path: str, query: dict[str, str], body: dict[str, Any]
) -> dict[str, Any]:
    parts = path.strip("/").split("/")
    if parts == ["zones"] and method == "GET":
        zones = [
            {"id": z, "name": n, "status": "active"}
            for z, n in sorted(state.zones.items())
            if query.get("name", n) == n
        ]
        return _page(zones, query, 20, 50)
    if len(parts) >= 3 and parts[0] == "zones" and parts[2] == "dns_records":
        zone_id = parts[1]
        if zone_id not in state.zones:
            raise ApiError(404, 7003, "Could not route to /zones/{zone_id}: zone not found")
        return _dns(state, method, zone_id, parts[3] if len(parts) > 3 else None, query, body)
    if parts[:1] == ["accounts"] and parts[2:4] == ["load_balancers", "pools"]:
        if parts[1] != state.account_id:
            raise ApiError(403, 9109, "Unauthorized to access requested resource")
        return _pools(state, method, parts[4] if len(parts) > 4 else None, body)
    if len(parts) >= 3 and parts[0] == "zones" and parts[2] == "load_balancers":
        if parts[1] not in state.zones:
            raise ApiError(404, 7003, "zone not found")
        return _lbs(state, method, parts[1], parts[3] if len(parts) > 3 else None, body)
    raise ApiError(404, 7000, f"No route for that URI: {method} {path}")


# ------------------------------------------------------------------ dns records
def _check_record(
    state: CloudflareState, zone_id: str, body: dict[str, Any], own: str | None
) -> None:
    for key in ("name", "type", "content"):
        if not body.get(key):
            raise ApiError(400, 9000 + len(key), f"DNS record {key} is required")
    ttl = int(body.get("ttl", 1))
    if ttl != 1 and not 30 <= ttl <= 86400:
        raise ApiError(
            400, 9021, "Invalid TTL. Must be between 30 and 86400 seconds, or 1 for Automatic."
        )
    if body["type"] in ("A", "AAAA"):
        try:
            version: int = ipaddress.ip_address(body["content"]).version
        except ValueError:
            version = 0
        if version != (4 if body["type"] == "A" else 6):
            raise ApiError(400, 9005, f"Content for {body['type']} record is invalid.")
    for other in state.records.values():
        if other["id"] == own or other["zone_id"] != zone_id or other["name"] != body["name"]:
            continue
        if "CNAME" in (other["type"], body["type"]):  # a CNAME stands alone at its name
            raise ApiError(400, 81053, "An A, AAAA, or CNAME record with that host already exists.")
        if other["type"] == body["type"] and other["content"] == body["content"]:
            raise ApiError(400, 81058, "An identical record already exists.")


def _dns(
    state: CloudflareState,
    method: str,
    zone_id: str,
    record_id: str | None,
    query: dict[str, str],
    body: dict[str, Any],
) -> dict[str, Any]:
    zone = state.zones[zone_id]
    if record_id is None and method == "GET":
        name = query.get("name.exact", query.get("name"))
        rows = [
            r
            for r in state.records.values()
            if r["zone_id"] == zone_id
            and name in (None, r["name"])
            and query.get("type", r["type"]) == r["type"]
        ]
        return _page(rows, query, 100, state.max_per_page)
    if record_id is None and method == "POST":
        _check_record(state, zone_id, body, None)
        new = _record(state.new_id(), zone_id, zone, body)
        state.records[new["id"]] = new
        return _envelope(new)
    record = state.records.get(record_id or "")
    if record is None or record["zone_id"] != zone_id:
        raise ApiError(404, 81044, "Record does not exist.")
    if method == "DELETE":
        del state.records[record["id"]]
        return _envelope({"id": record["id"]})
    if method in ("PUT", "PATCH"):
        merged = {**record, **body} if method == "PATCH" else body
        _check_record(state, zone_id, merged, record["id"])
        state.records[record["id"]] = _record(record["id"], zone_id, zone, merged)
        return _envelope(state.records[record["id"]])
    if method == "GET":
        return _envelope(record)
    raise ApiError(405, 10405, "Method not allowed")


# ---------------------------------------------------------- pools and balancers
def _pool(pool_id: str, body: dict[str, Any]) -> dict[str, Any]:
    origins = body.get("origins") or []
    if not body.get("name") or not origins:
        raise ApiError(400, 1002, "pool name and at least one origin are required")
    for origin in origins:
        weight = float(origin.get("weight", 1))
        if not origin.get("address") or not 0 <= weight <= 1:
            raise ApiError(400, 1003, f"origin {origin.get('name')}: address required, weight 0-1")
    return {
        "id": pool_id,
        "name": body["name"],
        "description": body.get("description", ""),
        "enabled": bool(body.get("enabled", True)),
        "minimum_origins": int(body.get("minimum_origins", 1)),
        "origins": [
            {
                "name": o.get("name", o["address"]),
                "address": o["address"],
                "weight": float(o.get("weight", 1)),
                "enabled": bool(o.get("enabled", True)),
                "header": {},
            }
            for o in origins
        ],
        "created_on": NOW,
        "modified_on": NOW,
    }


def _pools(state: CloudflareState, method: str, pool_id: str | None, body: dict[str, Any]) -> dict:
    if pool_id is None and method == "GET":
        rows = list(state.pools.values())
        return _envelope(
            rows,
            {
                "page": 1,
                "per_page": len(rows),
                "count": len(rows),
                "total_count": len(rows),
                "total_pages": 1,
            },
        )
    if pool_id is None and method == "POST":
        if any(p["name"] == body.get("name") for p in state.pools.values()):
            raise ApiError(400, 1004, f"a pool named {body.get('name')} already exists")
        new = _pool(state.new_id(), body)
        state.pools[new["id"]] = new
        return _envelope(new)
    if pool_id not in state.pools:
        raise ApiError(404, 1005, "pool not found")
    if method == "PUT":
        state.pools[pool_id] = _pool(pool_id, body)
    elif method != "GET":
        raise ApiError(405, 10405, "Method not allowed")
    return _envelope(state.pools[pool_id])


def _lb(state: CloudflareState, lb_id: str, body: dict[str, Any]) -> dict[str, Any]:
    default_pools = list(body.get("default_pools") or [])
    if not body.get("name") or not default_pools:
        raise ApiError(400, 1010, "name and at least one default pool are required")
    weights = (body.get("random_steering") or {}).get("pool_weights") or {}
    for pool_id in [*default_pools, body.get("fallback_pool"), *weights]:
        if pool_id not in state.pools:
            raise ApiError(400, 1011, f"pool {pool_id} does not exist")
    if any(not 0 <= float(w) <= 1 for w in weights.values()):
        raise ApiError(400, 1012, "pool weights must be between 0 and 1")
    return {
        "id": lb_id,
        "name": body["name"],
        "description": body.get("description", ""),
        "enabled": bool(body.get("enabled", True)),
        "ttl": int(body.get("ttl", 30)),
        "proxied": bool(body.get("proxied", False)),
        "steering_policy": body.get("steering_policy", "off"),
        "default_pools": default_pools,
        "fallback_pool": body.get("fallback_pool"),
        "random_steering": body.get("random_steering"),
        "created_on": NOW,
        "modified_on": NOW,
    }


def _lbs(
    state: CloudflareState, method: str, zone_id: str, lb_id: str | None, body: dict[str, Any]
) -> dict[str, Any]:
    if lb_id is None and method == "GET":
        rows = [lb for lb in state.load_balancers.values() if lb["zone_id"] == zone_id]
        return _envelope(
            rows,
            {
                "page": 1,
                "per_page": len(rows),
                "count": len(rows),
                "total_count": len(rows),
                "total_pages": 1,
            },
        )
    if lb_id is None and method == "POST":
        new = {**_lb(state, state.new_id(), body), "zone_id": zone_id}
        state.load_balancers[new["id"]] = new
        return _envelope(new)
    if lb_id not in state.load_balancers:
        raise ApiError(404, 1013, "load balancer not found")
    if method == "PUT":
        state.load_balancers[lb_id] = {**_lb(state, lb_id, body), "zone_id": zone_id}
    elif method != "GET":
        raise ApiError(405, 10405, "Method not allowed")
    return _envelope(state.load_balancers[lb_id])


def start(state: CloudflareState) -> LoopbackServer:
    return LoopbackServer(_Handler, state).start()
