"""Fab sync (label columns, upload receipts, daily aggregates, nodes), rollouts, drift reports

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 06:58:05.965497
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daily_aggregates",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("fab_id", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("class_counts", sa.JSON(), nullable=False),
        sa.Column("wafers_classified", sa.BigInteger(), nullable=False),
        sa.Column("flagged_count", sa.BigInteger(), nullable=False),
        sa.Column("reviewed_count", sa.BigInteger(), nullable=False),
        sa.Column("reviewed_correct_count", sa.BigInteger(), nullable=False),
        sa.Column("latency_p50_ms", sa.Float(), nullable=False),
        sa.Column("latency_p90_ms", sa.Float(), nullable=False),
        sa.Column("latency_p99_ms", sa.Float(), nullable=False),
        sa.Column("avg_recursion_steps", sa.Float(), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daily_aggregates")),
        sa.UniqueConstraint(
            "fab_id",
            "node_id",
            "day",
            "model_version",
            name=op.f("uq_daily_aggregates_fab_id_node_id_day_model_version"),
        ),
    )
    with op.batch_alter_table("daily_aggregates", schema=None) as batch_op:
        batch_op.create_index("ix_daily_aggregates_fab_id_day", ["fab_id", "day"], unique=False)

    op.create_table(
        "drift_reports",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("job_ids", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drift_reports")),
    )
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_drift_reports_computed_at"), ["computed_at"], unique=False
        )

    op.create_table(
        "fab_nodes",
        sa.Column("fab_id", sa.String(length=128), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("fab_id", "node_id", name=op.f("pk_fab_nodes")),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("fab_id", sa.String(length=128), nullable=False),
        sa.Column("active_fab", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("baseline_version", sa.String(length=128), nullable=False),
        sa.Column("canary_nodes", sa.JSON(), nullable=False),
        sa.Column("control_nodes", sa.JSON(), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("decision", sa.JSON(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("canary_ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("watch_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
        sa.UniqueConstraint("active_fab", name=op.f("uq_rollouts_active_fab")),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_rollouts_fab_id_started_at", ["fab_id", "started_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_rollouts_stage"), ["stage"], unique=False)

    op.create_table(
        "upload_receipts",
        sa.Column("fab_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=256), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "fab_id", "kind", "idempotency_key", name=op.f("pk_upload_receipts")
        ),
    )
    with op.batch_alter_table("reviewed_labels", schema=None) as batch_op:
        batch_op.add_column(sa.Column("predicted_label", sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column("model_version", sa.String(length=128), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("confidence", sa.Float(), nullable=True))
        batch_op.add_column(
            sa.Column("review_reason", sa.SmallInteger(), nullable=False, server_default="0")
        )
        batch_op.create_unique_constraint(
            batch_op.f("uq_reviewed_labels_fab_id_wafer_key_reviewer_key_reviewed_at"),
            ["fab_id", "wafer_key", "reviewer_key", "reviewed_at"],
        )


def downgrade() -> None:
    with op.batch_alter_table("reviewed_labels", schema=None) as batch_op:
        batch_op.drop_constraint(
            batch_op.f("uq_reviewed_labels_fab_id_wafer_key_reviewer_key_reviewed_at"),
            type_="unique",
        )
        batch_op.drop_column("review_reason")
        batch_op.drop_column("confidence")
        batch_op.drop_column("model_version")
        batch_op.drop_column("predicted_label")

    op.drop_table("upload_receipts")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_stage"))
        batch_op.drop_index("ix_rollouts_fab_id_started_at")

    op.drop_table("rollouts")
    op.drop_table("fab_nodes")
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_drift_reports_computed_at"))

    op.drop_table("drift_reports")
    with op.batch_alter_table("daily_aggregates", schema=None) as batch_op:
        batch_op.drop_index("ix_daily_aggregates_fab_id_day")

    op.drop_table("daily_aggregates")
