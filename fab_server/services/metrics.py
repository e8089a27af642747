"""Edge nodes' monitoring windows: validated, stored once per (node, window end)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import InvalidArgument
from fab_server.repository import metrics as metrics_repo
from fab_server.services.ingest import MAX_SEQUENCE, MAX_VERSION_CHARS
from wafercore.classes import NUM_CLASSES
from wafercore.validation import check_id


def _check_non_negative(value: float, field: str) -> None:
    if not 0.0 <= value < math.inf:  # also false for NaN
        raise InvalidArgument(field, f"must be finite and >= 0, got {value:g}")


def _check_count(value: int, field: str) -> None:
    if not 0 <= value <= MAX_SEQUENCE:
        raise InvalidArgument(field, f"must be in 0..{MAX_SEQUENCE}, got {value}")


def _check_histogram(record: domain.EdgeMetricsRecord) -> None:
    edges, counts = record.confidence_edges, record.confidence_counts
    field = "confidence_histogram"
    if not edges and not counts:
        return
    if len(edges) != len(counts) + 1:
        raise InvalidArgument(
            f"{field}.bucket_edges",
            f"has {len(edges)} edges for {len(counts)} counts; n buckets need n + 1 edges",
        )
    for i, edge in enumerate(edges):
        if not 0.0 <= edge <= 1.0:
            raise InvalidArgument(f"{field}.bucket_edges[{i}]", f"must be in [0, 1], got {edge:g}")
        if i and edge <= edges[i - 1]:
            raise InvalidArgument(f"{field}.bucket_edges[{i}]", "edges must be increasing")
    for i, count in enumerate(counts):
        _check_count(count, f"{field}.counts[{i}]")


def validate_metrics(record: domain.EdgeMetricsRecord) -> None:
    """Check one monitoring window.

    Raises:
        InvalidArgument: naming the first offending field (``latency_p99_ms``).
    """
    check_id(record.node_id, "node_id")
    if record.window_start.tzinfo is None or record.window_end.tzinfo is None:
        raise InvalidArgument("window_start", "window times must be timezone-aware (UTC)")
    if record.window_end <= record.window_start:
        raise InvalidArgument("window_end", "must be after window_start")
    _check_count(record.wafers_classified, "wafers_classified")
    _check_count(record.outbox_depth, "outbox_depth")
    for name in (
        "throughput_per_minute",
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p99_ms",
        "avg_recursion_steps",
    ):
        _check_non_negative(getattr(record, name), name)
    if not record.latency_p50_ms <= record.latency_p90_ms <= record.latency_p99_ms:
        raise InvalidArgument("latency_p90_ms", "percentiles must satisfy p50 <= p90 <= p99")
    if not 0.0 <= record.review_rate <= 1.0:
        raise InvalidArgument("review_rate", f"must be in [0, 1], got {record.review_rate:g}")
    if len(record.model_version) > MAX_VERSION_CHARS:
        raise InvalidArgument("model_version", f"has more than {MAX_VERSION_CHARS} characters")
    _check_histogram(record)
    if record.class_counts and len(record.class_counts) != NUM_CLASSES:
        raise InvalidArgument(
            "class_counts", f"has {len(record.class_counts)} entries, expected {NUM_CLASSES}"
        )
    for k, count in enumerate(record.class_counts):
        _check_count(count, f"class_counts[{k}]")


async def push_metrics(
    sessions: async_sessionmaker[AsyncSession],
    *,
    record: domain.EdgeMetricsRecord,
    now: datetime | None = None,
) -> bool:
    """Validate and store a node's monitoring window; a redelivered window is a no-op.

    Args:
        sessions: session factory.
        record: the window.
        now: receive time (UTC); the current time by default.

    Returns:
        True when stored, False when the node had already pushed a window with this end.

    Raises:
        InvalidArgument: the window is invalid; nothing was stored.
    """
    validate_metrics(record)
    async with sessions() as session, session.begin():
        return await metrics_repo.insert_metrics(
            session, record=record, received_at=now or datetime.now(UTC)
        )


async def node_metrics(
    sessions: async_sessionmaker[AsyncSession], *, node_id: str, limit: int = 60
) -> list[domain.EdgeMetricsRecord]:
    """A node's latest monitoring windows, newest first (at most ``limit``)."""
    async with sessions() as session:
        return await metrics_repo.node_metrics(session, node_id=node_id, limit=limit)
