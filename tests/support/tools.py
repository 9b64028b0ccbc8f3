"""Tests that need an external tool: skipped where it is missing, failed under CI.

Mark a test (or a module, through ``pytestmark``) with ``needs_tool("pdns_server")``
instead of a ``skipif``: on a developer's machine without the tool the test is
skipped, but under ``CI=true`` a missing tool fails the run, so CI can never pass
by quietly skipping what it was meant to test. Loaded as a plugin by
tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping

import pytest

from xplane.dns.pdns_server import PDNS_BINARY, pdns_available

MARKER = "needs_tool"


def in_ci(environ: Mapping[str, str] | None = None) -> bool:
    """``CI`` set to anything but empty/0/false/no (GitHub and GitLab set ``true``)."""
    env = os.environ if environ is None else environ
    return env.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def tool_available(name: str) -> bool:
    """On PATH; ``pdns_server`` also needs its SQLite backend's schema."""
    if name == PDNS_BINARY:
        return pdns_available()
    return shutil.which(name) is not None


def needs_tool(*names: str) -> pytest.MarkDecorator:
    """Mark a test as needing the named tools (see the module docstring)."""
    return getattr(pytest.mark, MARKER)(*names)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(*names): skip without the tools, fail under CI=true"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    wanted = {name for mark in item.iter_markers(MARKER) for name in mark.args}
    missing = sorted(name for name in wanted if not tool_available(name))
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed"
    if in_ci():
        pytest.fail(f"{reason}, and CI=true must not skip: run ./scripts/setup.sh", pytrace=False)
    pytest.skip(reason)
