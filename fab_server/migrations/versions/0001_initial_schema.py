"""Initial schema: nodes, results, maps, lots, review queue, labels, metrics, alerts, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-25 07:21:05.902621
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_kind_subject", ["kind", "subject"], unique=False)
        batch_op.create_index("ix_alerts_state_created_at", ["state", "created_at"], unique=False)

    op.create_table(
        "edge_metrics",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("wafers_classified", sa.BigInteger(), nullable=False),
        sa.Column("throughput_per_minute", sa.Float(), nullable=False),
        sa.Column("latency_p50_ms", sa.Float(), nullable=False),
        sa.Column("latency_p90_ms", sa.Float(), nullable=False),
        sa.Column("latency_p99_ms", sa.Float(), nullable=False),
        sa.Column("avg_recursion_steps", sa.Float(), nullable=False),
        sa.Column("review_rate", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("outbox_depth", sa.BigInteger(), nullable=False),
        sa.Column("confidence_edges", sa.JSON(), nullable=False),
        sa.Column("confidence_counts", sa.JSON(), nullable=False),
        sa.Column("class_counts", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edge_metrics")),
        sa.UniqueConstraint(
            "node_id", "window_end", name=op.f("uq_edge_metrics_node_id_window_end")
        ),
    )
    with op.batch_alter_table("edge_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_edge_metrics_window_end", ["window_end"], unique=False)

    op.create_table(
        "edge_nodes",
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acked_sequence", sa.BigInteger(), nullable=False),
        sa.Column("installed_version", sa.String(length=64), nullable=False),
        sa.Column("previous_version", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_edge_nodes")),
    )
    op.create_table(
        "lots",
        sa.Column("lot_id", sa.String(length=128), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("excursion", sa.Boolean(), nullable=False),
        sa.Column("excursion_reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("lot_id", name=op.f("pk_lots")),
    )
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.create_index("ix_lots_last_seen", ["last_seen"], unique=False)

    op.create_table(
        "model_artifacts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("artifact_format", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.Column("signing_key_id", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_artifacts")),
        sa.UniqueConstraint(
            "version", "artifact_format", name=op.f("uq_model_artifacts_version_artifact_format")
        ),
    )
    op.create_table(
        "model_assignments",
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("rollout_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.SmallInteger(), nullable=False),
        sa.Column("rollback", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_model_assignments")),
    )
    op.create_table(
        "results",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("wafer_id", sa.String(length=128), nullable=False),
        sa.Column("lot_id", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("prediction", sa.SmallInteger(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("steps", sa.SmallInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("novelty", sa.Float(), nullable=True),
        sa.Column("flagged", sa.Boolean(), nullable=False),
        sa.Column("review_reason", sa.SmallInteger(), nullable=False),
        sa.Column("die_yield", sa.Float(), nullable=True),
        sa.Column("classified_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("node_id", "sequence", name=op.f("uq_results_node_id_sequence")),
    )
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.create_index("ix_results_classified_at", ["classified_at"], unique=False)
        batch_op.create_index("ix_results_lot_id", ["lot_id"], unique=False)
        batch_op.create_index(
            "ix_results_model_version_classified_at",
            ["model_version", "classified_at"],
            unique=False,
        )
        batch_op.create_index("ix_results_wafer_id", ["wafer_id"], unique=False)

    op.create_table(
        "review_items",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=256), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("wafer_id", sa.String(length=128), nullable=False),
        sa.Column("lot_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.SmallInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("predicted_class", sa.SmallInteger(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("novelty", sa.Float(), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("claimed_by", sa.String(length=128), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=True),
        sa.Column("true_label", sa.SmallInteger(), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=True),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_items")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_review_items_idempotency_key")),
    )
    with op.batch_alter_table("review_items", schema=None) as batch_op:
        batch_op.create_index(
            "ix_review_items_node_id_sequence", ["node_id", "sequence"], unique=False
        )
        batch_op.create_index("ix_review_items_state_priority", ["state", "priority"], unique=False)

    op.create_table(
        "wafer_maps",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("cols", sa.Integer(), nullable=False),
        sa.Column("values", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wafer_maps")),
        sa.UniqueConstraint("node_id", "sequence", name=op.f("uq_wafer_maps_node_id_sequence")),
    )
    op.create_table(
        "labels",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("review_item_id", sa.String(length=36), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("wafer_id", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("true_label", sa.SmallInteger(), nullable=True),
        sa.Column("predicted_class", sa.SmallInteger(), nullable=True),
        sa.Column("model_version", sa.String(length=64), nullable=True),
        sa.Column("resolved_by", sa.String(length=128), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["review_item_id"],
            ["review_items.id"],
            name=op.f("fk_labels_review_item_id_review_items"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
        sa.UniqueConstraint("review_item_id", name=op.f("uq_labels_review_item_id")),
    )
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.create_index(
            "ix_labels_model_version_resolved_at", ["model_version", "resolved_at"], unique=False
        )
        batch_op.create_index("ix_labels_resolved_at", ["resolved_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.drop_index("ix_labels_resolved_at")
        batch_op.drop_index("ix_labels_model_version_resolved_at")

    op.drop_table("labels")
    op.drop_table("wafer_maps")
    with op.batch_alter_table("review_items", schema=None) as batch_op:
        batch_op.drop_index("ix_review_items_state_priority")
        batch_op.drop_index("ix_review_items_node_id_sequence")

    op.drop_table("review_items")
    with op.batch_alter_table("results", schema=None) as batch_op:
        batch_op.drop_index("ix_results_wafer_id")
        batch_op.drop_index("ix_results_model_version_classified_at")
        batch_op.drop_index("ix_results_lot_id")
        batch_op.drop_index("ix_results_classified_at")

    op.drop_table("results")
    op.drop_table("model_assignments")
    op.drop_table("model_artifacts")
    with op.batch_alter_table("lots", schema=None) as batch_op:
        batch_op.drop_index("ix_lots_last_seen")

    op.drop_table("lots")
    op.drop_table("edge_nodes")
    with op.batch_alter_table("edge_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_edge_metrics_window_end")

    op.drop_table("edge_metrics")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_state_created_at")
        batch_op.drop_index("ix_alerts_kind_subject")

    op.drop_table("alerts")
