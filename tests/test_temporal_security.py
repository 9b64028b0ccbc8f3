"""TLS and API key for the Temporal connection, from XPLANE_TEMPORAL_* variables."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.service import TLSConfig

from xplane.temporal.client import connect
from xplane.temporal.security import TemporalSecurityError, security_from_env


def test_nothing_set_is_plain_text() -> None:
    security = security_from_env({})
    assert security.tls is False and security.api_key is None


def test_mtls_from_files(tmp_path: Path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_bytes(f"-----{name}-----".encode())
    security = security_from_env({
        "XPLANE_TEMPORAL_TLS_CA_FILE": str(tmp_path / "ca.pem"),
        "XPLANE_TEMPORAL_TLS_CERT_FILE": str(tmp_path / "client.pem"),
        "XPLANE_TEMPORAL_TLS_KEY_FILE": str(tmp_path / "client.key"),
        "XPLANE_TEMPORAL_TLS_SERVER_NAME": "temporal.internal",
    })  # fmt: skip
    assert isinstance(security.tls, TLSConfig)
    assert security.tls.server_root_ca_cert == b"-----ca.pem-----"
    assert security.tls.client_cert == b"-----client.pem-----"
    assert security.tls.client_private_key == b"-----client.key-----"
    assert security.tls.domain == "temporal.internal"


def test_api_key_implies_tls_and_never_shows(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sekrit-key\n")
    security = security_from_env({"XPLANE_TEMPORAL_API_KEY_FILE": str(key_file)})
    assert security.api_key == "sekrit-key" and isinstance(security.tls, TLSConfig)
    assert "sekrit" not in repr(security) and "sekrit" not in str(security)
    assert security_from_env({"XPLANE_TEMPORAL_API_KEY": "k2"}).api_key == "k2"


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"XPLANE_TEMPORAL_TLS": "yes-please"}, "XPLANE_TEMPORAL_TLS must be true or false"),
        ({"XPLANE_TEMPORAL_TLS_CERT_FILE": "{tmp}/c"}, "go together"),
        ({"XPLANE_TEMPORAL_TLS_CA_FILE": "{tmp}/missing.pem"}, "XPLANE_TEMPORAL_TLS_CA_FILE"),
        ({"XPLANE_TEMPORAL_API_KEY": "a", "XPLANE_TEMPORAL_API_KEY_FILE": "{tmp}/c"}, "not both"),
        ({"XPLANE_TEMPORAL_TLS": "false", "XPLANE_TEMPORAL_API_KEY": "a"}, "TLS is false"),
    ],
)
def test_bad_settings_name_the_variable_not_the_secret(
    tmp_path: Path, env: dict[str, str], named: str
) -> None:
    (tmp_path / "c").write_text("s3cr3t-content")
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    with pytest.raises(TemporalSecurityError, match=named) as err:
        security_from_env(env)
    assert "s3cr3t" not in str(err.value) and "'a'" not in str(err.value)


async def test_tls_is_really_used_on_the_connection(
    time_env: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a plain-text server (the test server), the default connects and TLS cannot."""
    address = time_env.client.service_client.config.target_host  # type: ignore[attr-defined]
    client = await connect(address)
    assert client.namespace == "default"
    monkeypatch.setenv("XPLANE_TEMPORAL_TLS", "true")
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(connect(address), timeout=30)
