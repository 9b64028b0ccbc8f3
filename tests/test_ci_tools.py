"""CI never passes by skipping: a missing tool fails under CI=true, skips elsewhere;
scripts/setup.sh stops when it cannot install a Debian package; the PowerDNS schema
is found wherever a distribution puts it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xplane.dns.pdns_server import SCHEMA_NAME, find_schema

ROOT = Path(__file__).resolve().parent.parent
INNER = """
from tests.support.tools import needs_tool

@needs_tool("xplane-no-such-tool")
def test_missing():
    pass

@needs_tool("sh")
def test_present():
    pass
"""


def _inner_run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> pytest.RunResult:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_subprocess("-p", "tests.support.tools", "-p", "no:cacheprovider")


def test_a_missing_tool_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _inner_run(pytester, monkeypatch, "true")
    result.assert_outcomes(passed=1, errors=1)
    assert "xplane-no-such-tool not installed" in result.stdout.str()
    assert result.ret != 0


def test_a_missing_tool_skips_outside_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = _inner_run(pytester, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=1)
    assert result.ret == 0


def test_no_test_skips_on_a_missing_tool_by_itself() -> None:
    """Every tool check goes through needs_tool (a skipif on a tool would skip in CI)."""
    offenders = [
        f"{path.name}:{n}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        if path.name != Path(__file__).name
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"skipif\(.*(which|available)|importorskip", line)
    ]
    assert offenders == []


def _setup_sandbox(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A copy of setup.sh whose venv is already "installed", on a PATH where pdns_server
    is missing, `id -u` says root and apt-get fails."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "setup.sh", repo / "scripts" / "setup.sh")
    (repo / "pyproject.toml").write_text("")
    (repo / ".venv" / "bin").mkdir(parents=True)
    (repo / ".venv" / "bin" / "python").symlink_to(shutil.which("python3") or "/usr/bin/python3")
    stamp = repo / ".venv" / ".xplane-installed"
    stamp.touch()
    os.utime(repo / "pyproject.toml", (1, 1))  # older than the stamp: nothing to pip install
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, body in {
        "apt-get": 'echo "apt-get $*" >> "$SHIM_LOG"; [ "$1" = update ] || exit 100',
        "id": "echo 0",
    }.items():
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    for tool in ("bash", "dirname", "touch", "env"):  # all setup.sh needs besides the shims
        found = shutil.which(tool)
        assert found
        (shims / tool).symlink_to(found)
    env = {"PATH": str(shims), "SHIM_LOG": str(tmp_path / "apt.log"), "HOME": str(tmp_path)}
    return repo, env


def test_setup_fails_when_a_package_cannot_be_installed(tmp_path: Path) -> None:
    repo, env = _setup_sandbox(tmp_path)
    done = subprocess.run(
        ["bash", str(repo / "scripts" / "setup.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "install -y" in (tmp_path / "apt.log").read_text()  # it did try
    assert done.returncode != 0, done.stdout + done.stderr
    assert "could not install" in done.stderr and "pdns-server" in done.stderr
    assert "setup: ready" not in done.stdout


@pytest.mark.parametrize(
    "folder",
    [
        "usr/share/pdns-backend-sqlite3/schema",  # Debian, Ubuntu
        "usr/share/doc/pdns",  # Fedora, RHEL, Alpine
        "usr/share/doc/powerdns",  # Arch
        "usr/share/pdns-sqlite/schema",  # an unknown package: found by the glob
    ],
)
def test_pdns_schema_found_where_distributions_put_it(tmp_path: Path, folder: str) -> None:
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / SCHEMA_NAME).write_text("CREATE TABLE domains (id INTEGER);\n")
    found = find_schema({}, tmp_path, ask_packages=False)
    assert found == tmp_path / folder / SCHEMA_NAME


def test_pdns_schema_override_and_absence(tmp_path: Path) -> None:
    assert find_schema({}, tmp_path, ask_packages=False) is None
    own = tmp_path / "mine.sql"
    own.write_text("-- schema\n")
    assert find_schema({"XPLANE_PDNS_SCHEMA": str(own)}, tmp_path) == own
    assert find_schema({"XPLANE_PDNS_SCHEMA": str(tmp_path / "nope.sql")}, tmp_path) is None
