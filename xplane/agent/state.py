"""The agent's persisted identity (``--state-file``): node id and node token survive restarts."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import ValidationError

from xplane.domain import StrictModel


class AgentState(StrictModel):
    node_id: str
    token: str
    # What the token was issued for: a token is reused only for the same registration.
    server: str
    service: str
    region: str
    address: str


class StateFileError(Exception):
    """The state file exists but cannot be used; the message names the file."""


def load_state(path: Path) -> AgentState | None:
    """The saved state, None when the file does not exist."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateFileError(f"state file {path}: {exc.strerror}") from exc
    try:
        return AgentState.model_validate(json.loads(text))
    except (ValueError, ValidationError) as exc:
        # Never echo the content: it holds the node token.
        raise StateFileError(
            f"state file {path}: not a valid agent state ({type(exc).__name__})"
        ) from exc


def save_state(path: Path, state: AgentState) -> None:
    """Write atomically (temp file + rename), readable by the owner only: it holds a token."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(state.model_dump_json(indent=2))
    os.replace(tmp, path)


def forget_state(path: Path) -> None:
    path.unlink(missing_ok=True)
