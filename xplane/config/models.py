"""Pydantic models of the GitOps declarations: ``gtm/``, ``autoscale/``, ``regions/``.

Strict (unknown keys are errors). The origin project's files validate unchanged;
everything XPlane adds has a default. ``xplane.config.loader`` parses a tree,
resolves defaults across files (a GTM region without ``weight`` takes the
region's ``base_weight``) and runs the cross-file checks.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, AliasChoices, Field, ValidationInfo, model_validator

from xplane.config.errors import NAME_PATTERN, FieldErrors, Loc
from xplane.domain import StrictModel
from xplane.durations import Duration, format_duration
from xplane.windows import MAX_WINDOW, check_cron, check_timezone, fixed_occurrence

Fraction = Annotated[float, Field(ge=0, le=1)]
NonNegInt = Annotated[int, Field(ge=0)]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# Validation context key: set when a model is read from a config file (strict about
# retired keys), unset when decoding what an older version stored.
CONFIG_FILE_CONTEXT = "config_file"


def _hostname(value: str, min_labels: int) -> str:
    """Lower-case, drop a trailing dot, check every label (RFC 1123)."""
    name = value.strip().lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < min_labels or not all(_LABEL.match(x) for x in labels):
        need = "a fully qualified domain name like api.svc.plus" if min_labels > 1 else "a DNS name"
        raise ValueError(f"invalid domain {value!r}: must be {need}")
    return name


def _fqdn(value: str) -> str:
    return _hostname(value, min_labels=2)


def _zone_name(value: str) -> str:
    return _hostname(value, min_labels=1)


Fqdn = Annotated[str, AfterValidator(_fqdn)]
Cron = Annotated[str, AfterValidator(check_cron)]
TimeZone = Annotated[str, AfterValidator(check_timezone)]
ZoneName = Annotated[str, AfterValidator(_zone_name)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def default_zone(domain: str) -> str:
    """The zone a domain is published in when not configured: its parent.

    ``api.svc.plus`` -> ``svc.plus``; a two-label domain (``svc.plus``) is its own zone.
    """
    labels = domain.split(".")
    return ".".join(labels[1:]) if len(labels) > 2 else domain


def _raise(errors: list[tuple[Loc, str]]) -> None:
    if errors:
        raise FieldErrors(errors)


def _min_max(low: int | None, high: int | None, lo_key: str, hi_key: str) -> list[tuple[Loc, str]]:
    if low is not None and high is not None and low > high:
        return [((lo_key,), f"must be <= {hi_key} ({high}), not {low}")]
    return []


def _duration_errors(duration: timedelta | None) -> list[tuple[Loc, str]]:
    if duration is None:
        return []
    if duration <= timedelta(0):
        return [(("duration",), "must be longer than 0")]
    if duration > MAX_WINDOW:
        return [(("duration",), f"must be at most {format_duration(MAX_WINDOW)}")]
    return []


# --------------------------------------------------------------------- regions
class RegionDefaults(StrictModel):
    """Fields a region group gives every region of the group."""

    provider: str | None = None
    location: str | None = None
    instance_type: str | None = None
    min_nodes: NonNegInt | None = None
    max_nodes: NonNegInt | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    base_weight: float | None = Field(default=None, ge=0)
    health_threshold: Fraction | None = None
    min_ready_nodes: NonNegInt | None = None
    quota: NonNegInt | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        _raise(_min_max(self.min_nodes, self.max_nodes, "min_nodes", "max_nodes"))
        return self


class Region(StrictModel):
    """Where nodes live: one cloud region (``regions/<name>.yaml`` or a group entry)."""

    name: Name
    provider: str = "local"  # aws | alicloud | tencent | local | ...
    location: str | None = None  # the cloud's own region id, e.g. ap-northeast-1
    instance_type: str | None = None
    min_nodes: NonNegInt = 1
    max_nodes: NonNegInt = 10
    quota: NonNegInt | None = None  # hard cap on nodes (account quota)
    labels: dict[str, str] = Field(default_factory=dict)
    base_weight: float = Field(default=100, ge=0)
    health_threshold: Fraction = 0.5
    min_ready_nodes: NonNegInt = 1
    retired: bool = False  # kept in Git but drained and out of traffic

    @model_validator(mode="after")
    def _check(self) -> Self:
        _raise(_min_max(self.min_nodes, self.max_nodes, "min_nodes", "max_nodes"))
        return self


# ------------------------------------------------------------------------- gtm
class GtmRegion(StrictModel):
    """A region's share of one service's traffic. Unset fields come from the region."""

    name: str
    weight: float | None = Field(
        default=None, ge=0, validation_alias=AliasChoices("weight", "base_weight")
    )
    min_ready_nodes: NonNegInt | None = None
    health_threshold: Fraction | None = None
    fallback: bool = False

    def resolved(self, region: Region | None) -> GtmRegion:
        """Unset fields from the region, else :class:`Region`'s defaults (weight 100): the
        one place a GTM region's weight / min_ready_nodes / health_threshold resolve."""
        update = {
            name: getattr(region, source) if region else Region.model_fields[source].default
            for name, source in _FROM_REGION.items()
            if getattr(self, name) is None
        }
        return self.model_copy(update=update) if update else self


_FROM_REGION = {
    "weight": "base_weight",
    "min_ready_nodes": "min_ready_nodes",
    "health_threshold": "health_threshold",
}


class HealthCheck(StrictModel):
    """Active check XPlane runs against every node's address (origin format + thresholds)."""

    type: Literal["http", "tcp"] = "http"
    path: str = "/healthz"
    port: int | None = Field(
        default=None, ge=1, le=65535
    )  # default: the node's advertised port, else 80
    interval: Duration = timedelta(seconds=5)
    timeout: Duration = timedelta(seconds=2)
    healthy_threshold: int = Field(default=2, ge=1)  # consecutive successes before up
    unhealthy_threshold: int = Field(default=3, ge=1)  # consecutive failures before down
    expected_status: list[int] = Field(default_factory=lambda: list(range(200, 400)))

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.timeout >= self.interval:
            msg = (
                f"must be shorter than interval ({format_duration(self.interval)}), "
                f"not {format_duration(self.timeout)}"
            )
            raise FieldErrors([(("timeout",), msg)])
        return self


class LatencyPolicy(StrictModel):
    target_ms: float = Field(default=100, gt=0)
    floor: Fraction = 0.2


class DnsProviderConfigBase(StrictModel):
    ttl: int = Field(default=30, ge=1, le=86400)
    zone: ZoneName | None = None  # default: the domain's parent (api.svc.plus -> svc.plus)
    regions: list[str] | None = None  # publish only these regions through this provider
    record_type: Literal["A", "AAAA", "auto"] = "auto"
    owner_id: str = "xplane"  # ownership marker value (TXT registry)
    max_change_fraction: Fraction = 0.5  # safety threshold: larger plans need --force


class PowerDnsConfig(DnsProviderConfigBase):
    provider: Literal["powerdns"]
    api_url: str = "http://127.0.0.1:8081"
    server_id: str = "localhost"
    api_key_env: str = "PDNS_API_KEY"
    api_key_file: str | None = None
    lua_records: bool = True


class CloudflareConfig(DnsProviderConfigBase):
    provider: Literal["cloudflare"]
    mode: Literal["dns", "load_balancer"] = "dns"
    zone_id: str | None = None
    account_id: str | None = None  # needed for load_balancer pools
    api_token_env: str = "CLOUDFLARE_API_TOKEN"
    api_token_file: str | None = None
    base_url: str | None = None  # override for tests / proxies
    proxied: bool = False


class Route53Config(DnsProviderConfigBase):
    provider: Literal["route53"]
    hosted_zone_id: str | None = None  # default: found by zone name
    endpoint_url: str | None = None  # override for moto / proxies
    aws_region: str = "us-east-1"
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"


class AliDnsConfig(DnsProviderConfigBase):
    provider: Literal["alidns"]
    endpoint: str = "https://alidns.aliyuncs.com"
    line: str = "default"  # default | oversea | telecom | ...
    access_key_id_env: str = "ALIBABA_CLOUD_ACCESS_KEY_ID"
    access_key_secret_env: str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"


DnsProviderConfig = Annotated[
    PowerDnsConfig | CloudflareConfig | Route53Config | AliDnsConfig,
    Field(discriminator="provider"),
]


class MaintenanceWindow(StrictModel):
    """A region's traffic taken down to ``weight`` (0: none) for a window, then ramped back.

    Recurring (``cron`` + ``duration``) or one-off (``start`` + ``end`` or ``duration``);
    ``start``/``end`` without an offset are read in ``timezone``.
    """

    name: Name | None = None  # default: <region>-<index in the list>
    region: str
    cron: Cron | None = None
    start: datetime | None = None
    end: datetime | None = None
    timezone: TimeZone = "UTC"
    duration: Duration | None = None
    weight: Fraction = 0.0  # share of the region's weight kept during the window

    @model_validator(mode="after")
    def _check(self) -> Self:
        errors: list[tuple[Loc, str]] = []
        if (self.cron is None) == (self.start is None):
            both = "both are set" if self.cron else "neither is set"
            errors.append((("cron",), f"set either cron or start (with end or duration): {both}"))
        elif self.cron is not None:
            if self.end is not None:
                errors.append((("end",), "a cron window lasts for duration; end is for start"))
            if self.duration is None:
                errors.append((("duration",), "is required with cron"))
        elif self.start is not None:
            if (self.end is None) == (self.duration is None):
                errors.append((("end",), "set end or duration (one of them) with start"))
            elif self.end is not None and not self._opens_before_end(self.start, self.end):
                errors.append((("end",), f"must be after start ({self.start.isoformat()})"))
        errors += _duration_errors(self.duration)
        _raise(errors)
        return self

    def _opens_before_end(self, start: datetime, end: datetime) -> bool:
        occurrence = fixed_occurrence(start, end, self.timezone)
        return occurrence.opens < occurrence.closes

    def label(self, index: int) -> str:
        """Name of the window (unique in its policy): ``name``, else ``<region>-<index>``."""
        return self.name or f"{self.region}-{index}"


class GtmPolicy(StrictModel):
    """``gtm/<service>.yaml``: how a service's traffic is shared between regions."""

    service: Name
    domain: Fqdn
    regions: list[GtmRegion] = Field(min_length=1)
    health: HealthCheck = Field(default_factory=HealthCheck)
    latency: LatencyPolicy = Field(default_factory=LatencyPolicy)
    dns: DnsProviderConfig | None = None
    providers: list[DnsProviderConfig] = Field(default_factory=list)
    interval: Duration = timedelta(seconds=10)  # GTM loop tick
    slow_start: Duration = timedelta(minutes=2)  # ramp for weight increases
    # DNS deadband: rewrite when an address comes or goes, or a share of answers moves
    # by at least this much (absolute: 0.02 = 2 percentage points).
    min_share_change: Fraction = 0.02
    max_error_rate: Fraction = 0.5  # a node above this is not ready
    # Envoy's panic threshold: when every region is at 0 and the service's healthy
    # share is below this, fail open spreads over every registered node.
    panic_threshold: Fraction = 0.5
    # Maintenance windows: a region's weight held down (ramped back by slow_start after).
    maintenance: list[MaintenanceWindow] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _no_heartbeat_timeout(cls, data: Any, info: ValidationInfo) -> Any:
        """A per-service timeout would make GTM call a node ready that the world state,
        autoscaler and API call down: there is one, a process setting (xplane/heartbeat.py).
        A config file setting it is refused; a payload an older version stored (workflow
        histories, the config table) still decodes, without the key."""
        if isinstance(data, dict) and "heartbeat_timeout" in data:
            from_config = bool((info.context or {}).get(CONFIG_FILE_CONTEXT))
            if from_config and data["heartbeat_timeout"] is not None:
                msg = (
                    "no longer set per service: when a node is down is one setting for every "
                    "reader, XPLANE_HEARTBEAT_TIMEOUT (default 3 x XPLANE_HEARTBEAT_INTERVAL) "
                    "on the API and worker processes; remove this key"
                )
                raise FieldErrors([(("heartbeat_timeout",), msg)])
            data = {k: v for k, v in data.items() if k != "heartbeat_timeout"}
        return data

    @model_validator(mode="after")
    def _check(self) -> Self:
        """Regions listed once; each provider's zone (defaulted) holds the domain and its
        ``regions`` limit names only this policy's regions."""
        errors: list[tuple[Loc, str]] = []
        seen: set[str] = set()
        for i, region in enumerate(self.regions):
            if region.name in seen:
                errors.append((("regions", i, "name"), f"region {region.name!r} is listed twice"))
            seen.add(region.name)
        for loc, provider in self._providers_with_loc():
            if provider.zone is None:
                provider.zone = default_zone(self.domain)
            if self.domain != provider.zone and not self.domain.endswith("." + provider.zone):
                msg = f"domain {self.domain!r} is not inside zone {provider.zone!r}"
                errors.append(((*loc, "zone"), msg))
            for j, name in enumerate(provider.regions or []):
                if name not in seen:
                    known = ", ".join(r.name for r in self.regions)
                    msg = f"region {name!r} is not one of this service's gtm regions ({known})"
                    errors.append(((*loc, "regions", j), msg))
        labels: set[str] = set()
        for i, window in enumerate(self.maintenance):
            if window.region not in seen:
                known = ", ".join(r.name for r in self.regions)
                msg = f"region {window.region!r} is not one of this service's gtm regions ({known})"
                errors.append((("maintenance", i, "region"), msg))
            label = window.label(i)
            if label in labels:
                errors.append((("maintenance", i, "name"), f"window {label!r} is listed twice"))
            labels.add(label)
        _raise(errors)
        return self

    def _providers_with_loc(self) -> list[tuple[Loc, DnsProviderConfig]]:
        found: list[tuple[Loc, DnsProviderConfig]] = []
        if self.dns is not None:
            found.append((("dns",), self.dns))
        found.extend((("providers", i), p) for i, p in enumerate(self.providers))
        return found

    def dns_providers(self) -> list[DnsProviderConfig]:
        """``dns:`` (one) and ``providers:`` (many) as one list."""
        return ([self.dns] if self.dns is not None else []) + list(self.providers)


# ------------------------------------------------------------------- autoscale
class AutoscaleGlobal(StrictModel):
    cpu_window: Duration = timedelta(seconds=60)
    min_regions: NonNegInt = 1
    max_regions: NonNegInt | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        _raise(_min_max(self.min_regions, self.max_regions, "min_regions", "max_regions"))
        return self


class ScheduleWindow(StrictModel):
    """Scheduled capacity: while open (``cron`` in ``timezone``, for ``duration``), the
    region's floor is at least ``min_nodes``; capacity is committed ahead by the lead."""

    name: Name
    cron: Cron
    timezone: TimeZone = "UTC"
    duration: Duration
    min_nodes: NonNegInt

    @model_validator(mode="after")
    def _check(self) -> Self:
        _raise(_duration_errors(self.duration))
        return self


class AutoscaleRegion(StrictModel):
    """Capacity policy of one region (origin fields first, XPlane's after)."""

    min_nodes: NonNegInt = 1
    max_nodes: NonNegInt = 10
    scale_up_cpu: Fraction = 0.7
    scale_down_cpu: Fraction = 0.3
    scale_up_step: int = Field(default=1, ge=1)
    scale_down_step: int = Field(default=1, ge=1)
    quota: NonNegInt | None = None
    target_cpu: Fraction | None = None  # per-node target: proportional (HPA-style) step
    target_qps_per_node: float | None = Field(default=None, gt=0)
    max_rtt_ms: float | None = Field(default=None, gt=0)  # above -> scale up
    max_error_rate: Fraction | None = None  # above -> scale up
    prometheus_url: str | None = None  # optional extra metrics source
    schedules: list[ScheduleWindow] = Field(default_factory=list)  # scheduled floors

    @model_validator(mode="after")
    def _check(self) -> Self:
        errors = _min_max(self.min_nodes, self.max_nodes, "min_nodes", "max_nodes")
        if self.scale_down_cpu >= self.scale_up_cpu:
            msg = f"must be below scale_up_cpu ({self.scale_up_cpu}), not {self.scale_down_cpu}"
            errors.append((("scale_down_cpu",), msg))
        names: set[str] = set()
        for i, window in enumerate(self.schedules):
            if window.min_nodes > self.max_nodes:
                msg = (
                    f"must be <= the region's max_nodes ({self.max_nodes}), not {window.min_nodes}"
                )
                errors.append((("schedules", i, "min_nodes"), msg))
            if window.name in names:
                errors.append((("schedules", i, "name"), f"window {window.name!r} is listed twice"))
            names.add(window.name)
        _raise(errors)
        return self


_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def _max_replace(value: int | str) -> int | str:
    """``max_replace``: a node count (``>= 1``) or a share of the pool (``"25%"``)."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"must be at least 1 node or a percentage, not {value}")
        return value
    text = value.strip()
    if text.isdigit():
        return _max_replace(int(text))
    match = _PERCENT.match(text)
    if not match or not 0 < float(match.group(1)) <= 100:
        raise ValueError(f"must be a node count or a percentage in (0%, 100%], not {value!r}")
    return text


MaxReplace = Annotated[int | str, AfterValidator(_max_replace)]


class Cooldown(StrictModel):
    scale_up: Duration = timedelta(minutes=1)
    scale_down: Duration = timedelta(minutes=5)


class AutoscalePolicy(StrictModel):
    """``autoscale/<service>.yaml``: how many nodes each region's pool should have."""

    service: Name
    global_: AutoscaleGlobal = Field(default_factory=AutoscaleGlobal, alias="global")
    regions: dict[str, AutoscaleRegion] = Field(min_length=1)
    cooldown: Cooldown = Field(default_factory=Cooldown)
    jitter: Duration = timedelta(seconds=5)
    interval: Duration = timedelta(seconds=30)  # autoscale loop tick
    terraform_timeout: Duration = timedelta(minutes=15)
    node_ready_timeout: Duration = timedelta(minutes=10)
    # Replacement budget per decision (Karpenter's disruption budgets): at most this
    # many given-up nodes are replaced at once; a percentage is of the pool, at least 1.
    max_replace: MaxReplace = "25%"
    # Scheduled windows are committed this long ahead at least (more when XPlane measured
    # commit -> terraform -> nodes active taking longer: the recent p95).
    lead_min: Duration = timedelta(minutes=10)

    model_config = StrictModel.model_config | {"populate_by_name": True}


# ------------------------------------------------------------------------ tree
class ConfigTree(StrictModel):
    """One whole, validated revision of the config repo (normalised)."""

    regions: dict[str, Region] = Field(default_factory=dict)  # by region name
    gtm: dict[str, GtmPolicy] = Field(default_factory=dict)  # by service
    autoscale: dict[str, AutoscalePolicy] = Field(default_factory=dict)  # by service

    @model_validator(mode="after")
    def _check_keys(self) -> Self:
        """Each entry is filed under its own name (the store and the loops look them up so)."""
        errors: list[tuple[Loc, str]] = []
        for key, region in self.regions.items():
            if key != region.name:
                errors.append((("regions", key), f"filed under {key!r} but named {region.name!r}"))
        for kind, policies in (("gtm", self.gtm), ("autoscale", self.autoscale)):
            for key, policy in policies.items():
                if key != policy.service:
                    msg = f"filed under {key!r} but its service is {policy.service!r}"
                    errors.append(((kind, key), msg))
        _raise(errors)
        return self

    def services(self) -> list[str]:
        """Every service with a gtm or an autoscale policy, sorted."""
        return sorted(set(self.gtm) | set(self.autoscale))

    def regions_of_service(self, service: str) -> set[str]:
        """Regions a service runs in: its gtm regions and its autoscale regions."""
        names: set[str] = set()
        if service in self.gtm:
            names.update(r.name for r in self.gtm[service].regions)
        if service in self.autoscale:
            names.update(self.autoscale[service].regions)
        return names

    def services_in_region(self, region: str) -> list[str]:
        """Services that name ``region`` in their gtm or autoscale policy, sorted."""
        return [s for s in self.services() if region in self.regions_of_service(s)]

    def gtm_region(self, service: str, region: str) -> GtmRegion | None:
        """The resolved GTM entry of ``region`` in ``service``'s policy, if any."""
        policy = self.gtm.get(service)
        return next((r for r in policy.regions if r.name == region), None) if policy else None

    def summary(self) -> str:
        """``3 regions, 1 gtm policy, 1 autoscale policy``."""
        regions = f"{len(self.regions)} region" + ("" if len(self.regions) == 1 else "s")
        gtm = f"{len(self.gtm)} gtm polic" + ("y" if len(self.gtm) == 1 else "ies")
        auto = f"{len(self.autoscale)} autoscale polic" + (
            "y" if len(self.autoscale) == 1 else "ies"
        )
        return f"{regions}, {gtm}, {auto}"
