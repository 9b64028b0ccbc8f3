"""`xplane autoscale plan` (what-if) and `xplane autoscale commit` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import git
import pytest
from typer.testing import CliRunner

from xplane.cli.main import app

FIXTURE = Path(__file__).parent / "fixtures" / "node-pool" / "jp.tfvars"

REGIONS = """\
regions:
  - name: jp
    quota: 4
  - name: sg
  - name: us
  - name: eu
"""

AUTOSCALE = """\
service: svc-plus
global:
  cpu_window: 60s
regions:
  jp:
    min_nodes: 1
    max_nodes: 5
  sg:
    min_nodes: 0
    max_nodes: 5
    scale_up_cpu: 0.6
    scale_down_cpu: 0.25
  us:
    min_nodes: 2
    max_nodes: 6
  eu:
    min_nodes: 1
    max_nodes: 5
    max_rtt_ms: 200
cooldown:
  scale_up: 1m
  scale_down: 5m
"""

NOW = "2024-05-01T12:00:00Z"


def node(id: str, region: str, **extra: Any) -> dict[str, Any]:
    return {"id": id, "service": "svc-plus", "region": region, "address": "10.0.0.1", **extra}


WORLD: dict[str, Any] = {
    "now": NOW,
    "nodes": [
        node("jp-1", "jp", cpu=0.9, rtt_ms=40),
        node("jp-2", "jp", cpu=0.8, rtt_ms=60),
        node("jp-3", "jp", cpu=0.05, state="warm"),  # not serving: ignored in the mean
        node("sg-1", "sg", cpu=0.1),
        node("sg-2", "sg", cpu=0.2),
        node("us-1", "us", cpu=0.5),
        node("us-2", "us", status="down", state="delete"),  # given up: replaced
        node("us-3", "us", state="delete"),
        node("eu-1", "eu", cpu=0.5, rtt_ms=100),
        node("eu-2", "eu", cpu=0.5, rtt_ms=400),
    ],
    "pools": [
        {"service": "svc-plus", "region": "jp", "node_count": 4},
        {"service": "svc-plus", "region": "sg", "node_count": 3},
        {"service": "svc-plus", "region": "us", "node_count": 2},
        {
            "service": "svc-plus",
            "region": "eu",
            "node_count": 2,
            "last_scaled_at": "2024-05-01T11:59:30Z",
        },
    ],
}

runner = CliRunner()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    (root / "regions").mkdir(parents=True)
    (root / "autoscale").mkdir()
    (root / "regions" / "all.yaml").write_text(REGIONS)
    (root / "autoscale" / "svc-plus.yaml").write_text(AUTOSCALE)
    return root


def _world(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "world.json"
    path.write_text(json.dumps(data))
    return path


def test_plan_json_exact(config_dir: Path, tmp_path: Path) -> None:
    args = ["--config", str(config_dir), "--world", str(_world(tmp_path, WORLD))]
    result = runner.invoke(app, ["autoscale", "plan", *args, "--output", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "services": {
            "svc-plus": {
                "eu": {
                    "current": 2,
                    "desired": 2,
                    "reason": "cooldown: last change 30s ago < 60s "
                    "(wanted 3: rtt p90 370ms > 200ms for 60s)",
                },
                "jp": {"current": 4, "desired": 4, "reason": "cpu 0.85 > 0.70 for 60s; at quota 4"},
                "sg": {"current": 3, "desired": 2, "reason": "cpu 0.15 < 0.25 for 60s"},
                "us": {
                    "current": 2,
                    "desired": 3,
                    "reason": "1 healthy < min_nodes 2: replace 1",
                },
            }
        }
    }


def test_plan_holds_a_down_node_its_lifecycle_has_not_given_up(
    config_dir: Path, tmp_path: Path
) -> None:
    """Seen down but not deleted (inside the down grace): not replaced on silence alone."""
    world = json.loads(json.dumps(WORLD))
    for entry in world["nodes"]:
        if entry["id"] == "us-2":
            entry["state"] = "active"
    args = ["--config", str(config_dir), "--world", str(_world(tmp_path, world))]
    result = runner.invoke(app, ["autoscale", "plan", *args, "--output", "json"])
    assert result.exit_code == 0, result.output
    us = json.loads(result.stdout)["services"]["svc-plus"]["us"]
    assert (us["current"], us["desired"]) == (2, 2), us["reason"]


def test_plan_table(config_dir: Path, tmp_path: Path) -> None:
    args = ["--config", str(config_dir), "--world", str(_world(tmp_path, WORLD))]
    result = runner.invoke(app, ["autoscale", "plan", *args])
    assert result.exit_code == 0, result.output
    sg = next(line for line in result.stdout.splitlines() if " sg " in line)
    assert "3" in sg and "2 (-)" in sg and "cpu 0.15 < 0.25 for 60s" in sg


def test_plan_reports_config_and_world_errors(config_dir: Path, tmp_path: Path) -> None:
    bad = {**WORLD, "nodes": [{**WORLD["nodes"][0], "cpu": 3}]}
    world = _world(tmp_path, bad)
    result = runner.invoke(
        app, ["autoscale", "plan", "--config", str(config_dir), "--world", str(world)]
    )
    assert result.exit_code == 1
    assert "world.json: not a valid world snapshot" in result.stderr
    assert "nodes.0.cpu" in result.stderr

    (config_dir / "autoscale" / "svc-plus.yaml").write_text(
        AUTOSCALE.replace("max_nodes: 6", "max_nodes: -1")
    )
    result = runner.invoke(
        app,
        ["autoscale", "plan", "--config", str(config_dir), "--world", str(_world(tmp_path, WORLD))],
    )
    assert result.exit_code == 1
    assert "autoscale/svc-plus.yaml" in result.stderr and "max_nodes" in result.stderr


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    bare = tmp_path / "infra.git"
    git.Repo.init(bare, bare=True, initial_branch="main")
    seed = git.Repo.clone_from(str(bare), tmp_path / "seed")
    (tmp_path / "seed" / "infra" / "node-pool").mkdir(parents=True)
    (tmp_path / "seed" / "infra" / "node-pool" / "jp.tfvars").write_bytes(FIXTURE.read_bytes())
    seed.git.add("-A")
    actor = git.Actor("seed", "seed@example.test")
    seed.index.commit("initial", author=actor, committer=actor)
    seed.git.push("origin", "HEAD:refs/heads/main")
    return bare


def test_commit_cli(remote: Path, tmp_path: Path) -> None:
    work = ["--workdir", str(tmp_path / "work")]
    base = ["autoscale", "commit", "--repo", str(remote), "--region", "jp", *work]
    result = runner.invoke(app, [*base, "--count", "3", "--reason", "launch day"])
    assert result.exit_code == 0, result.output
    tip = git.Repo(remote).commit("main")
    assert result.stdout.startswith(
        f"committed {tip.hexsha[:12]}: infra/node-pool/jp.tfvars 2 -> 3"
    )
    assert str(tip.message).startswith(
        "feat(xplane-autoscaler): scale jp pool to 3 nodes\n\nlaunch day\n"
    )
    assert tip.author.name == tip.committer.name == "xplane-autoscaler"

    again = runner.invoke(app, [*base, "--count", "3"])
    assert again.exit_code == 0
    assert again.stdout.startswith(
        "unchanged: infra/node-pool/jp.tfvars already has node_count = 3"
    )
    assert git.Repo(remote).commit("main") == tip

    missing = runner.invoke(
        app, ["autoscale", "commit", "--repo", str(remote), "--region", "sg", "--count", "1", *work]
    )
    assert missing.exit_code == 1
    assert "error: infra/node-pool/sg.tfvars not found" in missing.stderr


def test_a_manual_commit_is_audited_when_the_database_is_known(
    remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import select

    from xplane.store.db import make_engine, make_sessionmaker
    from xplane.store.events import EventRow
    from xplane.store.migrate import upgrade

    monkeypatch.delenv("XPLANE_DB_URL", raising=False)
    db = f"sqlite:///{tmp_path / 'xplane.db'}"
    upgrade(db)
    work = ["--workdir", str(tmp_path / "work")]
    base = ["autoscale", "commit", "--repo", str(remote), "--region", "jp", *work]
    audited = runner.invoke(app, [*base, "--count", "4", "--reason", "launch", "--db", db])
    assert audited.exit_code == 0, audited.output
    unaudited = runner.invoke(app, [*base, "--count", "5"])
    assert unaudited.exit_code == 0
    assert "not in XPlane's audit trail" in unaudited.stderr
    failed = runner.invoke(
        app,
        [
            *("autoscale", "commit", "--repo", str(remote), "--region", "sg", "--count", "1"),
            *work,
            "--db",
            db,
        ],
    )
    assert failed.exit_code == 1

    engine = make_engine(db)
    with make_sessionmaker(engine)() as session:
        events = list(session.scalars(select(EventRow).order_by(EventRow.id)))
    engine.dispose()
    assert [(e.kind, e.region, e.data["outcome"]) for e in events] == [
        ("audit.autoscale.commit", "jp", "ok"),
        ("audit.autoscale.commit", "sg", "failed"),
    ]
    assert events[0].data["who"]["name"].startswith("cli:")
    assert "launch" in events[0].data["reason"] and "node_count 4" in events[0].data["reason"]
