"""Similar-wafer search: each result's embedding (``wafer_embeddings``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 10:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "wafer_embeddings",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wafer_embeddings")),
        sa.UniqueConstraint(
            "node_id", "sequence", name=op.f("uq_wafer_embeddings_node_id_sequence")
        ),
    )


def downgrade() -> None:
    op.drop_table("wafer_embeddings")
