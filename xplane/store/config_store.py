"""Config revisions and the policies they carry.

Every config repo commit the sync looks at becomes one ``config_revisions`` row
(applied or rejected; a commit already seen writes nothing). The *current*
policies live one row per entry in ``regions``, ``gtm_policies`` and
``autoscale_policies``: each holds the entry's normalised document
(``model_dump(mode="json")``) and the revision that last changed it.

The diff between two trees is pure (:func:`diff_docs`) so what the loops are
told about is testable without a database. Repository functions take a
session and never commit: the caller owns the transaction
(:func:`xplane.store.db.transaction`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    delete,
    inspect,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from xplane.config.errors import ConfigIssue
from xplane.config.models import AutoscalePolicy, ConfigTree, GtmPolicy, Region
from xplane.store.db import Base, UTCDateTime, utcnow

Doc = dict[str, Any]

_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite only autoincrements INTEGER


class RevisionStatus(StrEnum):
    APPLIED = "applied"
    REJECTED = "rejected"


# ---------------------------------------------------------------------- tables
class ConfigRevisionRow(Base):
    __tablename__ = "config_revisions"

    id: Mapped[int] = mapped_column(_ID, primary_key=True, autoincrement=True)
    sha: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(512))  # repo (credentials stripped) and branch
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status: Mapped[str] = mapped_column(String(16), index=True)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # ConfigIssue dumps
    summary: Mapped[str] = mapped_column(Text, default="")


class RegionRow(Base):
    __tablename__ = "regions"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    doc: Mapped[Doc] = mapped_column(JSON)  # Region.model_dump(mode="json")
    provider: Mapped[str] = mapped_column(String(64))  # derived from doc, for queries
    retired: Mapped[bool] = mapped_column(Boolean, default=False)  # derived from doc
    revision_id: Mapped[int] = mapped_column(_ID, ForeignKey("config_revisions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class GtmPolicyRow(Base):
    __tablename__ = "gtm_policies"

    service: Mapped[str] = mapped_column(String(128), primary_key=True)
    doc: Mapped[Doc] = mapped_column(JSON)  # GtmPolicy.model_dump(mode="json")
    domain: Mapped[str] = mapped_column(String(255))  # derived from doc
    revision_id: Mapped[int] = mapped_column(_ID, ForeignKey("config_revisions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AutoscalePolicyRow(Base):
    __tablename__ = "autoscale_policies"

    service: Mapped[str] = mapped_column(String(128), primary_key=True)
    doc: Mapped[Doc] = mapped_column(JSON)  # AutoscalePolicy.model_dump(mode="json")
    revision_id: Mapped[int] = mapped_column(_ID, ForeignKey("config_revisions.id"))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# ---------------------------------------------------------------------- models
class AutoscaleTarget(BaseModel):
    """One autoscale loop: ``autoscale-<service>-<region>``."""

    model_config = {"frozen": True}

    service: str
    region: str


class ConfigChanges(BaseModel):
    """What one applied revision changed, by the loop that must hear of it.

    ``gtm``/``autoscale``/``regions`` list everything added, changed or removed;
    ``added_*``/``removed_*`` single out those added or gone, so their owner can
    start or retire the loop.
    """

    gtm: list[str] = Field(default_factory=list)
    autoscale: list[AutoscaleTarget] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    added_gtm: list[str] = Field(default_factory=list)
    added_autoscale: list[AutoscaleTarget] = Field(default_factory=list)
    added_regions: list[str] = Field(default_factory=list)
    removed_gtm: list[str] = Field(default_factory=list)
    removed_autoscale: list[AutoscaleTarget] = Field(default_factory=list)
    removed_regions: list[str] = Field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.gtm or self.autoscale or self.regions)

    def describe(self) -> str:
        """``gtm: svc-plus; autoscale: svc-plus/jp; regions: -sg`` (``+`` added, ``-`` removed)."""
        if self.empty:
            return "no changes"

        def mark(item: str, added: Iterable[str], removed: Iterable[str]) -> str:
            return ("+" if item in added else "-" if item in removed else "") + item

        def key(t: AutoscaleTarget) -> str:
            return f"{t.service}/{t.region}"

        parts = []
        if self.gtm:
            items = [mark(s, self.added_gtm, self.removed_gtm) for s in self.gtm]
            parts.append("gtm: " + ", ".join(items))
        if self.autoscale:
            added, removed = map(key, self.added_autoscale), map(key, self.removed_autoscale)
            added_keys, removed_keys = set(added), set(removed)
            items = [mark(key(t), added_keys, removed_keys) for t in self.autoscale]
            parts.append("autoscale: " + ", ".join(items))
        if self.regions:
            items = [mark(r, self.added_regions, self.removed_regions) for r in self.regions]
            parts.append("regions: " + ", ".join(items))
        return "; ".join(parts)


class RevisionInfo(BaseModel):
    id: int
    sha: str
    source: str
    received_at: datetime
    status: RevisionStatus
    errors: list[ConfigIssue] = Field(default_factory=list)
    summary: str = ""


class ConfigDocs(BaseModel):
    """A tree as stored: JSON documents by name (comparable with ``==``)."""

    regions: dict[str, Doc] = Field(default_factory=dict)
    gtm: dict[str, Doc] = Field(default_factory=dict)
    autoscale: dict[str, Doc] = Field(default_factory=dict)


# ------------------------------------------------------------- pure functions
def tree_docs(tree: ConfigTree) -> ConfigDocs:
    return ConfigDocs(
        regions={k: v.model_dump(mode="json") for k, v in tree.regions.items()},
        gtm={k: v.model_dump(mode="json") for k, v in tree.gtm.items()},
        autoscale={k: v.model_dump(mode="json") for k, v in tree.autoscale.items()},
    )


def docs_tree(docs: ConfigDocs) -> ConfigTree:
    return ConfigTree(
        regions={k: Region.model_validate(v) for k, v in docs.regions.items()},
        gtm={k: GtmPolicy.model_validate(v) for k, v in docs.gtm.items()},
        autoscale={k: AutoscalePolicy.model_validate(v) for k, v in docs.autoscale.items()},
    )


def _diff_names(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], ...]:
    """(changed incl. added and removed, added, removed), each sorted."""
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return changed, added, removed


def effective_autoscale(doc: Doc) -> dict[str, Doc]:
    """Per region, what that region's autoscale loop runs on: the region's entry plus
    the service-wide fields (global, cooldown, intervals...)."""
    shared = {k: v for k, v in doc.items() if k != "regions"}
    return {region: {"region": entry, **shared} for region, entry in doc["regions"].items()}


def _per_region(docs: Mapping[str, Doc]) -> dict[AutoscaleTarget, Doc]:
    return {
        AutoscaleTarget(service=service, region=region): policy
        for service, doc in docs.items()
        for region, policy in effective_autoscale(doc).items()
    }


def diff_docs(old: ConfigDocs, new: ConfigDocs) -> ConfigChanges:
    """What changed from ``old`` to ``new``; autoscale per (service, region).

    A service-wide autoscale field (e.g. ``cooldown``) changes every region of
    the service; a change of one region's entry changes only that region.
    """
    gtm, added_gtm, removed_gtm = _diff_names(old.gtm, new.gtm)
    regions, added_regions, removed_regions = _diff_names(old.regions, new.regions)
    autoscale, added_autoscale, removed_autoscale = _diff_targets(old.autoscale, new.autoscale)
    return ConfigChanges(
        gtm=gtm,
        added_gtm=added_gtm,
        removed_gtm=removed_gtm,
        regions=regions,
        added_regions=added_regions,
        removed_regions=removed_regions,
        autoscale=autoscale,
        added_autoscale=added_autoscale,
        removed_autoscale=removed_autoscale,
    )


def _diff_targets(
    old: Mapping[str, Doc], new: Mapping[str, Doc]
) -> tuple[list[AutoscaleTarget], ...]:
    """Like :func:`_diff_names`, per (service, region) effective autoscale policy."""
    old_by, new_by = _per_region(old), _per_region(new)
    keys = {(t.service, t.region): t for t in old_by.keys() | new_by.keys()}
    targets = [keys[k] for k in sorted(keys)]
    changed = [t for t in targets if old_by.get(t) != new_by.get(t)]
    added = [t for t in targets if t not in old_by]
    removed = [t for t in targets if t not in new_by]
    return changed, added, removed


def docs_service_regions(docs: ConfigDocs) -> dict[str, set[str]]:
    """Every service with a gtm or autoscale policy -> the regions it names."""
    result: dict[str, set[str]] = {}
    for service, doc in docs.gtm.items():
        result.setdefault(service, set()).update(r["name"] for r in doc["regions"])
    for service, doc in docs.autoscale.items():
        result.setdefault(service, set()).update(doc["regions"])
    return result


# ------------------------------------------------------------------ repository
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
