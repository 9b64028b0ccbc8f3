"""Pydantic models of the GitOps declarations: ``gtm/``, ``autoscale/``, ``regions/``.

Strict (unknown keys are errors). The origin project's files validate unchanged;
everything XPlane adds has a default. ``xplane.config.loader`` parses a tree,
resolves defaults across files (a GTM region without ``weight`` takes the
region's ``base_weight``) and runs the cross-file checks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AliasChoices, Field

from xplane.domain import StrictModel
from xplane.durations import Duration

Fraction = Annotated[float, Field(ge=0, le=1)]
NonNegInt = Annotated[int, Field(ge=0)]


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


class Region(StrictModel):
    """Where nodes live: one cloud region (``regions/<name>.yaml`` or a group entry)."""

    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
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
    retired: bool = False


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


class HealthCheck(StrictModel):
    """Active check XPlane runs against every node's address (origin format + thresholds)."""

    type: Literal["http", "tcp"] = "http"
    path: str = "/healthz"
    port: int | None = Field(default=None, ge=1, le=65535)  # default: the node's advertised port, else 80
    interval: Duration = timedelta(seconds=5)
    timeout: Duration = timedelta(seconds=2)
    healthy_threshold: int = Field(default=2, ge=1)  # consecutive successes before up
    unhealthy_threshold: int = Field(default=3, ge=1)  # consecutive failures before down
    expected_status: list[int] = Field(default_factory=lambda: list(range(200, 400)))


class LatencyPolicy(StrictModel):
    target_ms: float = Field(default=100, gt=0)
    floor: Fraction = 0.2


class DnsProviderBase(StrictModel):
    ttl: int = Field(default=30, ge=1, le=86400)
    zone: str | None = None  # default: the domain's parent (api.svc.plus -> svc.plus)
    regions: list[str] | None = None  # publish only these regions through this provider
    record_type: Literal["A", "AAAA", "auto"] = "auto"
    owner_id: str = "xplane"  # ownership marker value (TXT registry)
    max_change_fraction: Fraction = 0.5  # safety threshold: larger plans need --force


class PowerDnsProvider(DnsProviderBase):
    provider: Literal["powerdns"]
    api_url: str = "http://127.0.0.1:8081"
    server_id: str = "localhost"
    api_key_env: str = "PDNS_API_KEY"
    api_key_file: str | None = None
    lua_records: bool = True


class CloudflareProvider(DnsProviderBase):
    provider: Literal["cloudflare"]
    mode: Literal["dns", "load_balancer"] = "dns"
    zone_id: str | None = None
    account_id: str | None = None  # needed for load_balancer pools
    api_token_env: str = "CLOUDFLARE_API_TOKEN"
    api_token_file: str | None = None
    base_url: str | None = None  # override for tests / proxies
    proxied: bool = False


class Route53Provider(DnsProviderBase):
    provider: Literal["route53"]
    hosted_zone_id: str | None = None  # default: found by zone name
    endpoint_url: str | None = None  # override for moto / proxies
    aws_region: str = "us-east-1"
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"


class AliDnsProvider(DnsProviderBase):
    provider: Literal["alidns"]
    endpoint: str = "https://alidns.aliyuncs.com"
    line: str = "default"  # default | oversea | telecom | ...
    access_key_id_env: str = "ALIBABA_CLOUD_ACCESS_KEY_ID"
    access_key_secret_env: str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET"


DnsProviderConfig = Annotated[
    PowerDnsProvider | CloudflareProvider | Route53Provider | AliDnsProvider,
    Field(discriminator="provider"),
]


class GtmPolicy(StrictModel):
    """``gtm/<service>.yaml``: how a service's traffic is shared between regions."""

    service: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    domain: str
    regions: list[GtmRegion] = Field(min_length=1)
    health: HealthCheck = Field(default_factory=HealthCheck)
    latency: LatencyPolicy = Field(default_factory=LatencyPolicy)
    dns: DnsProviderConfig | None = None
    providers: list[DnsProviderConfig] = Field(default_factory=list)
    interval: Duration = timedelta(seconds=10)  # GTM loop tick
    slow_start: Duration = timedelta(minutes=2)  # ramp for weight increases
    max_error_rate: Fraction = 0.5  # a node above this is not ready
    heartbeat_timeout: Duration | None = None  # default 3 x heartbeat interval

    def dns_providers(self) -> list[DnsProviderConfig]:
        """``dns:`` (one) and ``providers:`` (many) as one list."""
        return ([self.dns] if self.dns is not None else []) + list(self.providers)


# ------------------------------------------------------------------- autoscale
class AutoscaleGlobal(StrictModel):
    cpu_window: Duration = timedelta(seconds=60)
    min_regions: NonNegInt = 1
    max_regions: NonNegInt | None = None


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


class Cooldown(StrictModel):
    scale_up: Duration = timedelta(minutes=1)
    scale_down: Duration = timedelta(minutes=5)


class AutoscalePolicy(StrictModel):
    """``autoscale/<service>.yaml``: how many nodes each region's pool should have."""

    service: str = Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
    global_: AutoscaleGlobal = Field(default_factory=AutoscaleGlobal, alias="global")
    regions: dict[str, AutoscaleRegion] = Field(min_length=1)
    cooldown: Cooldown = Field(default_factory=Cooldown)
    jitter: Duration = timedelta(seconds=5)
    interval: Duration = timedelta(seconds=30)  # autoscale loop tick
    terraform_timeout: Duration = timedelta(minutes=15)
    node_ready_timeout: Duration = timedelta(minutes=10)

    model_config = StrictModel.model_config | {"populate_by_name": True}


# ------------------------------------------------------------------------ tree
class ConfigTree(StrictModel):
    """One whole, validated revision of the config repo (normalised)."""

    regions: dict[str, Region] = Field(default_factory=dict)
    gtm: dict[str, GtmPolicy] = Field(default_factory=dict)
    autoscale: dict[str, AutoscalePolicy] = Field(default_factory=dict)
