"""Agent logs: one JSON object per line on stderr (ts, level, msg, node_id, extra fields).

Callers pass structured fields with ``extra={"fields": {...}}``; tokens are never among them.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any


class NodeIdHolder:
    """Mutable: the node id is known only after registration."""

    value: str | None = None


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
        return json.dumps(entry, default=str)


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
