"""The audit trail: one ``audit.<action>`` event per mutating action.

Who (how they proved it, subject, name, grants), what (action, target), why (the
caller's reason), how it ended (``ok``, ``refused``: 401/403, ``failed``:
anything else), the request id and the time. Stored in the event log, so
``xplane events --kind audit.`` lists them; event pruning never deletes them.
Never a token or a secret: identities are named, not quoted.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session

from xplane.auth.roles import Identity, Target
from xplane.store.events import AUDIT_PREFIX, EventRow, record_event
from xplane.store.tables import column_length

Outcome = Literal["ok", "refused", "failed"]
REASON_MAX = 512
ANONYMOUS = "anonymous"


def outcome_of(status: int) -> Outcome:
    if status < 400:
        return "ok"
    return "refused" if status in (401, 403) else "failed"


def record_audit(
    session: Session,
    *,
    action: str,
    identity: Identity | None,
    target: Target,
    outcome: Outcome,
    reason: str | None = None,
    request_id: str | None = None,
    status: int | None = None,
    source: str = "api",
    at: datetime | None = None,
) -> EventRow:
    who = identity.name if identity is not None else ANONYMOUS
    role = identity.role if identity is not None else "none"
    reason = _clean((reason or "").strip()[:REASON_MAX]) or None
    target = Target(**{k: _clean(v) if v is not None else None for k, v in vars(target).items()})
    message = f"{who} ({role}): {action} {target.describe()}: {outcome}"
    if reason:
        message += f" ({reason})"
    data: dict[str, object] = {
        "action": action,
        "outcome": outcome,
        "who": {
            "kind": identity.kind if identity is not None else None,
            "subject": identity.subject if identity is not None else None,
            "name": who,
        },
        "role": role,
        "target": {k: v for k, v in vars(target).items() if v is not None},
        "reason": reason,
        "request_id": request_id,
    }
    if status is not None:
        data["status"] = status
    return record_event(
        session,
        (AUDIT_PREFIX + action)[: column_length("events", "kind")],
        message,
        source=source,
        service=_fit(target.service, "service"),
        region=_fit(target.region, "region"),
        node_id=_fit(target.node_id, "node_id"),
        correlation_id=_fit(request_id, "correlation_id"),
        data=data,
        at=at,
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean(value: str) -> str:
    """Control characters out (PostgreSQL refuses NUL; a newline would forge log lines)."""
    return _CONTROL.sub("?", value)


def _fit(value: str | None, column: str) -> str | None:
    return None if value is None else value[: column_length("events", column)]


def cli_identity() -> Identity:
    """Who runs a CLI command that writes the store directly: the OS user, with the
    store's own rights (whoever holds the database URL holds everything)."""
    import getpass

    from xplane.auth.roles import Grant, Role

    name = f"cli:{getpass.getuser()}"
    return Identity("cli", subject=name, name=name, grants=(Grant(Role.admin),))
