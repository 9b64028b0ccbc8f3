"""CLI: `xplane sync` commands (filled in by the module's owner)."""

from __future__ import annotations

import typer


def register(root: typer.Typer) -> None:
    """Attach this module's commands to the root `xplane` app."""
