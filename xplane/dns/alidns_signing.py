"""Alibaba Cloud RPC signature v1 (HMAC-SHA1), as AliDNS's 2015-01-09 API expects it.

Pure functions, no I/O. The algorithm (Alibaba's "RPC signature" documentation):

1. every parameter, common ones included, is percent-encoded (RFC 3986: only
   ``A-Z a-z 0-9 - _ . ~`` stay literal, a space is ``%20``);
2. the pairs are sorted by name and joined as ``k=v&k=v`` (the canonical query);
3. string-to-sign = ``METHOD&%2F&`` + percent-encode(canonical query);
4. signature = base64(HMAC-SHA1(key = secret + "&", string-to-sign)).

The official ``aliyun-python-sdk-core`` also sends (and signs) an empty
``SignatureType=`` parameter; :func:`signed_params` does the same so that its
signature is byte-identical to the SDK's (``tests/test_dns_alidns.py`` proves it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from urllib.parse import quote

API_VERSION = "2015-01-09"
SIGNATURE_METHOD = "HMAC-SHA1"
SIGNATURE_VERSION = "1.0"


def percent_encode(value: str) -> str:
    """RFC 3986 encoding as Alibaba wants it (``~`` literal, space ``%20``, ``*`` ``%2A``)."""
    return quote(value, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """``k=v&k=v`` with names sorted and both sides percent-encoded."""
    return "&".join(f"{percent_encode(k)}={percent_encode(v)}" for k, v in sorted(params.items()))


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign(method: str, params: Mapping[str, str], secret: str) -> str:
    """The ``Signature`` value of a request with these parameters (``Signature`` excluded)."""
    digest = hmac.new(
        (secret + "&").encode(), string_to_sign(method, params).encode(), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode()


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, seconds precision (``2024-05-01T12:00:00Z``)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def signed_params(
    action: str,
    params: Mapping[str, str],
    access_key_id: str,
    secret: str,
    *,
    method: str = "GET",
    nonce: str | None = None,
    timestamp: datetime | None = None,
) -> dict[str, str]:
    """All parameters of one API call: the action's, the common ones and ``Signature``.

    ``nonce`` and ``timestamp`` are fresh unless given (tests fix them).
    """
    full = {str(k): str(v) for k, v in params.items()}
    full.update(
        {
            "Action": action,
            "Format": "JSON",
            "Version": API_VERSION,
            "AccessKeyId": access_key_id,
            "SignatureMethod": SIGNATURE_METHOD,
            "SignatureType": "",  # the official SDK signs this empty parameter too
            "SignatureVersion": SIGNATURE_VERSION,
            "SignatureNonce": nonce or uuid.uuid4().hex,
            "Timestamp": format_timestamp(timestamp or datetime.now(UTC)),
        }
    )
    full["Signature"] = sign(method, full, secret)
    return full
