"""webhook_deliveries as an outbox: payload, state, attempts and a dispatcher lease

A verified webhook (or a registration) is stored pending and signalled to Temporal
by the API's dispatcher until it succeeds. Rows from before were acted on when
received, so they become ``delivered``.

Revision ID: a4e8c2f61b07
Revises: 4c7e2a91d5b3
Create Date: 2026-12-06 11:30:00.000000

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a4e8c2f61b07"
down_revision: str | Sequence[str] | None = "4c7e2a91d5b3"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("state", sa.String(length=16), server_default="delivered", nullable=False)
        )
        batch_op.add_column(sa.Column("payload", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("attempts", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("refusals", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_error", sa.String(length=256), nullable=True))
        batch_op.create_index(
            "ix_webhook_deliveries_due", ["state", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_deliveries_due")
        for column in (
            "last_error",
            "delivered_at",
            "lease_until",
            "lease_owner",
            "next_attempt_at",
            "refusals",
            "attempts",
            "payload",
            "state",
        ):
            batch_op.drop_column(column)
