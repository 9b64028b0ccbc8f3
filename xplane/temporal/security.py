"""TLS and API-key settings for the Temporal connection, from the environment.

A self-hosted cluster with mTLS, or Temporal Cloud with an API key: both are
read from ``XPLANE_TEMPORAL_*`` variables (file paths for certificates and
keys, so no secret sits in the process environment unless the operator puts
it there). Nothing here is logged; errors name the variable, never the value.

==================================  =========================================
``XPLANE_TEMPORAL_TLS``             ``true`` for TLS with the system's roots,
                                    ``false`` to force plain text
``XPLANE_TEMPORAL_TLS_CA_FILE``     PEM roots for the server certificate
``XPLANE_TEMPORAL_TLS_CERT_FILE``   client certificate (mTLS), with the key
``XPLANE_TEMPORAL_TLS_KEY_FILE``    client private key (mTLS)
``XPLANE_TEMPORAL_TLS_SERVER_NAME`` name to verify instead of the address's
``XPLANE_TEMPORAL_API_KEY[_FILE]``  API key (Temporal Cloud); implies TLS
==================================  =========================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from temporalio.service import TLSConfig

PREFIX = "XPLANE_TEMPORAL_"


class TemporalSecurityError(ValueError):
    """A TLS or API-key setting is unusable; the message names the variable."""


@dataclass(frozen=True)
class TemporalSecurity:
    tls: TLSConfig | bool = False
    api_key: str | None = field(default=None, repr=False)  # never in a log line or repr


def security_from_env(environ: Mapping[str, str] | None = None) -> TemporalSecurity:
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(PREFIX + name, "").strip()
        return value or None

    def read(name: str) -> bytes | None:
        path = get(name)
        if path is None:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise TemporalSecurityError(
                f"{PREFIX}{name}: cannot read {path}: {err.strerror}"
            ) from None

    switch = get("TLS")
    if switch is not None and switch.lower() not in ("true", "false", "1", "0"):
        raise TemporalSecurityError(f"{PREFIX}TLS must be true or false, not {switch!r}")
    api_key = get("API_KEY")
    key_file = read("API_KEY_FILE")
    if api_key and key_file is not None:
        raise TemporalSecurityError(f"set {PREFIX}API_KEY or {PREFIX}API_KEY_FILE, not both")
    if key_file is not None:
        api_key = key_file.decode().strip() or None
    ca, cert, key = read("TLS_CA_FILE"), read("TLS_CERT_FILE"), read("TLS_KEY_FILE")
    if (cert is None) != (key is None):
        raise TemporalSecurityError(
            f"{PREFIX}TLS_CERT_FILE and {PREFIX}TLS_KEY_FILE go together (mTLS)"
        )
    server_name = get("TLS_SERVER_NAME")
    wants_tls = any(v is not None for v in (ca, cert, server_name)) or api_key is not None
    if switch is not None and switch.lower() in ("false", "0"):
        if wants_tls:
            raise TemporalSecurityError(
                f"{PREFIX}TLS is false but TLS files, a server name or an API key are set"
            )
        return TemporalSecurity(tls=False, api_key=None)
    if not wants_tls and switch is None:
        return TemporalSecurity()
    tls = TLSConfig(
        server_root_ca_cert=ca,
        client_cert=cert,
        client_private_key=key,
        domain=server_name,
    )
    return TemporalSecurity(tls=tls, api_key=api_key)
