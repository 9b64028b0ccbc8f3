"""One GitOps sync: fetch the config repo, validate it, make it the current config.

The Temporal activity and ``xplane sync --once`` both call :func:`sync_once`,
so what an operator sees from the CLI is what the control plane does.

A commit is taken whole or not at all: any validation issue rejects it, the
issues are recorded (visible via ``last_revision``) and the last good revision
stays in force. A commit already seen (applied, or rejected last time) writes
nothing, so a tick on an idle repo is free and leaves no trace. Applied and
rejected commits also go to the event log (``config.applied``/``config.rejected``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from xplane.config.diff import ConfigChanges
from xplane.config.errors import ConfigError, ConfigIssue
from xplane.config.loader import load_config
from xplane.config.revisions import RevisionStatus
from xplane.gitops.repo import fetch_repo, redact
from xplane.store import config_store
from xplane.store.db import transaction
from xplane.store.events import record_event

SOURCE = "gitops-sync"  # the events' source: the workflow id of the sync loop


class SyncStatus(StrEnum):
    APPLIED = "applied"  # a new revision is in force; ``changes`` says what changed
    UNCHANGED = "unchanged"  # the branch head is the revision in force
    REJECTED = "rejected"  # the head is invalid; recorded; the previous revision stays
    UNCHANGED_REJECTED = "unchanged_rejected"  # the head was already rejected; nothing written


class SyncResult(BaseModel):
    status: SyncStatus
    sha: str
    previous_sha: str | None = None  # the revision in force before this sync
    changes: ConfigChanges = Field(default_factory=ConfigChanges)
    issues: list[ConfigIssue] = Field(default_factory=list)
    message: str

    @property
    def ok(self) -> bool:
        """False when the branch head is invalid (the CLI's exit code)."""
        return self.status in (SyncStatus.APPLIED, SyncStatus.UNCHANGED)


def revision_source(source: str, branch: str) -> str:
    """What ``config_revisions.source`` records: ``<repo>#<branch>``, credentials removed."""
    return f"{redact(source)}#{branch}"


def sync_once(
    session_factory: sessionmaker[Session], source: str, branch: str, workdir: Path
) -> SyncResult:
    """Fetch ``branch`` of ``source`` and apply it if new and valid. Raises RepoError
    when the repo cannot be fetched (nothing is written then)."""
    fetched = fetch_repo(source, branch, workdir)
    sha = fetched.sha
    with session_factory() as session:
        current = config_store.current_revision(session)
        last = config_store.last_revision(session)
    previous = current.sha if current else None
    short = sha[:12]

    if sha == previous:
        return SyncResult(
            status=SyncStatus.UNCHANGED,
            sha=sha,
            previous_sha=previous,
            message=f"{short} is already in force",
        )
    if last and last.sha == sha and last.status == RevisionStatus.REJECTED:
        return SyncResult(
            status=SyncStatus.UNCHANGED_REJECTED,
            sha=sha,
            previous_sha=previous,
            issues=last.errors,
            message=f"{short} was already rejected ({_issues(last.errors)}); {_in_force(previous)}",
        )

    where = revision_source(source, branch)
    try:
        tree = load_config(fetched.path)
    except ConfigError as exc:
        result = SyncResult(
            status=SyncStatus.REJECTED,
            sha=sha,
            previous_sha=previous,
            issues=exc.issues,
            message=f"{short} rejected ({_issues(exc.issues)}); {_in_force(previous)}",
        )
        with transaction(session_factory) as session:
            config_store.record_rejected(session, sha, where, exc.issues)
            _record_event(session, result, where)
        return result

    with transaction(session_factory) as session:
        changes = config_store.save_revision(session, sha, tree, where)
        result = SyncResult(
            status=SyncStatus.APPLIED,
            sha=sha,
            previous_sha=previous,
            changes=changes,
            message=f"{short} applied ({tree.summary()}): {changes.describe()}",
        )
        _record_event(session, result, where)
    return result


def _record_event(session: Session, result: SyncResult, where: str) -> None:
    """``config.applied`` / ``config.rejected`` in the event log, in the same transaction."""
    data = result.model_dump(mode="json", include={"sha", "previous_sha", "changes", "issues"})
    data["source"] = where
    record_event(session, f"config.{result.status.value}", result.message, source=SOURCE, data=data)


def _in_force(previous: str | None) -> str:
    return f"{previous[:12]} stays in force" if previous else "no config is in force yet"


def _issues(issues: list[ConfigIssue]) -> str:
    return f"{len(issues)} issue" + ("" if len(issues) == 1 else "s")
