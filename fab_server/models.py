"""ORM tables of the fab server. Only the repository touches these; it hands out domain objects.

Indexes are chosen for the queries that must stay fast at 10M results: a lot's summary
(``results.lot_id``), a node's ack state (``edge_nodes``), reviewed accuracy per model and
time (``labels``), the review queue by state and priority, and time windows for alerts.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from fab_server import domain

# Stable constraint names, so migrations are the same on PostgreSQL and SQLite.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (SQLite hands back naive ones)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(value: datetime) -> datetime:
    out = utc(value)
    assert out is not None
    return out


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING)


class EdgeNodeRow(Base):
    """An edge node and the highest sequence durably stored for it."""

    __tablename__ = "edge_nodes"

    node_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acked_sequence: Mapped[int] = mapped_column(BigInteger, default=0)
    installed_version: Mapped[str] = mapped_column(String(64), default="")
    previous_version: Mapped[str] = mapped_column(String(64), default="")

    def to_domain(self) -> domain.EdgeNode:
        return domain.EdgeNode(
            node_id=self.node_id,
            first_seen=_utc(self.first_seen),
            last_seen=_utc(self.last_seen),
            acked_sequence=self.acked_sequence,
            installed_version=self.installed_version,
            previous_version=self.previous_version,
        )


class ResultRow(Base):
    """One classification. Idempotent on (node_id, sequence)."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint("node_id", "sequence"),
        Index("ix_results_lot_id", "lot_id"),
        Index("ix_results_wafer_id", "wafer_id"),
        Index("ix_results_classified_at", "classified_at"),
        Index("ix_results_model_version_classified_at", "model_version", "classified_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    wafer_id: Mapped[str] = mapped_column(String(128))
    lot_id: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    prediction: Mapped[int] = mapped_column(SmallInteger)
    probabilities: Mapped[list[float]] = mapped_column(JSON)
    confidence: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(SmallInteger)
    latency_ms: Mapped[float] = mapped_column(Float)
    novelty: Mapped[float | None] = mapped_column(Float, nullable=True)
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reason: Mapped[int] = mapped_column(SmallInteger, default=0)
    die_yield: Mapped[float | None] = mapped_column(Float, nullable=True)
    classified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The station's own time of the test; None when it did not say (older nodes, G85 files).
    tested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_domain(self, wafer_map: domain.StoredMap | None = None) -> domain.Result:
        return domain.Result(
            node_id=self.node_id,
            sequence=self.sequence,
            wafer_id=self.wafer_id,
            lot_id=self.lot_id,
            model_version=self.model_version,
            prediction=self.prediction,
            probabilities=tuple(self.probabilities),
            confidence=self.confidence,
            steps=self.steps,
            latency_ms=self.latency_ms,
            flagged=self.flagged,
            classified_at=_utc(self.classified_at),
            review_reason=domain.ReviewReason(self.review_reason),
            novelty=self.novelty,
            wafer_map=wafer_map,
            received_at=utc(self.received_at),
            tested_at=utc(self.tested_at),
        )


class WaferMapRow(Base):
    """The raw map of a result, when the edge sent it (kept apart so result scans stay lean)."""

    __tablename__ = "wafer_maps"
    __table_args__ = (UniqueConstraint("node_id", "sequence"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    cols: Mapped[int] = mapped_column(Integer)
    values: Mapped[bytes] = mapped_column(LargeBinary)

    def to_domain(self) -> domain.StoredMap:
        return domain.StoredMap(rows=self.rows, cols=self.cols, values=bytes(self.values))


class WaferEmbeddingRow(Base):
    """A result's embedding (float32 bytes): what similar-wafer search indexes, by ``id``."""

    __tablename__ = "wafer_embeddings"
    __table_args__ = (UniqueConstraint("node_id", "sequence"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    model_version: Mapped[str] = mapped_column(String(64))
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class LotRow(Base):
    """A lot's excursion state (its counts come from ``results`` by the lot index)."""

    __tablename__ = "lots"
    __table_args__ = (Index("ix_lots_last_seen", "last_seen"),)

    lot_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    excursion: Mapped[bool] = mapped_column(Boolean, default=False)
    excursion_reason: Mapped[str] = mapped_column(Text, default="")


class ReviewItemRow(Base):
    """A wafer in the review queue; ``priority`` ascending is the order engineers see."""

    __tablename__ = "review_items"
    __table_args__ = (
        Index("ix_review_items_state_priority", "state", "priority"),
        Index("ix_review_items_node_id_sequence", "node_id", "sequence"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(256), unique=True)
    node_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    wafer_id: Mapped[str] = mapped_column(String(128))
    lot_id: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[int] = mapped_column(SmallInteger)
    state: Mapped[str] = mapped_column(String(16), default=domain.ReviewState.OPEN.value)
    priority: Mapped[float] = mapped_column(Float)
    predicted_class: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    novelty: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    resolved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    true_label: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(128), default="")

    def to_domain(self) -> domain.ReviewItem:
        return domain.ReviewItem(
            id=self.id,
            idempotency_key=self.idempotency_key,
            node_id=self.node_id,
            sequence=self.sequence,
            wafer_id=self.wafer_id,
            lot_id=self.lot_id,
            reason=domain.ReviewReason(self.reason),
            state=domain.ReviewState(self.state),
            priority=self.priority,
            predicted_class=self.predicted_class,
            confidence=self.confidence,
            novelty=self.novelty,
            model_version=self.model_version,
            created_at=_utc(self.created_at),
            claimed_by=self.claimed_by,
            lease_expires_at=utc(self.lease_expires_at),
            resolved_at=utc(self.resolved_at),
            outcome=domain.ReviewOutcome(self.outcome) if self.outcome else None,
            true_label=self.true_label,
            resolved_by=self.resolved_by,
            comment=self.comment,
            requested_by=self.requested_by,
        )


class LabelRow(Base):
    """An engineer's verdict on a wafer: the ground truth for reviewed accuracy and retraining."""

    __tablename__ = "labels"
    __table_args__ = (
        Index("ix_labels_model_version_resolved_at", "model_version", "resolved_at"),
        Index("ix_labels_resolved_at", "resolved_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    review_item_id: Mapped[str] = mapped_column(ForeignKey("review_items.id"), unique=True)
    node_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    wafer_id: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(16))
    true_label: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    predicted_class: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    model_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    resolved_by: Mapped[str] = mapped_column(String(128))
    resolved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EdgeMetricsRow(Base):
    """One metrics window pushed by an edge node."""

    __tablename__ = "edge_metrics"
    __table_args__ = (
        UniqueConstraint("node_id", "window_end"),
        Index("ix_edge_metrics_window_end", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(128))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    wafers_classified: Mapped[int] = mapped_column(BigInteger)
    throughput_per_minute: Mapped[float] = mapped_column(Float)
    latency_p50_ms: Mapped[float] = mapped_column(Float)
    latency_p90_ms: Mapped[float] = mapped_column(Float)
    latency_p99_ms: Mapped[float] = mapped_column(Float)
    avg_recursion_steps: Mapped[float] = mapped_column(Float)
    review_rate: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(64))
    outbox_depth: Mapped[int] = mapped_column(BigInteger, default=0)
    confidence_edges: Mapped[list[float]] = mapped_column(JSON, default=list)
    confidence_counts: Mapped[list[int]] = mapped_column(JSON, default=list)
    class_counts: Mapped[list[int]] = mapped_column(JSON, default=list)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def to_domain(self) -> domain.EdgeMetricsRecord:
        return domain.EdgeMetricsRecord(
            node_id=self.node_id,
            window_start=_utc(self.window_start),
            window_end=_utc(self.window_end),
            wafers_classified=self.wafers_classified,
            throughput_per_minute=self.throughput_per_minute,
            latency_p50_ms=self.latency_p50_ms,
            latency_p90_ms=self.latency_p90_ms,
            latency_p99_ms=self.latency_p99_ms,
            avg_recursion_steps=self.avg_recursion_steps,
            review_rate=self.review_rate,
            model_version=self.model_version,
            outbox_depth=self.outbox_depth,
            confidence_edges=tuple(self.confidence_edges),
            confidence_counts=tuple(self.confidence_counts),
            class_counts=tuple(self.class_counts),
        )


class AlertRow(Base):
    """An alert; at most one unresolved alert per (kind, subject)."""

    __tablename__ = "alerts"
    __table_args__ = (
        Index("ix_alerts_state_created_at", "state", "created_at"),
        Index("ix_alerts_kind_subject", "kind", "subject"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(256))
    message: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=domain.AlertState.ACTIVE.value)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    acknowledged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def to_domain(self) -> domain.Alert:
        return domain.Alert(
            id=self.id,
            kind=self.kind,
            severity=domain.AlertSeverity(self.severity),
            subject=self.subject,
            message=self.message,
            value=self.value,
            threshold=self.threshold,
            state=domain.AlertState(self.state),
            created_at=_utc(self.created_at),
            updated_at=_utc(self.updated_at),
            acknowledged_by=self.acknowledged_by,
            acknowledged_at=utc(self.acknowledged_at),
        )


class ModelArtifactRow(Base):
    """A signed model artifact stored on the fab server's disk."""

    __tablename__ = "model_artifacts"
    __table_args__ = (UniqueConstraint("version", "artifact_format"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64))
    artifact_format: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    signature: Mapped[bytes] = mapped_column(LargeBinary)
    signing_key_id: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def to_domain(self) -> domain.ModelArtifact:
        return domain.ModelArtifact(
            version=self.version,
            artifact_format=self.artifact_format,
            sha256=self.sha256,
            size_bytes=self.size_bytes,
            signature=bytes(self.signature),
            signing_key_id=self.signing_key_id,
            path=self.path,
            created_at=_utc(self.created_at),
        )


class ModelAssignmentRow(Base):
    """The version a node should run; node ``*`` is the fab-wide default."""

    __tablename__ = "model_assignments"

    node_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    rollout_id: Mapped[str] = mapped_column(String(64), default="")
    stage: Mapped[int] = mapped_column(SmallInteger, default=0)
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def to_domain(self) -> domain.Assignment:
        return domain.Assignment(
            node_id=self.node_id,
            version=self.version,
            rollout_id=self.rollout_id,
            stage=self.stage,
            rollback=self.rollback,
            updated_at=utc(self.updated_at),
        )


class ResultConflictRow(Base):
    """A result whose (node_id, sequence) was already stored with different content.

    Never applied to ``results``: kept, with the stored version's id, for an engineer to
    inspect (a node that reused sequences after losing its outbox, or a forged sender).
    """

    __tablename__ = "result_conflicts"
    __table_args__ = (Index("ix_result_conflicts_node_id_sequence", "node_id", "sequence"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(128))
    sequence: Mapped[int] = mapped_column(BigInteger)
    wafer_id: Mapped[str] = mapped_column(String(128))
    stored_wafer_id: Mapped[str] = mapped_column(String(128))
    differences: Mapped[list[str]] = mapped_column(JSON)
    incoming: Mapped[dict[str, object]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def to_domain(self) -> domain.ResultConflict:
        return domain.ResultConflict(
            id=self.id,
            node_id=self.node_id,
            sequence=self.sequence,
            wafer_id=self.wafer_id,
            stored_wafer_id=self.stored_wafer_id,
            differences=tuple(self.differences),
            incoming=dict(self.incoming),
            received_at=_utc(self.received_at),
        )


class NodeCredentialRow(Base):
    """A credential the fab issued to an edge node: a token's or a certificate's SHA-256.

    Only digests are stored: a copy of the database does not let anyone act as a node.
    """

    __tablename__ = "node_credentials"
    __table_args__ = (Index("ix_node_credentials_node_id", "node_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # "token" or "certificate"
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_domain(self) -> domain.NodeCredential:
        return domain.NodeCredential(
            id=self.id,
            node_id=self.node_id,
            kind=domain.CredentialKind(self.kind),
            created_at=_utc(self.created_at),
            revoked_at=utc(self.revoked_at),
        )


class UserRow(Base):
    """A review UI user: role and an scrypt hash of the password with its own salt.

    The hash parameters are stored with it (``scrypt$n$r$p$salt$hash``), so they can be raised
    later without invalidating stored passwords. A disabled user stays, so their name in labels
    and the audit trail keeps meaning one person.
    """

    __tablename__ = "users"

    user: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    def to_domain(self) -> domain.User:
        return domain.User(
            user=self.user,
            role=self.role,
            created_at=_utc(self.created_at),
            disabled_at=utc(self.disabled_at),
        )


class SyncStateRow(Base):
    """One named value of the cloud sync agent: a watermark, the held plan's time, the last run.

    Written only after the cloud acknowledged what the value covers, so a restarted fab
    resumes where the last acknowledged upload ended.
    """

    __tablename__ = "sync_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, object]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
