"""Build the provider a GTM policy's ``dns:`` / ``providers:`` entry names."""

from __future__ import annotations

from xplane.config import models
from xplane.dns.plan import DnsProvider


def make_provider(config: models.DnsProviderConfig) -> DnsProvider:
    """One provider instance per call: credentials are read from env/file each time."""
    if isinstance(config, models.PowerDnsConfig):
        from xplane.dns.powerdns import PowerDnsProvider

        return PowerDnsProvider(config)
    if isinstance(config, models.Route53Config):
        from xplane.dns.route53 import Route53Provider

        return Route53Provider(config)
    if isinstance(config, models.CloudflareConfig):
        from xplane.dns.cloudflare import CloudflareDns

        return CloudflareDns(config)
    if isinstance(config, models.AliDnsConfig):
        from xplane.dns.alidns import AliDns

        return AliDns(config)
    raise ValueError(f"unknown DNS provider {config!r}")
