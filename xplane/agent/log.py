"""Agent logs: one JSON object per line on stderr (ts, level, msg, node_id, extra fields).

The formatter is the control plane's (:class:`~xplane.observability.logging.JsonFormatter`)
with the agent's keys. Callers pass structured fields with ``extra={"fields": {...}}``;
tokens are never among them. As a net under that rule the formatter redacts the tokens
the agent holds (registered with :func:`remember_secret`), the control plane's secret
environment variables and URL passwords, in the message, the fields and the traceback.
"""

from __future__ import annotations

import logging
import sys
import threading

from xplane.observability.logging import AGENT_KEYS, JsonFormatter, secret_values


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


def agent_formatter(node: NodeIdHolder) -> JsonFormatter:
    """JSON lines with the agent's keys, its node id, and its secrets redacted."""
    return JsonFormatter(
        AGENT_KEYS, context=lambda: {"node_id": node.value}, secrets=_known_secrets
    )


def setup_logging(node: NodeIdHolder, level: int = logging.INFO) -> logging.Logger:
    """The ``xplane.agent`` logger writing JSON lines to stderr; quiets httpx's request logs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(agent_formatter(node))
    logger = logging.getLogger("xplane.agent")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logger
