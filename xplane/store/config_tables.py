"""The config tables: ``config_revisions`` and the current entries, one row each in
``regions``, ``gtm_policies`` and ``autoscale_policies``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from xplane.config.diff import Doc
from xplane.store.db import Base, UTCDateTime, utcnow

_ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite only autoincrements INTEGER


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
