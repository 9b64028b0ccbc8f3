"""the self-health gate's decision and operator switch, and API heartbeat intake reports

Revision ID: 4c7e2a91d5b3
Revises: 7c1e5a9d3f42
Create Date: 2026-12-06 10:56:08.941729

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "4c7e2a91d5b3"
down_revision: str | Sequence[str] | None = "7c1e5a9d3f42"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "control_gate",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision", sa.JSON(), nullable=True),
        sa.Column("operator_closed", sa.Boolean(), nullable=False),
        sa.Column("operator_reason", sa.String(length=512), nullable=True),
        sa.Column("operator_by", sa.String(length=128), nullable=True),
        sa.Column("operator_changed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "heartbeat_intake",
        sa.Column("replica", sa.String(length=255), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_per_s", sa.Float(), nullable=False),
        sa.Column("written_per_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("replica"),
    )


def downgrade() -> None:
    op.drop_table("heartbeat_intake")
    op.drop_table("control_gate")
