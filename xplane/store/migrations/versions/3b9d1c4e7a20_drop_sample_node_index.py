"""drop the unused node_id index of node_metric_samples

Samples are read by (service, region, at) and pruned by at; nothing looks them
up by node, and every heartbeat paid for that index on insert.

Revision ID: 3b9d1c4e7a20
Revises: efcebad82a79
Create Date: 2026-11-25 21:40:00.000000

"""

from collections.abc import Sequence

from alembic import op

revision: str = "3b9d1c4e7a20"
down_revision: str | Sequence[str] | None = "efcebad82a79"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("node_metric_samples", schema=None) as batch_op:
        batch_op.drop_index("ix_node_metric_samples_node_id")


def downgrade() -> None:
    with op.batch_alter_table("node_metric_samples", schema=None) as batch_op:
        batch_op.create_index("ix_node_metric_samples_node_id", ["node_id"], unique=False)
