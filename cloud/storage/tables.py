"""ORM tables of the cloud database. Only the repositories touch these."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
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

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


def utc(value: datetime | None) -> datetime | None:
    """An aware UTC datetime (SQLite hands back naive ones)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with the naming convention."""

    metadata = MetaData(naming_convention=NAMING)


class ApiTokenRow(Base):
    """A person's or tool's bearer token: only its SHA-256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TrainingJobRow(Base):
    """One retraining job: what was asked, by whom, and where it stands."""

    __tablename__ = "training_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    config_name: Mapped[str] = mapped_column(String(128))
    overrides: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(128))
    # queued | running | succeeded | rejected | failed | cancelled
    state: Mapped[str] = mapped_column(String(16), index=True)
    current_step: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The version the job builds, assigned when it collects its data: unique, so two jobs
    # never build (and register) the same version.
    model_version: Mapped[str | None] = mapped_column(String(128), unique=True)
    error: Mapped[str | None] = mapped_column(Text)
    # The worker running it and when it last said so: a stale heartbeat means a lost worker.
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobStepRow(Base):
    """One step of a job; ``done`` with its output means it never runs again."""

    __tablename__ = "job_steps"

    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("training_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    # pending | running | done | failed | skipped | cancelled
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobLogRow(Base):
    """A line of a job's log."""

    __tablename__ = "job_logs"
    __table_args__ = (Index("ix_job_logs_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("training_jobs.id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    step: Mapped[str | None] = mapped_column(String(32))
    level: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(Text)


class DeploymentEventRow(Base):
    """Who moved which alias, or asked which version onto which fab and nodes, when and why."""

    __tablename__ = "deployment_events"
    __table_args__ = (Index("ix_deployment_events_model_version_at", "model_version", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    # registered | alias_set | alias_removed | deploy_requested
    action: Mapped[str] = mapped_column(String(32))
    model_version: Mapped[str] = mapped_column(String(128))
    alias: Mapped[str | None] = mapped_column(String(32))
    previous_version: Mapped[str | None] = mapped_column(String(128))
    fab_id: Mapped[str | None] = mapped_column(String(128))
    nodes: Mapped[list[str] | None] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(Text, default="")


class ReviewedLabelRow(Base):
    """An engineer's reviewed label, as a fab uploads it (anonymised ids; the map if allowed)."""

    __tablename__ = "reviewed_labels"
    __table_args__ = (
        Index("ix_reviewed_labels_wafer_key", "fab_id", "wafer_key"),
        # A fab re-sending a label (a retried batch, an overlap window) stores it once.
        UniqueConstraint("fab_id", "wafer_key", "reviewer_key", "reviewed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fab_id: Mapped[str] = mapped_column(String(128))
    wafer_key: Mapped[str] = mapped_column(String(128))  # keyed hash of the wafer id
    lot_key: Mapped[str] = mapped_column(String(128))
    reviewer_key: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(32))
    reviewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    rows: Mapped[int | None] = mapped_column(Integer)
    cols: Mapped[int | None] = mapped_column(Integer)
    map_bytes: Mapped[bytes | None] = mapped_column(LargeBinary)  # canonical, if policy allows
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    predicted_label: Mapped[str | None] = mapped_column(String(32))
    model_version: Mapped[str] = mapped_column(String(128), default="")
    confidence: Mapped[float | None] = mapped_column(Float)
    review_reason: Mapped[int] = mapped_column(SmallInteger, default=0)


class UploadReceiptRow(Base):
    """The first answer to a fab's upload, by its idempotency key: a retry gets it again."""

    __tablename__ = "upload_receipts"

    fab_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # labels | aggregates
    idempotency_key: Mapped[str] = mapped_column(String(256), primary_key=True)
    accepted: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DailyAggregateRow(Base):
    """One node's day for one model version; a later upload of the same key replaces it."""

    __tablename__ = "daily_aggregates"
    __table_args__ = (
        UniqueConstraint("fab_id", "node_id", "day", "model_version"),
        Index("ix_daily_aggregates_fab_id_day", "fab_id", "day"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fab_id: Mapped[str] = mapped_column(String(128))
    node_id: Mapped[str] = mapped_column(String(128))
    day: Mapped[date] = mapped_column(Date)
    model_version: Mapped[str] = mapped_column(String(128))
    class_counts: Mapped[list[int]] = mapped_column(JSON)
    wafers_classified: Mapped[int] = mapped_column(BigInteger)
    flagged_count: Mapped[int] = mapped_column(BigInteger)
    reviewed_count: Mapped[int] = mapped_column(BigInteger)
    reviewed_correct_count: Mapped[int] = mapped_column(BigInteger)
    latency_p50_ms: Mapped[float] = mapped_column(Float)
    latency_p90_ms: Mapped[float] = mapped_column(Float)
    latency_p99_ms: Mapped[float] = mapped_column(Float)
    avg_recursion_steps: Mapped[float] = mapped_column(Float)
    novelty_quantiles: Mapped[list[float]] = mapped_column(JSON, default=list)
    novelty_scored: Mapped[int] = mapped_column(BigInteger, default=0)
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FabNodeRow(Base):
    """An edge node a fab has reported (by its aggregates): a rollout's candidate arm member."""

    __tablename__ = "fab_nodes"

    fab_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    node_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RolloutRow(Base):
    """A version's way through canary to production (or back) in one fab."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_fab_id_started_at", "fab_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    fab_id: Mapped[str] = mapped_column(String(128))
    # Set to fab_id while the rollout is under way: one active rollout per fab (NULLs repeat).
    active_fab: Mapped[str | None] = mapped_column(String(128), unique=True)
    model_version: Mapped[str] = mapped_column(String(128))
    baseline_version: Mapped[str] = mapped_column(String(128))
    canary_nodes: Mapped[list[str]] = mapped_column(JSON)
    control_nodes: Mapped[list[str]] = mapped_column(JSON)
    # canary | watching | completed | rolled_back | stopped
    stage: Mapped[str] = mapped_column(String(16), index=True)
    requested_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    decision: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    canary_ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    promoted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    watch_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DriftReportRow(Base):
    """A drift report as computed (JSON), and the jobs it started."""

    __tablename__ = "drift_reports"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    job_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
