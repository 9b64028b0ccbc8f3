"""Agent logs: one JSON object per line on stderr (ts, level, msg, node_id, extra fields).

Callers pass structured fields with ``extra={"fields": {...}}``; tokens are never among them.
As a net under that rule the formatter redacts the tokens the agent holds (registered
with :func:`remember_secret`), the control plane's secret environment variables and
URL passwords, in the message, the fields and the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from xplane.observability.logging import redact, secret_values


class NodeIdHolder:
    """Mutable: the node id is known only after registration."""

    value: str | None = None


_secrets_lock = threading.Lock()
_secrets: set[str] = set()


def remember_secret(value: str) -> None:
    """Redact ``value`` (a bootstrap or node token) from every later log line."""
    if value:
        with _secrets_lock:
            _secrets.add(value)


def _known_secrets() -> list[str]:
    with _secrets_lock:
        held = set(_secrets)
    # Longest first: a secret containing another is replaced whole.
    return sorted(held | set(secret_values()), key=len, reverse=True)


def _clean(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _clean(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, secrets) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    def __init__(self, node: NodeIdHolder) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "node_id": self.node.value,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(_clean(entry, _known_secrets()), default=str)


def setup_logging(node: NodeIdHolder, level: int = logging.INFO) -> logging.Logger:
    """The ``xplane.agent`` logger writing JSON lines to stderr; quiets httpx's request logs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node))
    logger = logging.getLogger("xplane.agent")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logger
