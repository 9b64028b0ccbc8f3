"""``xplane gtm apply``: a dry run by default, writes to a real PowerDNS only with --doit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.tools import needs_tool
from xplane.dns.pdns_server import PdnsServer

pytestmark = needs_tool("pdns_server")
XPLANE = str(Path(sys.executable).parent / "xplane")


def _tree(root: Path, api_url: str) -> Path:
    (root / "regions").mkdir(parents=True)
    (root / "gtm").mkdir()
    (root / "regions" / "global.yaml").write_text("regions:\n  - name: jp\n  - name: sg\n")
    (root / "gtm" / "svc.yaml").write_text(
        "service: svc\ndomain: api.svc.plus\nregions:\n  - {name: jp, weight: 75}\n"
        f"  - {{name: sg, weight: 25}}\ndns: {{provider: powerdns, api_url: '{api_url}'}}\n"
    )
    return root


def _world(path: Path) -> Path:
    nodes = [
        {"id": f"{r}-1", "service": "svc", "region": r, "address": a, "state": "active",
         "status": "up", "rtt_ms": 10, "error_rate": 0, "heartbeat_age_seconds": 1}
        for r, a in (("jp", "192.0.2.10"), ("sg", "192.0.2.20"))
    ]  # fmt: skip
    path.write_text(json.dumps({"nodes": nodes}))
    return path


def test_dry_run_then_doit_then_in_sync(tmp_path: Path) -> None:
    with PdnsServer(tmp_path / "pdns") as pdns:
        pdns.ensure_zone("svc.plus")
        env = {**os.environ, "PDNS_API_KEY": pdns.api_key}
        args = [XPLANE, "gtm", "apply", "--config", str(_tree(tmp_path / "cfg", pdns.api_url)),
                "--world", str(_world(tmp_path / "world.json"))]  # fmt: skip

        def rrsets() -> list[str]:
            zone = httpx.get(
                f"{pdns.api_url}/api/v1/servers/localhost/zones/svc.plus.", headers=pdns.headers
            ).json()
            return [f"{r['type']} {r['records'][0]['content']}" for r in zone["rrsets"]
                    if r["name"] == "api.svc.plus."]  # fmt: skip

        dry = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
        assert "create" in dry.stdout and "dry run: nothing written" in dry.stdout
        assert rrsets() == []

        done = subprocess.run(
            [*args, "--doit"], env=env, capture_output=True, text=True, check=True
        )
        assert "applied" in done.stdout
        lua = [r for r in rrsets() if r.startswith("LUA")]
        assert len(lua) == 1 and "192.0.2.10" in lua[0] and "192.0.2.20" in lua[0]
        assert "{750,'192.0.2.10'}" in lua[0].replace(" ", "") or "1000" in lua[0]

        again = subprocess.run(
            [*args, "--doit"], env=env, capture_output=True, text=True, check=True
        )
        assert "no changes" in again.stdout and "applied" not in again.stdout

        bad = subprocess.run(
            args, env={**env, "PDNS_API_KEY": "wrong"}, capture_output=True, text=True
        )
        assert bad.returncode == 1 and "error" in bad.stderr
