"""Cloudflare through the official ``cloudflare`` SDK (5.x): plain records or Load Balancing.

Two modes (``CloudflareConfig.mode``):

* ``dns`` (accounts without Load Balancing): one A/AAAA record per address of the
  regions whose weight is above 0. Plain DNS has no weights, so a region at 0 is
  simply not published. Ownership is per record: its ``comment`` is
  :func:`~xplane.dns.base.ownership_value`; A/AAAA records at the name without it
  (and a CNAME there) are refused unless ``takeover=True`` (then adopted/removed).
* ``load_balancer``: one pool per region, ``<service>-<region>``, whose origins are
  the region's ready nodes (origin weight = node weight / heaviest node, 0.01-1),
  and one load balancer at the name with ``steering_policy: random`` and
  ``random_steering.pool_weights`` = region weight / heaviest region (0.01-1). A
  region at 0 has its pool disabled and left out of ``default_pools``; when every
  region is at 0 (only with force) the pools stay listed so the LB is never empty.
  Ownership: the pools' and the LB's ``description`` is the ownership value.

Both modes read first and write only what differs, so a second sync writes nothing.

SDK pitfalls handled here: its auto-pagination ignores ``total_pages`` (pages are
walked explicitly with ``result_info.total_pages``), and an HTTP 200 answer with
``success: false`` parses to ``None`` without raising (every answer's envelope is
checked). Errors: 401/403 -> :class:`DnsAuthError`; 429, 5xx, connection errors and
``success: false`` -> :class:`DnsRetryableError`; other 4xx -> :class:`DnsValidationError`
with Cloudflare's messages.

No Cloudflare server can run here: the tests point the real SDK (``base_url``) at
a loopback server speaking the documented v4 envelope (``tests/fakes/cloudflare_api.py``).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from typing import Any

import cloudflare
from cloudflare import Cloudflare
from pydantic import BaseModel

from xplane.config.models import CloudflareConfig
from xplane.dns import ratelimit
from xplane.dns.base import (
    ApplyResult,
    DesiredRegion,
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

_MAX_PAGES = 1000  # a paginator that never ends stops here


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
        except (cloudflare.AuthenticationError, cloudflare.PermissionDeniedError) as err:
            raise DnsAuthError(
                f"cloudflare: {label}: HTTP {err.status_code} {_messages(err.body)} "
                "(check the API token and its permissions)"
            ) from None
        except cloudflare.APIStatusError as err:
            text = f"cloudflare: {label}: HTTP {err.status_code} {_messages(err.body)}"
            if err.status_code == 429:
                retry_after = ratelimit.parse_retry_after(err.response.headers.get("retry-after"))
                raise ratelimit.throttled(self.bucket, text, retry_after) from None
            if err.status_code >= 500:
                raise DnsRetryableError(text) from None
            raise DnsValidationError(text) from None
        except cloudflare.APIConnectionError as err:  # includes timeouts
            raise DnsRetryableError(f"cloudflare: {label}: {err}") from None
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

    def same_as(self, other: CfPool) -> bool:
        return self.model_dump(exclude={"id"}) == other.model_dump(exclude={"id"})


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

    def same_as(self, other: CfLoadBalancer) -> bool:
        return self.model_dump(exclude={"id"}) == other.model_dump(exclude={"id"})


# -------------------------------------------------------------- pure functions
def normalise(weights: dict[str, float]) -> dict[str, float]:
    """Weights as Cloudflare takes them: 0-1, the heaviest 1.0, two decimals, none
    positive rounded to 0."""
    top = max(weights.values(), default=0.0)
    if top <= 0:
        return dict.fromkeys(weights, 0.0)
    return {k: (max(0.01, round(w / top, 2)) if w > 0 else 0.0) for k, w in weights.items()}


def record_type(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


def wanted_addresses(desired: DesiredService, types: set[str]) -> list[tuple[str, str]]:
    """(type, address) of every live endpoint (region and node weight above 0)."""
    found = {
        (record_type(e.address), e.address)
        for r in desired.regions
        if r.weight > 0
        for e in r.endpoints
        if e.weight > 0
    }
    return sorted(k for k in found if k[0] in types)


def record_changes(
    wanted: list[tuple[str, str]], current: list[CfRecord], template: CfRecord
) -> list[DnsChange]:
    """Changes turning ``current`` (records XPlane owns or adopts) into ``wanted``.

    ``template`` carries the ttl/proxied/comment every record must have. Pure.
    """
    changes: list[DnsChange] = []
    by_key: dict[tuple[str, str], CfRecord] = {}
    for record in current:
        key = (record.type, record.content)
        if key in by_key:  # duplicate: keep one
            changes.append(
                DnsChange(action="delete", key=f"{key[0]} {key[1]}", before=record.model_dump())
            )
        else:
            by_key[key] = record
    for rtype, address in wanted:
        want = template.model_copy(update={"type": rtype, "content": address})
        have = by_key.pop((rtype, address), None)
        if have is None:
            changes.append(
                DnsChange(action="create", key=f"{rtype} {address}", after=want.model_dump())
            )
        elif have.model_dump(exclude={"id"}) != want.model_dump(exclude={"id"}):
            changes.append(
                DnsChange(
                    action="update",
                    key=f"{rtype} {address}",
                    before=have.model_dump(),
                    after=want.model_copy(update={"id": have.id}).model_dump(),
                )
            )
    for (rtype, address), record in sorted(by_key.items()):
        changes.append(
            DnsChange(action="delete", key=f"{rtype} {address}", before=record.model_dump())
        )
    return changes


def pool_for_region(
    region: DesiredRegion, name: str, marker: str, existing: CfPool | None
) -> CfPool | None:
    """The pool a region should have; None when it needs none (inactive, never created).

    An inactive region (weight 0 or no ready node) keeps its pool's origins, disabled.
    """
    ready = {e.address: e.weight for e in region.endpoints if e.weight > 0}
    if region.weight > 0 and ready:
        origins = [
            CfOrigin(name=address, address=address, weight=weight)
            for address, weight in sorted(normalise(ready).items())
        ]
        return CfPool(name=name, description=marker, enabled=True, origins=origins)
    if existing is None:
        return None
    return existing.model_copy(update={"id": None, "description": marker, "enabled": False})


def load_balancer_for(
    name: str,
    marker: str,
    ttl: int,
    proxied: bool,
    active: dict[str, float],
    all_pools: list[str],
) -> CfLoadBalancer | None:
    """The LB: active pools (by name, with region weights) in rotation; never empty."""
    if active:
        pools = sorted(active)
        weights = normalise(active)
        fallback = max(pools, key=lambda p: (active[p], p))
    elif all_pools:  # every region at 0 (forced): keep the pools listed, disabled
        pools, weights, fallback = sorted(all_pools), {}, sorted(all_pools)[0]
    else:
        return None
    return CfLoadBalancer(
        name=name,
        description=marker,
        ttl=ttl,
        proxied=proxied,
        default_pools=pools,
        fallback_pool=fallback,
        pool_weights=weights,
    )


def _weights_only(before: dict[str, Any], after: dict[str, Any], fields: set[str]) -> bool:
    strip = {k: v for k, v in before.items() if k not in fields | {"id"}}
    return strip == {k: v for k, v in after.items() if k not in fields | {"id"}}


def _origins_without_weights(pool: dict[str, Any]) -> dict[str, Any]:
    return {**pool, "origins": [{**o, "weight": None} for o in pool["origins"]]}


def safety_view(plan: DnsPlan) -> DnsPlan:
    """The plan without weight-only updates (routine GTM shifts the threshold ignores)."""
    skip = set(plan.context.get("weight_only", []))
    return plan.model_copy(update={"changes": [c for c in plan.changes if c.key not in skip]})


# -------------------------------------------------------------------- provider
class CloudflareDns(DnsProvider):
    kind = "cloudflare"

    def __init__(
        self,
        config: CloudflareConfig,
        *,
        client: Cloudflare | None = None,
        per_page: int = 100,
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

    def _zone(self, zone: str) -> str:
        if self._zone_id is None:
            self._zone_id = self.api.zone_id(zone)
        return self._zone_id

    def _filtered(self, desired: DesiredService) -> DesiredService:
        if self.config.regions is None:
            return desired
        keep = [r for r in desired.regions if r.region in self.config.regions]
        return desired.model_copy(update={"regions": keep})

    def plan(self, desired: DesiredService, *, takeover: bool = False) -> DnsPlan:
        desired = self._filtered(desired)
        zone_id = self._zone(self.config.zone or desired.zone)
        if self.config.mode == "load_balancer":
            return self._plan_lb(desired, zone_id, takeover)
        return self._plan_dns(desired, zone_id, takeover)

    def apply(self, plan: DnsPlan, *, force: bool = False) -> ApplyResult:
        check_safety(safety_view(plan), self.config.max_change_fraction, force)
        if plan.empty:
            return ApplyResult(provider=self.kind, name=plan.name, applied=False)
        if plan.context["mode"] == "load_balancer":
            writes = self._apply_lb(plan)
        else:
            writes = self._apply_dns(plan)
        return ApplyResult(
            provider=self.kind,
            name=plan.name,
            applied=True,
            write_calls=writes,
            changes=plan.changes,
        )

    # ------------------------------------------------------------ mode: dns
    def _plan_dns(self, desired: DesiredService, zone_id: str, takeover: bool) -> DnsPlan:
        marker = ownership_value(desired.owner_id, desired.service)
        records = self.api.paged(
            f"GET dns_records name={desired.name}",
            self.api.client.dns.records.with_raw_response.list,
            zone_id=zone_id,
            name={"exact": desired.name},
        )
        at_name = [
            CfRecord(
                id=r.id,
                type=r.type,
                content=str(r.content),
                ttl=int(r.ttl),
                proxied=bool(getattr(r, "proxied", False)),
                comment=r.comment,
            )
            for r in records
            if r.type in ("A", "AAAA", "CNAME")
        ]
        owned = [r for r in at_name if r.type != "CNAME" and r.comment == marker]
        foreign = [r for r in at_name if r not in owned]
        if foreign and not takeover:
            listed = ", ".join(f"{r.type} {r.content}" for r in foreign)
            raise DnsOwnershipError(
                f"cloudflare: {desired.name} has records without the ownership comment "
                f"{marker!r} ({listed}); use takeover to adopt them"
            )
        adopted = owned + [r for r in foreign if r.type != "CNAME"]
        changes = [
            DnsChange(action="delete", key=f"CNAME {r.content}", before=r.model_dump())
            for r in foreign
            if r.type == "CNAME"
        ]
        rtype = self.config.record_type
        types: set[str] = {"A", "AAAA"} if rtype == "auto" else {rtype}
        proxied = self.config.proxied
        template = CfRecord(
            type="A", content="", ttl=1 if proxied else desired.ttl, proxied=proxied, comment=marker
        )
        wanted = wanted_addresses(desired, types)
        changes += record_changes(wanted, [r for r in adopted if r.type in types], template)
        return DnsPlan(
            provider=self.kind,
            service=desired.service,
            name=desired.name,
            changes=changes,
            owned_record_sets=len(owned),
            removes_all_addresses=bool(adopted) and not wanted,
            addresses_before=sorted({r.content for r in owned}),
            addresses_after=sorted({a for _, a in wanted}),
            context={"mode": "dns", "zone_id": zone_id},
        )

    def _apply_dns(self, plan: DnsPlan) -> int:
        zone_id = plan.context["zone_id"]
        records = self.api.client.dns.records.with_raw_response

        # CNAMEs go first (they block A/AAAA), then creates and updates, deletes last,
        # so the name keeps answering while it changes.
        def order(c: DnsChange) -> int:
            if c.key.startswith("CNAME "):
                return 0
            return {"create": 1, "update": 2, "delete": 3}[c.action]

        writes = 0
        for change in sorted(plan.changes, key=order):
            label = f"{change.action} {plan.name} {change.key}"
            if change.action == "delete":
                self.api.call(
                    label, records.delete, zone_id=zone_id, dns_record_id=change.before["id"]
                )
            else:
                rec = CfRecord.model_validate(change.after)
                body = {
                    "zone_id": zone_id,
                    "name": plan.name,
                    "type": rec.type,
                    "content": rec.content,
                    "ttl": rec.ttl,
                    "proxied": rec.proxied,
                    "comment": rec.comment,
                }
                if change.action == "create":
                    self.api.call(label, records.create, **body)
                else:
                    self.api.call(label, records.update, dns_record_id=rec.id, **body)
            writes += 1
        return writes

    # --------------------------------------------------- mode: load_balancer
    def _plan_lb(self, desired: DesiredService, zone_id: str, takeover: bool) -> DnsPlan:
        account_id = self.config.account_id
        if not account_id:
            raise DnsValidationError(
                "cloudflare: mode load_balancer needs account_id in the provider config"
            )
        marker = ownership_value(desired.owner_id, desired.service)
        lb_api = self.api.client.load_balancers
        _, pool_page = self.api.call(
            "GET pools", lb_api.pools.with_raw_response.list, account_id=account_id
        )
        pools = {
            p.name: CfPool(
                id=p.id,
                name=p.name,
                description=p.description or "",
                enabled=bool(p.enabled),
                origins=[
                    CfOrigin(
                        name=o.name or o.address,
                        address=o.address,
                        weight=float(o.weight if o.weight is not None else 1),
                        enabled=o.enabled is not False,
                    )
                    for o in (p.origins or [])
                ],
            )
            for p in (pool_page.result or [])
        }
        names_by_id = {p.id: name for name, p in pools.items()}
        _, lb_page = self.api.call(
            "GET load_balancers", lb_api.with_raw_response.list, zone_id=zone_id
        )
        existing_lb = next((lb for lb in (lb_page.result or []) if lb.name == desired.name), None)

        def refuse(what: str) -> DnsOwnershipError:
            return DnsOwnershipError(
                f"cloudflare: {what} exists without the ownership description {marker!r}; "
                "use takeover to adopt it"
            )

        regions = {r.region: r for r in desired.regions}
        prefix = f"{desired.service}-"
        for name, pool in pools.items():  # owned pools of regions no longer desired
            region = name.removeprefix(prefix)
            if pool.description == marker and name.startswith(prefix) and region not in regions:
                regions[region] = DesiredRegion(region=region, weight=0)
        changes: list[DnsChange] = []
        weight_only: list[str] = []
        active: dict[str, float] = {}
        listed: list[str] = []
        for region in sorted(regions.values(), key=lambda r: r.region):
            name = prefix + region.region
            have = pools.get(name)
            if have is not None and have.description != marker and not takeover:
                raise refuse(f"pool {name}")
            want = pool_for_region(region, name, marker, have)
            if want is None:
                continue
            listed.append(name)
            if want.enabled:
                active[name] = region.weight
            key = f"pool {name}"
            if have is None:
                changes.append(DnsChange(action="create", key=key, after=want.model_dump()))
            elif not want.same_as(have):
                after = want.model_copy(update={"id": have.id}).model_dump()
                before = have.model_dump()
                changes.append(DnsChange(action="update", key=key, before=before, after=after))
                if _origins_without_weights(before) == _origins_without_weights(after):
                    weight_only.append(key)
        ttl = 30 if self.config.proxied else desired.ttl
        want_lb = load_balancer_for(desired.name, marker, ttl, self.config.proxied, active, listed)
        have_lb: CfLoadBalancer | None = None
        if existing_lb is not None:
            if (existing_lb.description or "") != marker and not takeover:
                raise refuse(f"load balancer {desired.name}")
            weights = (
                existing_lb.random_steering.pool_weights or {}
                if existing_lb.random_steering
                else {}
            )
            have_lb = CfLoadBalancer(
                id=existing_lb.id,
                name=existing_lb.name or desired.name,
                description=existing_lb.description or "",
                ttl=int(existing_lb.ttl or 30),
                proxied=bool(existing_lb.proxied),
                steering_policy=str(existing_lb.steering_policy or "off"),
                default_pools=[names_by_id.get(p, p) for p in existing_lb.default_pools or []],
                fallback_pool=names_by_id.get(
                    existing_lb.fallback_pool or "", existing_lb.fallback_pool or ""
                ),
                pool_weights={names_by_id.get(k, k): float(v) for k, v in weights.items()},
            )
        key = f"load_balancer {desired.name}"
        if want_lb is not None:
            if have_lb is None:
                changes.append(DnsChange(action="create", key=key, after=want_lb.model_dump()))
            elif not want_lb.same_as(have_lb):
                after = want_lb.model_copy(update={"id": have_lb.id}).model_dump()
                before = have_lb.model_dump()
                changes.append(DnsChange(action="update", key=key, before=before, after=after))
                # Routing only (which pools, their weights): the pool enable/disable behind
                # it is what the threshold counts, once.
                if _weights_only(before, after, {"pool_weights", "default_pools", "fallback_pool"}):
                    weight_only.append(key)
        live_before = have_lb is not None and any(
            pools[p].enabled for p in have_lb.default_pools if p in pools
        )
        owned = [p for p in pools.values() if p.description == marker]
        return DnsPlan(
            provider=self.kind,
            service=desired.service,
            name=desired.name,
            changes=changes,
            owned_record_sets=len(owned)
            + int(have_lb is not None and have_lb.description == marker),
            removes_all_addresses=live_before and not active,
            addresses_before=sorted(
                {o.address for p in owned if p.enabled for o in p.origins if o.enabled}
            ),
            addresses_after=sorted(
                {
                    e.address
                    for r in desired.regions
                    if prefix + r.region in active
                    for e in r.endpoints
                    if e.weight > 0
                }
            ),
            context={
                "mode": "load_balancer",
                "zone_id": zone_id,
                "account_id": account_id,
                "pool_ids": {name: p.id for name, p in pools.items()},
                "weight_only": weight_only,
            },
        )

    def _apply_lb(self, plan: DnsPlan) -> int:
        ctx = plan.context
        lb_api = self.api.client.load_balancers
        pool_ids: dict[str, str] = dict(ctx["pool_ids"])
        writes = 0
        # Pools first: the load balancer refers to them by id.
        for change in plan.changes:
            if not change.key.startswith("pool "):
                continue
            pool = CfPool.model_validate(change.after)
            body = {
                "account_id": ctx["account_id"],
                "name": pool.name,
                "description": pool.description,
                "enabled": pool.enabled,
                "origins": [o.model_dump() for o in pool.origins],
            }
            label = f"{change.action} {change.key}"
            if change.action == "create":
                _, created = self.api.call(label, lb_api.pools.with_raw_response.create, **body)
                pool_ids[pool.name] = str(created.id)
            else:
                self.api.call(label, lb_api.pools.with_raw_response.update, pool_id=pool.id, **body)
            writes += 1
        for change in plan.changes:
            if not change.key.startswith("load_balancer "):
                continue
            lb = CfLoadBalancer.model_validate(change.after)
            body = {
                "zone_id": ctx["zone_id"],
                "name": lb.name,
                "description": lb.description,
                "ttl": lb.ttl,
                "proxied": lb.proxied,
                "steering_policy": lb.steering_policy,
                "default_pools": [pool_ids[p] for p in lb.default_pools],
                "fallback_pool": pool_ids[lb.fallback_pool],
                "random_steering": {
                    "pool_weights": {pool_ids[p]: w for p, w in lb.pool_weights.items()}
                },
            }
            label = f"{change.action} {change.key}"
            if change.action == "create":
                self.api.call(label, lb_api.with_raw_response.create, **body)
            else:
                self.api.call(
                    label, lb_api.with_raw_response.update, load_balancer_id=lb.id, **body
                )
            writes += 1
        return writes
