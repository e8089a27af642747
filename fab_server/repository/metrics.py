"""Edge nodes' monitoring windows (PushMetrics)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import EdgeMetricsRow
from fab_server.repository import dialect_insert


async def insert_metrics(
    session: AsyncSession, *, record: domain.EdgeMetricsRecord, received_at: datetime
) -> bool:
    """Store a window unless the node already pushed one ending at the same time.

    Returns:
        True when stored, False for a redelivered window (nothing changed).
    """
    stmt = (
        dialect_insert(session, EdgeMetricsRow)
        .values(
            node_id=record.node_id,
            window_start=record.window_start,
            window_end=record.window_end,
            wafers_classified=record.wafers_classified,
            throughput_per_minute=record.throughput_per_minute,
            latency_p50_ms=record.latency_p50_ms,
            latency_p90_ms=record.latency_p90_ms,
            latency_p99_ms=record.latency_p99_ms,
            avg_recursion_steps=record.avg_recursion_steps,
            review_rate=record.review_rate,
            model_version=record.model_version,
            outbox_depth=record.outbox_depth,
            confidence_edges=list(record.confidence_edges),
            confidence_counts=list(record.confidence_counts),
            class_counts=list(record.class_counts),
            received_at=received_at,
        )
        .on_conflict_do_nothing(index_elements=["node_id", "window_end"])
        .returning(EdgeMetricsRow.id)
    )
    return (await session.execute(stmt)).first() is not None


async def node_metrics(
    session: AsyncSession, *, node_id: str, limit: int
) -> list[domain.EdgeMetricsRecord]:
    """A node's latest windows, newest first."""
    stmt = (
        select(EdgeMetricsRow)
        .where(EdgeMetricsRow.node_id == node_id)
        .order_by(EdgeMetricsRow.window_end.desc())
        .limit(limit)
    )
    return [row.to_domain() for row in (await session.scalars(stmt))]
