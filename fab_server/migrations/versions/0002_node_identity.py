"""Node identity and station time: node credentials, result conflicts, results.tested_at.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 01:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tested_at", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "node_credentials",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_node_credentials")),
        sa.UniqueConstraint("digest", name=op.f("uq_node_credentials_digest")),
    )
    with op.batch_alter_table("node_credentials", schema=None) as batch_op:
        batch_op.create_index("ix_node_credentials_node_id", ["node_id"], unique=False)

    op.create_table(
        "result_conflicts",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("wafer_id", sa.String(length=128), nullable=False),
        sa.Column("stored_wafer_id", sa.String(length=128), nullable=False),
        sa.Column("differences", sa.JSON(), nullable=False),
        sa.Column("incoming", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_conflicts")),
    )
    with op.batch_alter_table("result_conflicts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_result_conflicts_node_id_sequence", ["node_id", "sequence"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("result_conflicts", schema=None) as batch_op:
        batch_op.drop_index("ix_result_conflicts_node_id_sequence")
    op.drop_table("result_conflicts")
    with op.batch_alter_table("node_credentials", schema=None) as batch_op:
        batch_op.drop_index("ix_node_credentials_node_id")
    op.drop_table("node_credentials")
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_column("tested_at")
