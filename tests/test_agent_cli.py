"""`xplane agent` refuses bad flags up front (exit 2), naming the flag; tokens never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from xplane.cli.main import app

BASE = ["agent", "--server", "http://127.0.0.1:9", "--service", "svc-plus", "--region", "jp"]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("s3cret-bootstrap\n")
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--server", "cp.example:80"], "--server 'cp.example:80': expected an http"),
        (["--probe", "udp://10.0.0.1:53"], "probe target 'udp://10.0.0.1:53'"),
        (["--serve-health", "8080"], "--serve-health '8080': expected HOST:PORT"),
        (["--address", "node-1"], "--address 'node-1': expected an IPv4 or IPv6 address"),
        (["--error-pattern", "5[0-"], "invalid regular expression '5[0-'"),
        (["--label", "novalue"], "'novalue': expected KEY=VALUE"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag(token_file: Path, extra: list[str], message: str) -> None:
    result = CliRunner().invoke(app, [*BASE, "--token-file", str(token_file), *extra])
    assert result.exit_code == 2
    assert message in result.output
    assert "s3cret-bootstrap" not in result.output


def test_missing_or_empty_token_file_exits_2(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, [*BASE, "--token-file", str(tmp_path / "nope")])
    assert missing.exit_code == 2
    assert f"token file {tmp_path / 'nope'}: No such file or directory" in missing.output
    empty = tmp_path / "empty"
    empty.write_text("  \n")
    result = CliRunner().invoke(app, [*BASE, "--token-file", str(empty)])
    assert result.exit_code == 2
    assert f"token file {empty}: empty" in result.output
