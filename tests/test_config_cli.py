"""`xplane config validate|show` on real directories."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from xplane.cli.main import app
from xplane.config.loader import load_config
from xplane.config.models import ConfigTree

EXAMPLE = Path(__file__).resolve().parents[1] / "example" / "gitops-config"
runner = CliRunner()


def _broken_copy(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    shutil.copytree(EXAMPLE, root)
    gtm = root / "gtm" / "svc-plus.yaml"
    gtm.write_text(gtm.read_text().replace("weight: 10\n", "weight: -10\n"))
    auto = root / "autoscale" / "svc-plus.yaml"
    auto.write_text(auto.read_text().replace("  sg:\n", "  kr:\n"))
    return root


def test_validate_ok_prints_summary() -> None:
    result = runner.invoke(app, ["config", "validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stdout == "valid: 3 regions, 1 gtm policy, 1 autoscale policy\n"


def test_validate_reports_each_error_on_its_own_stderr_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "validate", str(_broken_copy(tmp_path))])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("autoscale/svc-plus.yaml:")
    assert lines[0].endswith(
        ": regions.kr: unknown region 'kr': not declared in regions/ (cn-hangzhou, jp, sg)"
    )
    assert lines[1].startswith("gtm/svc-plus.yaml:")
    assert lines[1].endswith(": regions[1].weight: must be >= 0, not -10")


def test_validate_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "validate", str(tmp_path / "nope")])
    assert result.exit_code == 2


def test_show_json_round_trips() -> None:
    result = runner.invoke(app, ["config", "show", str(EXAMPLE), "--output", "json"])
    assert result.exit_code == 0, result.output
    shown = ConfigTree.model_validate(json.loads(result.stdout))
    assert shown == load_config(EXAMPLE)
    # Normalised: defaults filled, group expanded, weights resolved.
    assert shown.regions["sg"].provider == "aws"
    assert shown.gtm_region("svc-plus", "cn-hangzhou").weight == 50  # type: ignore[union-attr]


def test_show_yaml_equals_json(tmp_path: Path) -> None:
    as_yaml = runner.invoke(app, ["config", "show", str(EXAMPLE), "-o", "yaml"])
    as_json = runner.invoke(app, ["config", "show", str(EXAMPLE), "-o", "json"])
    assert as_yaml.exit_code == 0 and as_json.exit_code == 0
    assert yaml.safe_load(as_yaml.stdout) == json.loads(as_json.stdout)
    # Scalar lists are written on one line (expected_status has 200 entries).
    assert len(as_yaml.stdout.splitlines()) < 200


def test_show_invalid_tree_fails_like_validate(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show", str(_broken_copy(tmp_path))])
    assert result.exit_code == 1 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 2


def test_installed_entry_point(tmp_path: Path) -> None:
    """The real `xplane` script (one run: importing the whole CLI is slow under load)."""
    xplane = Path(sys.executable).with_name("xplane")
    bad = subprocess.run(
        [str(xplane), "config", "validate", str(_broken_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and bad.stdout == ""
    assert [line.split(":")[0] for line in bad.stderr.splitlines()] == [
        "autoscale/svc-plus.yaml",
        "gtm/svc-plus.yaml",
    ]
