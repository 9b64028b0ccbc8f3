"""Amazon Route53 provider (boto3): one weighted record set per region.

At the service's name XPlane owns:

* per region and address type, a weighted record set with ``SetIdentifier``
  ``<service>-<region>``, ``Weight`` = the region's weight quantised to 0..255 (the
  largest region gets 255, the others keep their proportion, a positive weight never
  rounds to 0) and the region's ready node addresses as its values. A region with
  weight 0 or no ready node is removed rather than published with weight 0: Route53
  serves zero-weight sets only when every set is zero, and XPlane's GTM layer already
  fails open before that.
* a simple ``TXT`` record set with the ownership marker (other TXT values kept).

All changes go in one ``ChangeResourceRecordSets`` batch (``UPSERT`` so a retried
create is not a duplicate; ``DELETE`` with the exact listed record set). XPlane checks
itself what AWS rejects but moto accepts: weights outside 0..255, the same set twice
in a batch, weighted and simple sets mixed on one name and type.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from xplane.config.models import Route53Config
from xplane.dns import ratelimit
from xplane.dns.base import api_error, unreachable
from xplane.dns.plan import (
    Capabilities,
    Current,
    DesiredService,
    DnsAuthError,
    DnsPlan,
    DnsProvider,
    DnsValidationError,
    RecordSet,
    canonical_address,
    fqdn,
    ownership_value,
    quantise,
    region_addresses,
    registry,
    txt_quote,
    txt_unquote,
)

KIND = "route53"
MAX_WEIGHT = 255
ADDRESS_TYPES = ("A", "AAAA", "CNAME")  # record types at the name XPlane replaces
RecordKey = tuple[str, str | None]  # (type, SetIdentifier)

RETRYABLE_CODES = ("PriorRequestNotComplete", "ServiceUnavailable", "InternalFailure")
AUTH_CODES = (
    "AccessDenied",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "MissingAuthenticationToken",
)


# ------------------------------------------------------------------ pure parts
def record_key(record_set: dict[str, Any]) -> RecordKey:
    return (str(record_set["Type"]), record_set.get("SetIdentifier"))


def record_set(native: dict[str, Any], owned: bool | None = True) -> RecordSet:
    """A Route53 record set as the plan sees it (value order and spelling ignored)."""
    rtype, sid = record_key(native)
    values = [str(v["Value"]) for v in native.get("ResourceRecords") or []]
    if rtype in ("A", "AAAA"):
        values = [canonical_address(v) for v in values]
    elif rtype == "TXT":
        values = [txt_quote(txt_unquote(v)) for v in values]
    data = {"TTL": native.get("TTL"), "Values": sorted(values)}
    for extra in ("HealthCheckId", "AliasTarget", "Region", "Failover", "GeoLocation"):
        if native.get(extra) is not None:
            data[extra] = native[extra]
    key = f"{rtype}/{sid}" if sid else rtype
    return RecordSet(
        key,
        rtype,
        data,
        weights={"Weight": native.get("Weight")},
        addresses=values if rtype in ADDRESS_TYPES else (),
        owned=owned,
        native=native,
        label=f"{key} {', '.join(values)}",
    )


def validate_change_batch(changes: list[dict[str, Any]], current: Iterable[dict[str, Any]]) -> None:
    """Refuse a batch Route53 would reject (moto accepts these, so XPlane must check).

    ``current`` are the record sets at the name before the batch.
    """
    seen: set[RecordKey] = set()
    final = {record_key(r): r for r in current}
    for change in changes:
        native = change["ResourceRecordSet"]
        key = record_key(native)
        where = f"{change['Action']} {native.get('Name')} {key[0]}" + (
            f" {key[1]}" if key[1] else ""
        )
        if key in seen:
            raise DnsValidationError(f"{KIND}: {where} appears twice in one change batch")
        seen.add(key)
        if change["Action"] == "DELETE":
            final.pop(key, None)
            continue
        weight = native.get("Weight")
        if weight is not None and (not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT):
            raise DnsValidationError(
                f"{KIND}: {where}: Weight {weight!r} is not in 0..{MAX_WEIGHT}"
            )
        if weight is not None and not 1 <= len(key[1] or "") <= 128:
            raise DnsValidationError(
                f"{KIND}: {where}: a weighted set needs a 1..128 char SetIdentifier"
            )
        if not native.get("ResourceRecords") and not native.get("AliasTarget"):
            raise DnsValidationError(f"{KIND}: {where}: no values")
        final[key] = native
    for rtype in {k[0] for k in final}:
        kinds = {k[1] is None for k in final if k[0] == rtype}
        if len(kinds) > 1:
            raise DnsValidationError(
                f"{KIND}: the batch would leave simple and weighted {rtype} record sets "
                "mixed on one name (Route53 rejects this)"
            )


# ------------------------------------------------------------------- provider
class Route53Provider(DnsProvider):
    """Route53 hosted zone ``config.hosted_zone_id`` or the one named ``config.zone``.

    Credentials: the environment variables the config names, else boto3's own chain.
    botocore's retries are off: the activity's retry policy retries DnsRetryableError.
    """

    kind = KIND
    config: Route53Config
    capabilities = Capabilities(max_weight=MAX_WEIGHT, weights="region")

    def __init__(self, config: Route53Config, *, client: Any = None) -> None:
        self.config = config
        self.client = client or self._make_client(config)
        self._zone_ids: dict[str, str] = {}
        # Route53's 5 requests/s is per AWS account: one bucket per access key and endpoint.
        key_id = os.environ.get(config.access_key_id_env) or "default-chain"
        self.bucket = ratelimit.limiter(
            KIND, ratelimit.account_key(config.endpoint_url or "aws", key_id)
        )

    @staticmethod
    def _make_client(config: Route53Config) -> Any:
        key_id = os.environ.get(config.access_key_id_env) or None
        secret = os.environ.get(config.secret_access_key_env) or None
        return boto3.client(
            "route53",
            endpoint_url=config.endpoint_url,
            region_name=config.aws_region,
            aws_access_key_id=key_id if key_id and secret else None,
            aws_secret_access_key=secret if key_id and secret else None,
            config=BotoConfig(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=5,
                read_timeout=20,
            ),
        )

    def _call(self, what: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        self.bucket.acquire()
        try:
            return method(**kwargs)
        except ClientError as err:
            error = err.response.get("Error", {})
            meta = err.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode", 0))
            code = str(error.get("Code", ""))
            message = f"{KIND}: {what}: {code} (HTTP {status}): {error.get('Message', '')}"
            retry_after = (meta.get("HTTPHeaders") or {}).get("retry-after")
            raise api_error(
                message,
                status,
                code,
                bucket=self.bucket,
                retry_after=retry_after,
                retryable=RETRYABLE_CODES,
                auth=AUTH_CODES,
            ) from None
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise DnsAuthError(f"{KIND}: {what}: {err}") from None
        except ParamValidationError as err:
            raise DnsValidationError(f"{KIND}: {what}: {err}") from None
        except BotoCoreError as err:  # connection errors and timeouts among them
            raise unreachable(f"{KIND}: {what}", err) from None

    # ---------------------------------------------------------------- reads
    def zone_id(self, zone: str) -> str:
        if self.config.hosted_zone_id:
            return self.config.hosted_zone_id.removeprefix("/hostedzone/")
        if zone in self._zone_ids:
            return self._zone_ids[zone]
        name = fqdn(zone)
        response = self._call(
            f"ListHostedZonesByName {name}",
            self.client.list_hosted_zones_by_name,
            DNSName=name,
            MaxItems="10",
        )
        ids = [
            str(z["Id"]).removeprefix("/hostedzone/")
            for z in response.get("HostedZones", [])
            if str(z["Name"]).lower() == name
        ]
        if not ids:
            raise DnsValidationError(f"{KIND}: no hosted zone named {name}")
        if len(ids) > 1:
            raise DnsValidationError(
                f"{KIND}: {len(ids)} hosted zones are named {name} ({', '.join(ids)}); "
                "set hosted_zone_id in the provider config"
            )
        self._zone_ids[zone] = ids[0]
        return ids[0]

    def record_sets(self, zone_id: str, name: str) -> list[dict[str, Any]]:
        """Every record set at ``name`` (FQDN with dot).

        Pages by ``NextRecordName``/``NextRecordType`` (and ``NextRecordIdentifier`` when
        given), never by a small MaxItems: moto's paging of weighted sets is broken.
        """
        found: dict[tuple[str, str | None], dict[str, Any]] = {}
        start: dict[str, str] = {"StartRecordName": name}
        seen_starts: set[tuple[str, ...]] = set()
        while True:
            page = self._call(
                f"ListResourceRecordSets {zone_id} {name}",
                self.client.list_resource_record_sets,
                HostedZoneId=zone_id,
                **start,
            )
            past_name = False
            for record_set in page.get("ResourceRecordSets", []):
                if _unescape(str(record_set["Name"])).lower() == name:
                    found[record_key(record_set)] = record_set
                else:  # listing is sorted from our name on: anything else is past it
                    past_name = True
            next_name = page.get("NextRecordName")
            if not page.get("IsTruncated") or past_name or not next_name:
                break
            if _unescape(str(next_name)).lower() != name:
                break
            start = {"StartRecordName": next_name, "StartRecordType": page["NextRecordType"]}
            if page.get("NextRecordIdentifier"):
                start["StartRecordIdentifier"] = page["NextRecordIdentifier"]
            marker = tuple(sorted(start.values()))
            if marker in seen_starts:  # no progress (moto without NextRecordIdentifier)
                break
            seen_starts.add(marker)
        return list(found.values())

    def read(self, desired: DesiredService) -> Current:
        zone_id = self.zone_id(desired.zone)
        found = self.record_sets(zone_id, fqdn(desired.name))
        txt = [
            txt_unquote(str(v["Value"]))
            for r in found
            if r["Type"] == "TXT"
            for v in r.get("ResourceRecords") or []
        ]
        owners = registry(txt, ownership_value(desired.owner_id, desired.service))
        sets = [
            record_set(r, owners.owned or (None if r["Type"] == "TXT" else False))
            for r in found
            if r["Type"] in ADDRESS_TYPES or r["Type"] == "TXT"
        ]
        context = {"zone_id": zone_id, "txt": owners.values, "listed": found}
        return Current(sets, owners.others, context)

    def wanted(self, desired: DesiredService, current: Current) -> list[RecordSet]:
        """Per region and address type a weighted set (``<service>-<region>``); the TXT."""
        regions = region_addresses(desired, self.config.record_type)
        weights = quantise({r: w for r, (w, _) in regions.items()}, self.capabilities.max_weight)
        name, ttl = fqdn(desired.name), desired.ttl
        values = [{"Value": txt_quote(v)} for v in current.context["txt"]]
        out = [record_set({"Name": name, "Type": "TXT", "TTL": ttl, "ResourceRecords": values})]
        for region, (_, by_type) in sorted(regions.items()):
            sid = f"{desired.service}-{region}"
            for rtype, addresses in sorted(by_type.items()):
                native: dict[str, Any] = {"Name": name, "Type": rtype, "SetIdentifier": sid}
                native |= {"Weight": weights[region], "TTL": ttl}
                native["ResourceRecords"] = [{"Value": a} for a in addresses]
                out.append(record_set(native))
        return out

    def check(self, plan: DnsPlan) -> None:
        """The one ChangeResourceRecordSets batch, checked as AWS would: deletes first (a
        simple set may give way to weighted ones), then UPSERTs (a retry is no duplicate)."""
        deletes = [c for c in plan.changes if c.action == "delete"]
        batch = [{"Action": "DELETE", "ResourceRecordSet": c.before} for c in deletes]
        upserts = [c for c in plan.changes if c.action != "delete"]
        batch += [{"Action": "UPSERT", "ResourceRecordSet": c.after} for c in upserts]
        validate_change_batch(batch, plan.context.pop("listed", []))
        plan.context["changes"] = batch

    def write(self, plan: DnsPlan) -> int:
        zone_id = plan.context["zone_id"]
        self._call(
            f"ChangeResourceRecordSets {zone_id} {plan.name}",
            self.client.change_resource_record_sets,
            HostedZoneId=zone_id,
            ChangeBatch={
                "Comment": f"xplane: {plan.summary()}"[:256],
                "Changes": plan.context["changes"],
            },
        )
        return 1


def _unescape(name: str) -> str:
    """Route53 returns some characters as octal escapes (``\\052`` for ``*``)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), name)
