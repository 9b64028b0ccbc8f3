"""the cluster table: the store's identity, one row created at first migration

Every worker and API replica compares this id with the one Temporal holds
(``xplane-cluster`` workflow) and refuses to run on a mismatch.

Revision ID: 7c1e5a9d3f42
Revises: 3b9d1c4e7a20
Create Date: 2026-12-06 11:00:00.000000

"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "7c1e5a9d3f42"
down_revision: str | Sequence[str] | None = "3b9d1c4e7a20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    cluster = op.create_table(
        "cluster",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    # Created here, once per database: replicas migrating it later find it at head.
    op.bulk_insert(
        cluster, [{"id": 1, "cluster_id": uuid.uuid4().hex, "created_at": datetime.now(UTC)}]
    )


def downgrade() -> None:
    op.drop_table("cluster")
