"""Cloudflare through the official ``cloudflare`` SDK (5.x): plain records or Load Balancing.

Two modes (``CloudflareConfig.mode``):

* ``dns`` (accounts without Load Balancing): one A/AAAA record per address of the
  regions above 0 (plain DNS has no weights). Ownership is per record: its ``comment``
  is the ownership value; other A/AAAA records at the name, and a CNAME, need takeover.
* ``load_balancer``: one pool per region, ``<service>-<region>``, whose origins are its
  ready nodes (weight over the heaviest node, 0.01-1), and one load balancer at the name
  (``steering_policy: random``, pool weights = region weight over the heaviest). A region
  at 0 has its pool disabled and left out of ``default_pools``; with every region at 0
  (only with force) the pools stay listed, so the LB is never empty. Ownership: the
  pools' and the LB's ``description``.

SDK pitfalls handled here: its auto-pagination ignores ``total_pages`` (pages are walked
with ``result_info.total_pages``) and an HTTP 200 answer with ``success: false`` parses
to ``None`` without raising (every envelope is checked: retryable). The tests point the
real SDK (``base_url``) at a loopback v4 server (``tests/fakes/cloudflare_api.py``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import cloudflare
from cloudflare import Cloudflare
from pydantic import BaseModel

from xplane.config.models import CloudflareConfig
from xplane.dns import ratelimit
from xplane.dns.base import api_error, read_secret, unreachable
from xplane.dns.plan import (
    Capabilities,
    Current,
    DesiredRegion,
    DesiredService,
    DnsError,
    DnsPlan,
    DnsProvider,
    DnsRetryableError,
    DnsValidationError,
    RecordSet,
    endpoint_weights,
    ownership_value,
    quantise,
)

_MAX_PAGES = 1000  # a paginator that never ends stops here
_ROUTING = ("pool_weights", "default_pools", "fallback_pool")  # a load balancer's weights


# ------------------------------------------------------------------ SDK access
def _messages(body: object) -> str:
    """``[code] message; ...`` from a v4 envelope's ``errors`` (or the raw body)."""
    if isinstance(body, dict) and body.get("errors"):
        return "; ".join(
            f"[{e.get('code')}] {e.get('message')}" if isinstance(e, dict) else str(e)
            for e in body["errors"]
        )
    return str(body)[:300]


class CloudflareApi:
    """Thin wrapper over the SDK: envelope checks, explicit pagination, error classes."""

    def __init__(self, client: Cloudflare, per_page: int = 100) -> None:
        self.client = client
        self.per_page = per_page
        # Cloudflare limits API calls per user/token: one bucket per token and endpoint.
        self.bucket = ratelimit.limiter(
            "cloudflare", ratelimit.account_key(str(client.base_url), client.api_token)
        )

    def call(self, label: str, method: Callable[..., Any], **kwargs: Any) -> tuple[dict, Any]:
        """Run one ``with_raw_response`` SDK method; returns (envelope, parsed result)."""
        self.bucket.acquire()
        try:
            raw = method(**kwargs)
            body = raw.http_response.json()
            parsed = raw.parse()
        except cloudflare.APIStatusError as err:
            text = f"cloudflare: {label}: HTTP {err.status_code} {_messages(err.body)}"
            if err.status_code in (401, 403):
                text += " (check the API token and its permissions)"
            retry_after = err.response.headers.get("retry-after")
            raise api_error(
                text, err.status_code, bucket=self.bucket, retry_after=retry_after
            ) from None
        except cloudflare.APIConnectionError as err:  # includes timeouts
            raise unreachable(f"cloudflare: {label}", err) from None
        except cloudflare.APIResponseValidationError as err:
            raise DnsError(f"cloudflare: {label}: unexpected answer: {err}") from None
        if not isinstance(body, dict) or body.get("success") is not True:
            # HTTP 200 but not done: the SDK would hand back None without raising.
            raise DnsRetryableError(f"cloudflare: {label}: success=false: {_messages(body)}")
        return body, parsed

    def paged(self, label: str, method: Callable[..., Any], **kwargs: Any) -> list[Any]:
        """Every item of a v4-paginated list, walking ``result_info.total_pages``."""
        items: list[Any] = []
        for page in range(1, _MAX_PAGES + 1):
            body, parsed = self.call(
                f"{label} page {page}", method, page=page, per_page=self.per_page, **kwargs
            )
            batch = list(parsed.result or [])
            items.extend(batch)
            total_pages = int((body.get("result_info") or {}).get("total_pages") or 1)
            if page >= total_pages or not batch:
                break
        return items

    def zone_id(self, zone: str) -> str:
        zones = self.paged(
            f"GET zones?name={zone}", self.client.zones.with_raw_response.list, name=zone
        )
        for found in zones:
            if found.name == zone:
                return str(found.id)
        raise DnsValidationError(
            f"cloudflare: zone {zone} not found with this token (set zone_id in the provider)"
        )


# ------------------------------------------------------------------ data types
class CfRecord(BaseModel):
    id: str | None = None
    type: str
    content: str
    ttl: int
    proxied: bool = False
    comment: str | None = None


class CfOrigin(BaseModel):
    name: str
    address: str
    weight: float
    enabled: bool = True


class CfPool(BaseModel):
    id: str | None = None
    name: str
    description: str = ""
    enabled: bool = True
    origins: list[CfOrigin]


class CfLoadBalancer(BaseModel):
    """A load balancer with pools named (not by id) so a plan can name pools to be created."""

    id: str | None = None
    name: str
    description: str = ""
    ttl: int
    proxied: bool = False
    steering_policy: str = "random"
    default_pools: list[str]
    fallback_pool: str
    pool_weights: dict[str, float]


# -------------------------------------------------------------- pure functions
def normalise(weights: dict[str, float]) -> dict[str, float]:
    """Weights as Cloudflare takes them: 0-1, the heaviest 1.0, two decimals, none
    positive rounded to 0 (:func:`~xplane.dns.plan.quantise` to 100, as fractions)."""
    quantised = quantise(weights, CloudflareDns.capabilities.max_weight)
    return {k: quantised.get(k, 0) / 100 for k in weights}


def record_set(record: CfRecord, owned: bool | None = True) -> RecordSet:
    """A plain record (its identity is type and content); a CNAME answers no address."""
    key = f"{record.type} {record.content}"
    data = record.model_dump(include={"ttl", "proxied", "comment"})
    addresses = [record.content] if record.type != "CNAME" else []
    return RecordSet(key, record.type, data, {}, addresses, owned, native=record.model_dump())


def pool_set(pool: CfPool, owned: bool | None = True) -> RecordSet:
    """A pool: its origins' weights are its weights; disabled, it answers nothing."""
    native = pool.model_dump()
    data = {**native, "id": None, "origins": [{**o, "weight": None} for o in native["origins"]]}
    weights = {o.name: o.weight for o in pool.origins}
    addresses = [o.address for o in pool.origins if o.enabled] if pool.enabled else []
    key = f"pool {pool.name}"
    return RecordSet(key, "pool", data, weights, addresses, owned, pool.enabled, native, key)


def lb_set(lb: CfLoadBalancer, owned: bool | None = True) -> RecordSet:
    """A load balancer: which pools and their weights is its routing (weight-only)."""
    native = lb.model_dump()
    data = {k: v for k, v in native.items() if k not in (*_ROUTING, "id")}
    key = f"load balancer {lb.name}"
    weights = {k: native[k] for k in _ROUTING}
    return RecordSet(key, "load balancer", data, weights, owned=owned, native=native, label=key)


# -------------------------------------------------------------------- provider
class CloudflareDns(DnsProvider):
    """One zone (``zone_id``, or found by name) in one of the two modes."""

    capabilities = Capabilities(max_weight=100, weights="region")  # 0.01-1: 1..100 over 100
    config: CloudflareConfig
    kind = "cloudflare"

    def __init__(
        self, config: CloudflareConfig, *, client: Cloudflare | None = None, per_page: int = 100
    ) -> None:
        self.config = config
        if client is None:
            client = Cloudflare(
                api_token=read_secret(config.api_token_env, config.api_token_file),
                base_url=config.base_url or os.environ.get("CLOUDFLARE_BASE_URL"),
                max_retries=0,  # the activity's retry policy retries, with backoff
                timeout=10.0,
            )
        self.api = CloudflareApi(client, per_page)
        self._zone_id = config.zone_id
        self.lb_mode = config.mode == "load_balancer"

    def read(self, desired: DesiredService) -> Current:
        if self._zone_id is None:
            self._zone_id = self.api.zone_id(desired.zone)
        marker = ownership_value(desired.owner_id, desired.service)
        context = {"zone_id": self._zone_id, "marker": marker}
        if self.lb_mode:
            return self._read_lb(desired, context)
        records = self.api.paged(
            f"GET dns_records name={desired.name}",
            self.api.client.dns.records.with_raw_response.list,
            zone_id=self._zone_id,
            name={"exact": desired.name},
        )
        types = {"A", "AAAA"} if self.config.record_type == "auto" else {self.config.record_type}
        sets = []
        for r in records:
            if r.type in types or r.type == "CNAME":
                proxied = bool(getattr(r, "proxied", False))
                found = {"id": r.id, "type": r.type, "content": str(r.content), "ttl": int(r.ttl)}
                record = CfRecord(**found, proxied=proxied, comment=r.comment)
                sets.append(record_set(record, r.type != "CNAME" and r.comment == marker))
        return Current(sets, context=context)

    def wanted(self, desired: DesiredService, current: Current) -> list[RecordSet]:
        if self.lb_mode:
            return self._wanted_lb(desired, current)
        marker, proxied = current.context["marker"], self.config.proxied
        ttl = 1 if proxied else desired.ttl
        return [
            record_set(CfRecord(type=t, content=a, ttl=ttl, proxied=proxied, comment=marker))
            for t, weights in endpoint_weights(desired, self.config.record_type).items()
            for a in sorted(weights)
        ]

    def write(self, plan: DnsPlan) -> int:
        """CNAMEs go first (they block A/AAAA), then creates and updates, deletes last, so
        the name keeps answering while it changes. In LB mode, pools before the LB."""
        if self.lb_mode:
            return self._write_lb(plan)
        records = self.api.client.dns.records.with_raw_response
        steps = ("CNAME", "create", "update", "delete")
        for change in sorted(
            plan.changes,
            key=lambda c: steps.index(c.key[:5] if c.key.startswith("CNAME") else c.action),
        ):
            ids = {"dns_record_id": change.before["id"]} if change.before else {}
            after = change.after or {}
            body = {k: after[k] for k in ("type", "content", "ttl", "proxied", "comment") if after}
            if after:
                body["name"] = plan.name
            label = f"{change.action} {plan.name} {change.key}"
            method = getattr(records, change.action)
            self.api.call(label, method, zone_id=plan.context["zone_id"], **ids, **body)
        return len(plan.changes)

    # --------------------------------------------------- mode: load_balancer
    def _read_lb(self, desired: DesiredService, context: dict[str, Any]) -> Current:
        account_id = self.config.account_id
        if not account_id:
            raise DnsValidationError(
                "cloudflare: mode load_balancer needs account_id in the provider config"
            )
        lb_api = self.api.client.load_balancers
        _, page = self.api.call(
            "GET pools", lb_api.pools.with_raw_response.list, account_id=account_id
        )
        pools: dict[str, CfPool] = {}
        for p in page.result or []:
            origins = [
                CfOrigin(
                    name=o.name or o.address,
                    address=o.address,
                    weight=float(o.weight if o.weight is not None else 1),
                    enabled=o.enabled is not False,
                )
                for o in (p.origins or [])
            ]
            listed = {"id": p.id, "name": p.name, "description": p.description or ""}
            pools[p.name] = CfPool(**listed, enabled=bool(p.enabled), origins=origins)
        names = {p.id: name for name, p in pools.items()}
        _, page = self.api.call(
            "GET load_balancers", lb_api.with_raw_response.list, zone_id=context["zone_id"]
        )
        marker, prefix = context["marker"], f"{desired.service}-"
        # A region's pool, and owned pools of regions no longer desired.
        regions = {prefix + r.region: r for r in desired.regions}
        for name, pool in pools.items():
            if name.startswith(prefix) and pool.description == marker:
                regions.setdefault(name, DesiredRegion(region=name.removeprefix(prefix), weight=0))
        ours = {n: p for n, p in pools.items() if n in regions}
        sets = [pool_set(p, p.description == marker) for p in ours.values()]
        found = next((lb for lb in (page.result or []) if lb.name == desired.name), None)
        if found is not None:
            weights = found.random_steering.pool_weights if found.random_steering else None
            lb = CfLoadBalancer(
                id=found.id,
                name=found.name or desired.name,
                description=found.description or "",
                ttl=int(found.ttl or 30),
                proxied=bool(found.proxied),
                steering_policy=str(found.steering_policy or "off"),
                default_pools=[names.get(p, p) for p in found.default_pools or []],
                fallback_pool=names.get(found.fallback_pool or "", found.fallback_pool or ""),
                pool_weights={names.get(k, k): float(v) for k, v in (weights or {}).items()},
            )
            sets.append(lb_set(lb, lb.description == marker))
        context |= {"account_id": account_id, "pools": ours, "regions": regions}
        context["pool_ids"] = {name: p.id for name, p in pools.items()}
        return Current(sets, context=context)

    def _wanted_lb(self, desired: DesiredService, current: Current) -> list[RecordSet]:
        """A pool per region and the load balancer over the active ones (never empty).

        An inactive region (weight 0 or no ready node) keeps its pool's origins, disabled;
        one that never had a pool gets none.
        """
        marker, out, active = current.context["marker"], [], {}
        for name, region in sorted(current.context["regions"].items()):
            ready = {e.address: e.weight for e in region.endpoints if e.weight > 0}
            existing = current.context["pools"].get(name)
            if region.weight > 0 and ready:
                origins = [
                    CfOrigin(name=a, address=a, weight=w)
                    for a, w in sorted(normalise(ready).items())
                ]
                out.append(pool_set(CfPool(name=name, description=marker, origins=origins)))
                active[name] = region.weight
            elif existing is not None:
                disabled = {"id": None, "description": marker, "enabled": False}
                out.append(pool_set(existing.model_copy(update=disabled)))
        pools = sorted(active) or sorted(s.key.removeprefix("pool ") for s in out)
        if not pools:  # no pool at all: an existing load balancer is left as it is
            return [s for s in current.sets if s.type == "load balancer"]
        lb = CfLoadBalancer(
            name=desired.name,
            description=marker,
            ttl=30 if self.config.proxied else desired.ttl,
            proxied=self.config.proxied,
            default_pools=pools,
            fallback_pool=max(pools, key=lambda p: (active.get(p, 0), p)) if active else pools[0],
            pool_weights=normalise(active),
        )
        return [*out, lb_set(lb)]

    def _write_lb(self, plan: DnsPlan) -> int:
        ctx, lb_api = plan.context, self.api.client.load_balancers
        pool_ids: dict[str, str] = dict(ctx["pool_ids"])
        for change in sorted(plan.changes, key=lambda c: not c.key.startswith("pool ")):
            label, after, action = f"{change.action} {change.key}", change.after, change.action
            if change.key.startswith("pool "):
                body = {k: after[k] for k in ("name", "description", "enabled", "origins")}
                ids = {"pool_id": change.before["id"]} if change.before else {}
                method = getattr(lb_api.pools.with_raw_response, action)
                _, done = self.api.call(label, method, account_id=ctx["account_id"], **ids, **body)
                pool_ids[after["name"]] = str(done.id)
                continue
            body = {
                k: after[k] for k in ("name", "description", "ttl", "proxied", "steering_policy")
            }
            body["default_pools"] = [pool_ids[p] for p in after["default_pools"]]
            body["fallback_pool"] = pool_ids[after["fallback_pool"]]
            weights = {pool_ids[p]: w for p, w in after["pool_weights"].items()}
            ids = {"load_balancer_id": change.before["id"]} if change.before else {}
            method = getattr(lb_api.with_raw_response, action)
            self.api.call(
                label,
                method,
                zone_id=ctx["zone_id"],
                random_steering={"pool_weights": weights},
                **ids,
                **body,
            )
        return len(plan.changes)
