"""The store's identity: one ``cluster`` row holding a random cluster id.

The row is created by the migration that adds the table, i.e. when a database
is first migrated, so every replica migrating the same database reads the same
id. Temporal holds the id of the cluster it serves (:mod:`xplane.temporal.cluster`); a
worker or API replica pointed at another database sees two ids and refuses to
run, instead of applying another cluster's config.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from xplane.store.db import Base, UTCDateTime, transaction, utcnow

CLUSTER_ROW = 1  # the one row's key: a second row cannot be inserted


class ClusterRow(Base):
    __tablename__ = "cluster"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def new_cluster_id() -> str:
    return uuid.uuid4().hex


def store_cluster_id(factory: sessionmaker[Session]) -> str:
    """This database's cluster id; created now if the row is missing (a schema made
    without the migrations). Concurrent callers agree: the row's key is fixed."""
    with factory() as session:
        row = session.get(ClusterRow, CLUSTER_ROW)
        if row is not None:
            return row.cluster_id
    try:
        with transaction(factory) as session:
            session.add(ClusterRow(id=CLUSTER_ROW, cluster_id=new_cluster_id()))
    except IntegrityError:
        pass  # another replica created it first: read theirs
    with factory() as session:
        row = session.get(ClusterRow, CLUSTER_ROW)
        assert row is not None
        return row.cluster_id
