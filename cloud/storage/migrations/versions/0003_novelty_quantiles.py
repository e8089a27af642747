"""Daily aggregates carry the day's novelty-score quantiles (issue 14).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30 10:35:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("daily_aggregates") as batch:
        batch.add_column(
            sa.Column("novelty_quantiles", sa.JSON(), nullable=False, server_default="[]")
        )
        batch.add_column(
            sa.Column("novelty_scored", sa.BigInteger(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("daily_aggregates") as batch:
        batch.drop_column("novelty_scored")
        batch.drop_column("novelty_quantiles")
