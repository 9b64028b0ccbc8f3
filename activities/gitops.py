"""Activity: one GitOps sync of the config repo (pull -> validate -> upsert in one transaction).

A thin wrapper over :func:`xplane.gitops.sync.sync_once` (the code path
``xplane sync --once`` runs too). It is a plain ``def``: git and the database
are blocking I/O, so the worker runs it in its activity thread pool.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker
from temporalio import activity

from activities.errors import from_repo_error
from activities.heartbeating import heartbeating
from xplane.gitops.repo import RepoError
from xplane.gitops.sync import SyncResult, sync_once
from xplane.ids import GITOPS_SYNC_ID
from xplane.observability import metrics
from xplane.store.db import utcnow


class SyncRequest(BaseModel):
    source: str  # local path or URL of the config repo
    branch: str = "main"


class GitOpsActivities:
    """Built once by the worker with its session factory and clone-cache folder."""

    def __init__(self, session_factory: sessionmaker[Session], workdir: Path) -> None:
        self._session_factory = session_factory
        self._workdir = workdir

    @activity.defn(name="sync_config_repo")
    def sync_config_repo(self, req: SyncRequest) -> SyncResult:
        """An unreachable repo is retried by Temporal; an invalid branch name is not.
        A config that does not load is no failure: it is recorded as rejected."""
        try:
            with heartbeating():  # a slow pull shows as alive; a dead worker within seconds
                result = sync_once(self._session_factory, req.source, req.branch, self._workdir)
        except RepoError as err:
            raise from_repo_error(err) from err
        metrics.observe_loop(GITOPS_SYNC_ID, utcnow())
        return result
