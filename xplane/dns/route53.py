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
from collections.abc import Callable, Iterable
from typing import Any

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from xplane.config.models import Route53Config
from xplane.dns import ratelimit
from xplane.dns.base import (
    ApplyResult,
    DesiredService,
    DnsAuthError,
    DnsChange,
    DnsError,
    DnsPlan,
    DnsProvider,
    DnsRetryableError,
    DnsValidationError,
    check_safety,
    ownership_value,
)
from xplane.dns.common import (
    RecordTypeSetting,
    canonical_address,
    check_ownership,
    effective_desired,
    fqdn,
    is_marker,
    quantise,
    region_addresses,
    txt_quote,
    txt_unquote,
)

KIND = "route53"
MAX_WEIGHT = 255
ADDRESS_TYPES = ("A", "AAAA", "CNAME")  # record types at the name XPlane replaces
RecordKey = tuple[str, str | None]  # (type, SetIdentifier)

RETRYABLE_CODES = {
    "Throttling",
    "ThrottlingException",
    "PriorRequestNotComplete",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "InternalFailure",
}
THROTTLING_CODES = {"Throttling", "ThrottlingException", "RequestLimitExceeded"}
AUTH_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "ExpiredToken",
    "MissingAuthenticationToken",
}


# ------------------------------------------------------------------ pure parts
def set_identifier(service: str, region: str) -> str:
    return f"{service}-{region}"


def desired_record_sets(
    desired: DesiredService, record_type: RecordTypeSetting
) -> dict[RecordKey, dict[str, Any]]:
    """The weighted address record sets XPlane wants at the name (TXT not included)."""
    regions = region_addresses(desired, record_type)
    weights = quantise({r: w for r, (w, _) in regions.items()}, MAX_WEIGHT)
    name = fqdn(desired.name)
    out: dict[RecordKey, dict[str, Any]] = {}
    for region, (_, by_type) in sorted(regions.items()):
        sid = set_identifier(desired.service, region)
        for rtype, addresses in sorted(by_type.items()):
            out[(rtype, sid)] = {
                "Name": name,
                "Type": rtype,
                "SetIdentifier": sid,
                "Weight": weights[region],
                "TTL": desired.ttl,
                "ResourceRecords": [{"Value": a} for a in addresses],
            }
    return out


def record_key(record_set: dict[str, Any]) -> RecordKey:
    return (str(record_set["Type"]), record_set.get("SetIdentifier"))


def comparable(record_set: dict[str, Any]) -> dict[str, Any]:
    """What makes two record sets equal (value order and address spelling ignored)."""
    rtype = record_set["Type"]
    values = [str(v["Value"]) for v in record_set.get("ResourceRecords") or []]
    if rtype in ("A", "AAAA"):
        values = [canonical_address(v) for v in values]
    elif rtype == "TXT":
        values = [txt_quote(txt_unquote(v)) for v in values]
    view = {
        "Type": rtype,
        "SetIdentifier": record_set.get("SetIdentifier"),
        "Weight": record_set.get("Weight"),
        "TTL": record_set.get("TTL"),
        "Values": sorted(values),
    }
    for extra in ("HealthCheckId", "AliasTarget", "Region", "Failover", "GeoLocation"):
        if record_set.get(extra) is not None:
            view[extra] = record_set[extra]
    return view


def validate_change_batch(changes: list[dict[str, Any]], current: Iterable[dict[str, Any]]) -> None:
    """Refuse a batch Route53 would reject (moto accepts these, so XPlane must check).

    ``current`` are the record sets at the name before the batch.
    """
    seen: set[RecordKey] = set()
    final = {record_key(r): r for r in current}
    for change in changes:
        record_set = change["ResourceRecordSet"]
        key = record_key(record_set)
        where = f"{change['Action']} {record_set.get('Name')} {key[0]}" + (
            f" {key[1]}" if key[1] else ""
        )
        if key in seen:
            raise DnsValidationError(f"{KIND}: {where} appears twice in one change batch")
        seen.add(key)
        if change["Action"] == "DELETE":
            final.pop(key, None)
            continue
        weight = record_set.get("Weight")
        if weight is not None and (not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT):
            raise DnsValidationError(
                f"{KIND}: {where}: Weight {weight!r} is not in 0..{MAX_WEIGHT}"
            )
        if weight is not None and not 1 <= len(key[1] or "") <= 128:
            raise DnsValidationError(
                f"{KIND}: {where}: a weighted set needs a 1..128 char SetIdentifier"
            )
        if not record_set.get("ResourceRecords") and not record_set.get("AliasTarget"):
            raise DnsValidationError(f"{KIND}: {where}: no values")
        final[key] = record_set
    for rtype in {k[0] for k in final}:
        kinds = {k[1] is None for k in final if k[0] == rtype}
        if len(kinds) > 1:
            raise DnsValidationError(
                f"{KIND}: the batch would leave simple and weighted {rtype} record sets "
                "mixed on one name (Route53 rejects this)"
            )


def classify_client_error(what: str, code: str, status: int, message: str) -> DnsError:
    """botocore ClientError -> XPlane's error classes."""
    text = f"{KIND}: {what}: {code} (HTTP {status}): {message}"
    if code in RETRYABLE_CODES or status == 429 or status >= 500:
        return DnsRetryableError(text)
    if code in AUTH_CODES or status in (401, 403):
        return DnsAuthError(text)
    return DnsValidationError(text)


def _change_view(record_set: dict[str, Any] | None) -> dict[str, Any] | None:
    if record_set is None:
        return None
    view = comparable(record_set)
    view.pop("Type")
    return {k: v for k, v in view.items() if v is not None}


def _values(record_sets: Iterable[dict[str, Any]]) -> list[str]:
    return sorted({str(v["Value"]) for rs in record_sets for v in rs.get("ResourceRecords") or []})


def _key_text(key: RecordKey) -> str:
    return f"{key[0]}/{key[1]}" if key[1] else key[0]


# ------------------------------------------------------------------- provider
class Route53Provider(DnsProvider):
    """Route53 hosted zone ``config.hosted_zone_id`` or the one named ``config.zone``.

    Credentials: the environment variables the config names, else boto3's own chain.
    botocore's retries are off: the activity's retry policy retries DnsRetryableError.
    """

    kind = KIND

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
            classified = classify_client_error(what, code, status, str(error.get("Message", "")))
            if code in THROTTLING_CODES or status == 429:
                headers = meta.get("HTTPHeaders") or {}
                retry_after = ratelimit.parse_retry_after(headers.get("retry-after"))
                raise ratelimit.throttled(self.bucket, str(classified), retry_after) from None
            raise classified from None
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise DnsAuthError(f"{KIND}: {what}: {err}") from None
        except ParamValidationError as err:
            raise DnsValidationError(f"{KIND}: {what}: {err}") from None
        except (BotoConnectionError, HTTPClientError) as err:
            raise DnsRetryableError(f"{KIND}: {what}: {type(err).__name__}: {err}") from None
        except BotoCoreError as err:
            raise DnsRetryableError(f"{KIND}: {what}: {type(err).__name__}: {err}") from None

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

    # ---------------------------------------------------------------- plan
    def plan(self, desired: DesiredService, *, takeover: bool = False) -> DnsPlan:
        desired = effective_desired(desired, self.config)
        name = fqdn(desired.name)
        zone_id = self.zone_id(desired.zone)
        current = {record_key(r): r for r in self.record_sets(zone_id, name)}

        marker = ownership_value(desired.owner_id, desired.service)
        txt_values = [
            txt_unquote(str(v["Value"]))
            for (rtype, _), r in current.items()
            if rtype == "TXT"
            for v in r.get("ResourceRecords") or []
        ]
        present = sorted({k for k in current if k[0] in ADDRESS_TYPES})
        owned = check_ownership(
            provider=KIND,
            name=desired.name,
            marker=marker,
            txt_values=txt_values,
            foreign_address_sets=[k[0] for k in present],
            takeover=takeover,
        )
        plan = DnsPlan(provider=KIND, service=desired.service, name=desired.name)
        wanted = desired_record_sets(desired, self.config.record_type)
        if not wanted and not present:
            return plan  # nothing published and nothing to publish
        kept = sorted({v for v in txt_values if not is_marker(v)} | {marker})
        wanted[("TXT", None)] = {
            "Name": name,
            "Type": "TXT",
            "TTL": desired.ttl,
            "ResourceRecords": [{"Value": txt_quote(v)} for v in kept],
        }
        managed = [k for k in current if k[0] in ADDRESS_TYPES or k[0] == "TXT"]

        deletes: list[dict[str, Any]] = []
        upserts: list[dict[str, Any]] = []
        for key in sorted(set(managed) | set(wanted), key=lambda k: (k[0], k[1] or "")):
            before, after = current.get(key), wanted.get(key)
            if after is None:
                assert before is not None
                deletes.append({"Action": "DELETE", "ResourceRecordSet": before})
                plan.changes.append(
                    DnsChange(action="delete", key=_key_text(key), before=_change_view(before))
                )
            elif before is None or comparable(before) != comparable(after):
                upserts.append({"Action": "UPSERT", "ResourceRecordSet": after})
                plan.changes.append(
                    DnsChange(
                        action="create" if before is None else "update",
                        key=_key_text(key),
                        before=_change_view(before),
                        after=_change_view(after),
                    )
                )
        batch = deletes + upserts  # deletes first: a simple set may give way to weighted ones
        validate_change_batch(batch, current.values())
        plan.owned_record_sets = len(managed) if owned else 0
        plan.removes_all_addresses = bool(present) and not any(
            k[0] in ADDRESS_TYPES for k in wanted
        )
        if owned:
            plan.addresses_before = _values(current[k] for k in present)
            plan.addresses_after = _values(s for k, s in wanted.items() if k[0] in ADDRESS_TYPES)
        plan.context = {"zone_id": zone_id, "changes": batch}
        return plan

    # --------------------------------------------------------------- apply
    def apply(self, plan: DnsPlan, *, force: bool = False) -> ApplyResult:
        check_safety(plan, self.config.max_change_fraction, force)
        result = ApplyResult(provider=KIND, name=plan.name, applied=False)
        if plan.empty:
            return result
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
        return result.model_copy(
            update={"applied": True, "write_calls": 1, "changes": plan.changes}
        )


def _unescape(name: str) -> str:
    """Route53 returns some characters as octal escapes (``\\052`` for ``*``)."""
    if "\\" not in name:
        return name
    out, i = [], 0
    while i < len(name):
        if name[i] == "\\" and name[i + 1 : i + 4].isdigit():
            out.append(chr(int(name[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(name[i])
            i += 1
    return "".join(out)
