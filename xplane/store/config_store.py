"""Config revisions and the policies they carry: the repository.

Every config repo commit the sync looks at becomes one ``config_revisions`` row
(applied or rejected; a commit already seen writes nothing). The *current*
policies live one row per entry in ``regions``, ``gtm_policies`` and
``autoscale_policies`` (:mod:`xplane.store.config_tables`): each holds the
entry's normalised document and the revision that last changed it. What a new
tree changes is the pure :func:`xplane.config.diff.diff_docs`.

Functions take a session and never commit: the caller owns the transaction
(:func:`xplane.store.db.transaction`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from sqlalchemy import delete, inspect, select
from sqlalchemy.orm import Session

from xplane.config.diff import (
    ConfigChanges,
    ConfigDocs,
    Doc,
    diff_docs,
    docs_service_regions,
    docs_tree,
    tree_docs,
)
from xplane.config.errors import ConfigIssue
from xplane.config.models import ConfigTree
from xplane.config.revisions import RevisionInfo, RevisionStatus
from xplane.store.config_tables import (
    AutoscalePolicyRow,
    ConfigRevisionRow,
    GtmPolicyRow,
    RegionRow,
)
from xplane.store.db import Base, utcnow


def _stored_docs(session: Session) -> ConfigDocs:
    return ConfigDocs(
        regions={r.name: r.doc for r in session.scalars(select(RegionRow))},
        gtm={r.service: r.doc for r in session.scalars(select(GtmPolicyRow))},
        autoscale={r.service: r.doc for r in session.scalars(select(AutoscalePolicyRow))},
    )


def _region_row(name: str, doc: Doc, revision_id: int, now: datetime) -> RegionRow:
    return RegionRow(
        name=name,
        doc=doc,
        provider=doc["provider"],
        retired=bool(doc.get("retired", False)),
        revision_id=revision_id,
        updated_at=now,
    )


def _gtm_row(service: str, doc: Doc, revision_id: int, now: datetime) -> GtmPolicyRow:
    return GtmPolicyRow(
        service=service, doc=doc, domain=doc["domain"], revision_id=revision_id, updated_at=now
    )


def _autoscale_row(service: str, doc: Doc, revision_id: int, now: datetime) -> AutoscalePolicyRow:
    return AutoscalePolicyRow(service=service, doc=doc, revision_id=revision_id, updated_at=now)


def _write(
    session: Session,
    table: type[Base],
    old: Mapping[str, Doc],
    new: Mapping[str, Doc],
    make_row: Callable[[str, Doc], Base],
) -> None:
    """Delete the entries gone from ``new``; upsert those that differ from ``old``."""
    gone = old.keys() - new.keys()
    if gone:
        key = inspect(table).primary_key[0]
        session.execute(delete(table).where(key.in_(gone)))
    for name, doc in new.items():
        if old.get(name) != doc:
            session.merge(make_row(name, doc))


def save_revision(session: Session, sha: str, tree: ConfigTree, source: str) -> ConfigChanges:
    """Make ``tree`` the current config: record an applied revision, write the entries
    that differ from the stored ones, delete the ones gone. Returns what changed."""
    old, new = _stored_docs(session), tree_docs(tree)
    changes = diff_docs(old, new)
    now = utcnow()
    revision = ConfigRevisionRow(
        sha=sha,
        source=source,
        received_at=now,
        status=RevisionStatus.APPLIED.value,
        errors=[],
        summary=f"{tree.summary()}; {changes.describe()}",
    )
    session.add(revision)
    session.flush()  # assigns revision.id

    rid = revision.id
    _write(session, RegionRow, old.regions, new.regions, lambda n, d: _region_row(n, d, rid, now))
    _write(session, GtmPolicyRow, old.gtm, new.gtm, lambda n, d: _gtm_row(n, d, rid, now))
    _write(
        session,
        AutoscalePolicyRow,
        old.autoscale,
        new.autoscale,
        lambda n, d: _autoscale_row(n, d, rid, now),
    )
    return changes


def record_rejected(session: Session, sha: str, source: str, issues: Iterable[ConfigIssue]) -> None:
    """Record a commit that failed validation; the current config stays as it is."""
    errors = [i.model_dump(mode="json") for i in issues]
    session.add(
        ConfigRevisionRow(
            sha=sha,
            source=source,
            received_at=utcnow(),
            status=RevisionStatus.REJECTED.value,
            errors=errors,
            summary=f"rejected: {len(errors)} issue" + ("" if len(errors) == 1 else "s"),
        )
    )


def _info(row: ConfigRevisionRow) -> RevisionInfo:
    return RevisionInfo(
        id=row.id,
        sha=row.sha,
        source=row.source,
        received_at=row.received_at,
        status=RevisionStatus(row.status),
        errors=[ConfigIssue.model_validate(e) for e in row.errors or []],
        summary=row.summary,
    )


def current_config(session: Session) -> ConfigTree | None:
    """The config in force, or None before the first applied revision."""
    if current_revision(session) is None:
        return None
    return docs_tree(_stored_docs(session))


def current_revision(session: Session) -> RevisionInfo | None:
    """The last applied revision (the one in force)."""
    query = select(ConfigRevisionRow).where(
        ConfigRevisionRow.status == RevisionStatus.APPLIED.value
    )
    row = session.scalars(query.order_by(ConfigRevisionRow.id.desc()).limit(1)).first()
    return _info(row) if row else None


def last_revision(session: Session) -> RevisionInfo | None:
    """The last revision of any status (so a rejected commit is visible)."""
    query = select(ConfigRevisionRow).order_by(ConfigRevisionRow.id.desc()).limit(1)
    row = session.scalars(query).first()
    return _info(row) if row else None


def list_revisions(session: Session, limit: int = 20) -> list[RevisionInfo]:
    """The newest ``limit`` revisions, newest first."""
    query = select(ConfigRevisionRow).order_by(ConfigRevisionRow.id.desc()).limit(limit)
    return [_info(r) for r in session.scalars(query)]


def service_regions(session: Session) -> dict[str, set[str]]:
    """Every service in a gtm or autoscale policy -> the regions it names (node
    registrations are checked against this)."""
    docs = ConfigDocs(
        gtm={r.service: r.doc for r in session.scalars(select(GtmPolicyRow))},
        autoscale={r.service: r.doc for r in session.scalars(select(AutoscalePolicyRow))},
    )
    return docs_service_regions(docs)
