"""``xplane gtm plan``: a config tree and a WORLD.json in, what the GTM loop would publish out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from xplane.cli import gtm_cmd

GTM = """\
service: svc-plus
domain: api.svc.plus

regions:
  - name: jp
    weight: 100
    min_ready_nodes: 1
    fallback: true
  - name: sg
    weight: 10
    min_ready_nodes: 1
    fallback: true

health:
  type: http
  path: /healthz
  interval: 5s
  timeout: 2s

latency:
  target_ms: 100

dns:
  provider: cloudflare
  ttl: 30
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    (root / "gtm").mkdir(parents=True)
    (root / "regions").mkdir()
    (root / "gtm" / "svc-plus.yaml").write_text(GTM)
    (root / "regions" / "jp.yaml").write_text(
        "provider: aws\ninstance_type: t3.small\nmin_nodes: 1\n"
    )
    (root / "regions" / "sg.yaml").write_text("provider: aws\nmin_nodes: 0\n")
    return root


def _node(i: int, region: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"{region}-{i}",
        "service": "svc-plus",
        "region": region,
        "address": f"10.{0 if region == 'jp' else 1}.0.{i}",
        "state": "active",
        "status": "up",
        "rtt_ms": 50,
        "error_rate": 0.01,
        "cpu": 0.3,
        "heartbeat_age_seconds": 2,
    } | fields


POOLS = [
    {"service": "svc-plus", "region": "jp", "node_count": 2},
    {"service": "svc-plus", "region": "sg", "node_count": 1},
]


def _run(config: Path, world: dict[str, Any] | str, tmp_path: Path, *extra: str) -> Any:
    path = tmp_path / "world.json"
    path.write_text(world if isinstance(world, str) else json.dumps(world))
    root = typer.Typer()
    root.callback()(lambda: None)
    gtm_cmd.register(root)
    args = ["gtm", "plan", "--config", str(config), "--world", str(path), *extra]
    return CliRunner(env={"COLUMNS": "200"}).invoke(root, args)


def _plan(config: Path, world: dict[str, Any], tmp_path: Path, *extra: str) -> dict[str, Any]:
    result = _run(config, world, tmp_path, "--output", "json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_healthy_world_json(config_dir: Path, tmp_path: Path) -> None:
    world = {"nodes": [_node(1, "jp"), _node(2, "jp"), _node(1, "sg")], "pools": POOLS}
    out = _plan(config_dir, world, tmp_path)
    svc = out["services"]["svc-plus"]
    assert svc["fail_open"] is False
    assert {k: v["effective_weight"] for k, v in svc["regions"].items()} == {"jp": 100, "sg": 10}
    jp = svc["regions"]["jp"]
    for key in ("base_weight", "health_ratio", "ready_nodes_factor", "latency_factor"):
        assert jp[key] == (100 if key == "base_weight" else 1)
    assert jp["ready_nodes"] == 2
    assert [(r["address"], r["region"], r["weight"]) for r in svc["records"]] == [
        ("10.0.0.1", "jp", 50),
        ("10.0.0.2", "jp", 50),
        ("10.1.0.1", "sg", 10),
    ]


def test_degraded_region_and_slow_latency(config_dir: Path, tmp_path: Path) -> None:
    nodes = [_node(1, "jp", rtt_ms=200), _node(2, "jp", status="down"), _node(1, "sg")]
    out = _plan(config_dir, {"nodes": nodes, "pools": POOLS}, tmp_path)
    jp = out["services"]["svc-plus"]["regions"]["jp"]
    assert jp["health_ratio"] == 0.5
    assert jp["ready_nodes_factor"] == 0.5
    assert jp["latency_factor"] == 0.5
    assert jp["effective_weight"] == 12.5


def test_all_down_fails_open(config_dir: Path, tmp_path: Path) -> None:
    nodes = [_node(1, "jp", heartbeat_age_seconds=600), _node(1, "sg", status="down")]
    out = _plan(config_dir, {"nodes": nodes, "pools": POOLS}, tmp_path)
    svc = out["services"]["svc-plus"]
    assert svc["fail_open"] is True
    # Below the panic threshold (0 of 2 ready): every registered node is published.
    assert "panic" in svc["reason"]
    assert svc["regions"]["jp"]["effective_weight"] == 100
    assert svc["regions"]["sg"]["effective_weight"] == 10
    assert [(r["node_id"], r["weight"]) for r in svc["records"]] == [("jp-1", 100), ("sg-1", 10)]


def test_service_filter_and_unknown_service(config_dir: Path, tmp_path: Path) -> None:
    world = {"nodes": [_node(1, "jp")]}
    assert list(_plan(config_dir, world, tmp_path, "--service", "svc-plus")["services"]) == [
        "svc-plus"
    ]
    result = _run(config_dir, world, tmp_path, "--service", "nope")
    assert result.exit_code == 2
    assert "'nope' has no gtm policy" in result.stderr


def test_bad_world_names_the_field(config_dir: Path, tmp_path: Path) -> None:
    node = _node(1, "jp")
    del node["address"]
    bad = {"nodes": [_node(0, "sg"), node | {"status": "sideways"}]}
    result = _run(config_dir, bad, tmp_path)
    assert result.exit_code == 2
    assert "nodes[1].address: is required" in result.stderr
    assert "nodes[1].status" in result.stderr
    assert "world.json" in result.stderr

    result = _run(config_dir, '{"nodes": [', tmp_path)
    assert result.exit_code == 2
    assert "invalid JSON" in result.stderr


def test_config_errors_exit_2(config_dir: Path, tmp_path: Path) -> None:
    (config_dir / "gtm" / "svc-plus.yaml").write_text(GTM.replace("weight: 10\n", "weight: -1\n"))
    result = _run(config_dir, {"nodes": []}, tmp_path)
    assert result.exit_code == 2
    assert "gtm/svc-plus.yaml" in result.stderr and "weight" in result.stderr


def test_table_output(config_dir: Path, tmp_path: Path) -> None:
    nodes = [_node(1, "jp", status="down"), _node(1, "sg", status="down")]
    result = _run(config_dir, {"nodes": nodes}, tmp_path, "--output", "table")
    assert result.exit_code == 0, result.stderr
    assert "FAIL OPEN" in result.stdout
    assert "jp (fallback)" in result.stdout and "10.1.0.1" in result.stdout
