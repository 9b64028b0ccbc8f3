"""region_load_hours: hourly load per service and region (the forecast's history)

Revision ID: b7d3e5f90c12
Revises: d5a3f0c81e62
Create Date: 2026-12-06 14:10:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b7d3e5f90c12"
down_revision: str | Sequence[str] | None = "d5a3f0c81e62"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "region_load_hours",
        sa.Column("service", sa.String(length=128), nullable=False),
        sa.Column("region", sa.String(length=128), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ticks", sa.Integer(), nullable=False),
        sa.Column("qps_ticks", sa.Integer(), nullable=False),
        sa.Column("qps_sum", sa.Float(), nullable=False),
        sa.Column("cpu_nodes_sum", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("service", "region", "hour"),
    )


def downgrade() -> None:
    op.drop_table("region_load_hours")
