"""Structured logs: one JSON object per line, Temporal context attached, secrets redacted.

Every line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``.
Records logged through ``temporalio.workflow.logger`` / ``temporalio.activity.logger``
carry Temporal's ``temporal_workflow`` / ``temporal_activity`` extras; they become
``workflow_id``, ``run_id``, ``workflow_type`` and ``activity``, ``activity_id``,
``attempt`` fields, so a log search can follow one workflow across workers.

Secrets: the values of the environment variables in :data:`SECRET_ENV_VARS`
(and every ``XPLANE_BOOTSTRAP_TOKEN_<REGION>``) are replaced by ``[REDACTED]``
in messages and tracebacks before any handler writes them, and the password of
every URL (``postgresql://user:pass@host`` -> ``postgresql://user:***@host``) is
masked. This is a net under the rule that code never logs a secret, not a licence to.
"""

from __future__ import annotations

import json as _json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

SECRET_ENV_VARS = (
    "XPLANE_BOOTSTRAP_TOKEN",
    "XPLANE_ADMIN_TOKEN",
    "XPLANE_WEBHOOK_SECRET",
    "XPLANE_GIT_WEBHOOK_SECRET",
    "XPLANE_TEMPORAL_API_KEY",
    "XPLANE_METRICS_TOKEN",
    "PDNS_API_KEY",
    "CLOUDFLARE_API_TOKEN",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
)
SECRET_ENV_PREFIXES = ("XPLANE_BOOTSTRAP_TOKEN_",)
REDACTED = "[REDACTED]"
# scheme://user:password@ -- userinfo cannot hold an unencoded / ? # @ or space (RFC 3986).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)[^@/?#\s]+@")

# LogRecord attributes that are not user extras (everything else is passed through).
_RESERVED = frozenset(
    set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__)
    | {"message", "asctime", "taskName"}
    | {"temporal_workflow", "temporal_activity", "workflow_info", "activity_info"}
)
# Temporal's extras -> our field names.
_WORKFLOW_FIELDS = {
    "workflow_id": "workflow_id",
    "run_id": "run_id",
    "workflow_type": "workflow_type",
}
_ACTIVITY_FIELDS = {
    "workflow_id": "workflow_id",
    "workflow_run_id": "run_id",
    "workflow_type": "workflow_type",
    "activity_type": "activity",
    "activity_id": "activity_id",
    "attempt": "attempt",
}
_HANDLER_MARK = "_xplane_handler"


def temporal_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The workflow/activity identity a Temporal logger attached to ``record``, if any."""
    out: dict[str, Any] = {}
    for attr, mapping in (
        ("temporal_workflow", _WORKFLOW_FIELDS),
        ("temporal_activity", _ACTIVITY_FIELDS),
    ):
        details = getattr(record, attr, None)
        if isinstance(details, Mapping):
            out.update(
                {ours: details[theirs] for theirs, ours in mapping.items() if theirs in details}
            )
    return out


@dataclass(frozen=True)
class LogKeys:
    """The keys of a JSON log line's fixed fields (the agent keeps its shorter names)."""

    time: str = "time"
    level: str = "level"
    logger: str | None = "logger"  # None: no logger field
    message: str = "message"
    exception: str = "exception"
    lowercase_level: bool = False


CONTROL_PLANE_KEYS = LogKeys()
AGENT_KEYS = LogKeys(time="ts", logger=None, message="msg", exception="error", lowercase_level=True)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, for the API, the worker, the CLI and the agent.

    User ``extra=`` fields are kept, and a ``fields`` dict among them is merged in
    (``extra={"fields": {...}}`` may use names ``LogRecord`` reserves); values that are
    not JSON become strings. ``context`` adds fields to every line (the agent's
    ``node_id``). With ``secrets``, every string in the line is redacted with them
    (the agent, which has no :class:`RedactSecrets` filter on its handler).
    """

    def __init__(
        self,
        keys: LogKeys = CONTROL_PLANE_KEYS,
        *,
        context: Callable[[], Mapping[str, Any]] | None = None,
        secrets: Callable[[], list[str]] | None = None,
    ) -> None:
        super().__init__()
        self.keys = keys
        self.context = context
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        keys = self.keys
        at = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            keys.time: at.isoformat(timespec="milliseconds"),
            keys.level: record.levelname.lower() if keys.lowercase_level else record.levelname,
        }
        if keys.logger is not None:
            entry[keys.logger] = record.name
        entry[keys.message] = record.getMessage()
        if self.context is not None:
            entry.update(self.context())
        entry.update(temporal_fields(record))
        for key, value in record.__dict__.items():
            if key == "fields" and isinstance(value, Mapping):
                entry.update(value)
            elif key not in _RESERVED and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry[keys.exception] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        if self.secrets is not None:
            entry = redact_values(entry, self.secrets())
        return _json.dumps(entry, default=str, ensure_ascii=False)


def secret_values(
    environ: Mapping[str, str] | None = None, names: Iterable[str] = SECRET_ENV_VARS
) -> list[str]:
    """Values to redact: the named variables and the per-region bootstrap tokens, longest
    first (so a secret containing another is replaced whole)."""
    env = os.environ if environ is None else environ
    wanted = set(names)
    found = {
        v
        for k, v in env.items()
        if v and (k in wanted or any(k.startswith(p) for p in SECRET_ENV_PREFIXES))
    }
    return sorted(found, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret value replaced and every URL's password masked."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return _URL_PASSWORD.sub(r"\g<head>***@", text) if "://" in text else text


def redact_values(value: Any, secrets: list[str]) -> Any:
    """:func:`redact` applied to every string in ``value`` (dicts, lists and tuples)."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: redact_values(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(v, secrets) for v in value]
    return value


class RedactSecrets(logging.Filter):
    """Replace secret values in a record's message and traceback (attach to handlers).

    The environment is read on every record, so a secret set after start-up (or
    rotated) is covered too; that is a handful of dict lookups per line.
    """

    def __init__(
        self, extra_names: Iterable[str] = (), environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__()
        self._names = (*SECRET_ENV_VARS, *extra_names)
        self._environ = environ

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = secret_values(self._environ, self._names)
        message = record.getMessage()
        cleaned = redact(message, secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, secrets)
        return True


def _level(level: str) -> int:
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(
            f"invalid log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return value


CHATTY_HTTP_LOGGERS = ("httpx", "httpcore")


def configure_logging(
    level: str = "INFO",
    json: bool = True,
    *,
    stream: TextIO | None = None,
    extra_secret_envs: Iterable[str] = (),
) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr) as JSON lines (or plain text).

    Idempotent: a handler installed by an earlier call is replaced, other handlers
    are left alone. ``extra_secret_envs`` names more variables to redact (a DNS
    provider's ``api_key_env`` when it is not a default name). With JSON on,
    Temporal's loggers stop appending their info dict to the message: it is in
    the fields.
    """
    import temporalio.activity
    import temporalio.workflow

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(RedactSecrets(extra_secret_envs))
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(_level(level))
    # One INFO line per HTTP request (health checks, DNS API calls) buries what matters,
    # and request URLs can carry signed query strings: request lines only at DEBUG.
    for name in CHATTY_HTTP_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
        )
    temporalio.workflow.logger.workflow_info_on_message = not json
    temporalio.activity.logger.activity_info_on_message = not json
    return handler


def configure_logging_from_env(
    environ: Mapping[str, str] | None = None, *, stream: TextIO | None = None
) -> logging.Handler:
    """``XPLANE_LOG_LEVEL`` (INFO) and ``XPLANE_LOG_FORMAT`` (json | text, default json)."""
    env = os.environ if environ is None else environ
    fmt = env.get("XPLANE_LOG_FORMAT", "json").strip().lower()
    if fmt not in ("json", "text"):
        raise ValueError(f"XPLANE_LOG_FORMAT must be json or text, not {fmt!r}")
    return configure_logging(env.get("XPLANE_LOG_LEVEL", "INFO"), json=fmt == "json", stream=stream)
