"""Daily per-node aggregates the fabs upload (table ``daily_aggregates``): drift and A/B inputs.

One row per (fab, node, UTC date, model version); a later upload of the same key replaces the
earlier (a fab re-sends today's figures as the day goes on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.storage.tables import DailyAggregateRow, FabNodeRow
from wafercore.sql import dialect_insert


@dataclass(frozen=True)
class DailyAggregate:
    """One node's day for one model version, as a fab uploaded it.

    Attributes:
        fab_id: the uploading fab.
        node_id: the node.
        day: the UTC day.
        model_version: the version the figures are for.
        class_counts: wafers per predicted class, indexed by class id (9 entries).
        wafers_classified: sum of ``class_counts``.
        flagged_count: wafers flagged for review (canary samples not counted).
        reviewed_count: flagged wafers an engineer reviewed.
        reviewed_correct_count: of those, predictions the engineer confirmed.
        latency_p50_ms, latency_p90_ms, latency_p99_ms: the day's latency percentiles.
        avg_recursion_steps: mean supervision steps per wafer.
        novelty_quantiles: the day's novelty scores at `wafercore.novelty.QUANTILE_LEVELS`;
            empty when no wafer was scored.
        novelty_scored: wafers that carried a novelty score.
    """

    fab_id: str
    node_id: str
    day: date
    model_version: str
    class_counts: tuple[int, ...]
    wafers_classified: int
    flagged_count: int
    reviewed_count: int
    reviewed_correct_count: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    avg_recursion_steps: float
    novelty_quantiles: tuple[float, ...] = ()
    novelty_scored: int = 0


def upsert_aggregates(
    session: Session, *, aggregates: Sequence[DailyAggregate], now: datetime
) -> None:
    """Store aggregates, replacing any of the same (fab, node, day, version); records each
    aggregate's node as one of its fab's nodes."""
    for aggregate in aggregates:
        values = _values(aggregate, now)
        stmt = dialect_insert(session, DailyAggregateRow).values(**values)
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["fab_id", "node_id", "day", "model_version"],
                set_={k: v for k, v in values.items() if k not in _KEY},
            )
        )
    seen = {(a.fab_id, a.node_id) for a in aggregates}
    for fab_id, node_id in sorted(seen):
        stmt = dialect_insert(session, FabNodeRow).values(
            fab_id=fab_id, node_id=node_id, first_seen=now, last_seen=now
        )
        session.execute(
            stmt.on_conflict_do_update(
                index_elements=["fab_id", "node_id"], set_={"last_seen": now}
            )
        )


_KEY = ("fab_id", "node_id", "day", "model_version")


def _values(aggregate: DailyAggregate, now: datetime) -> dict[str, object]:
    return {
        "fab_id": aggregate.fab_id,
        "node_id": aggregate.node_id,
        "day": aggregate.day,
        "model_version": aggregate.model_version,
        "class_counts": list(aggregate.class_counts),
        "wafers_classified": aggregate.wafers_classified,
        "flagged_count": aggregate.flagged_count,
        "reviewed_count": aggregate.reviewed_count,
        "reviewed_correct_count": aggregate.reviewed_correct_count,
        "latency_p50_ms": aggregate.latency_p50_ms,
        "latency_p90_ms": aggregate.latency_p90_ms,
        "latency_p99_ms": aggregate.latency_p99_ms,
        "avg_recursion_steps": aggregate.avg_recursion_steps,
        "novelty_quantiles": list(aggregate.novelty_quantiles),
        "novelty_scored": aggregate.novelty_scored,
        "uploaded_at": now,
    }


def aggregates_since(
    session: Session,
    *,
    since: date,
    fab_id: str | None = None,
    model_versions: Sequence[str] | None = None,
) -> list[DailyAggregate]:
    """Aggregates of ``since`` and later (one fab's, some versions' when given), oldest first."""
    query = select(DailyAggregateRow).where(DailyAggregateRow.day >= since)
    if fab_id is not None:
        query = query.where(DailyAggregateRow.fab_id == fab_id)
    if model_versions is not None:
        query = query.where(DailyAggregateRow.model_version.in_(list(model_versions)))
    order = (DailyAggregateRow.day, DailyAggregateRow.fab_id, DailyAggregateRow.node_id)
    return [_record(row) for row in session.scalars(query.order_by(*order))]


def _record(row: DailyAggregateRow) -> DailyAggregate:
    return DailyAggregate(
        fab_id=row.fab_id,
        node_id=row.node_id,
        day=row.day,
        model_version=row.model_version,
        class_counts=tuple(int(c) for c in row.class_counts),
        wafers_classified=row.wafers_classified,
        flagged_count=row.flagged_count,
        reviewed_count=row.reviewed_count,
        reviewed_correct_count=row.reviewed_correct_count,
        latency_p50_ms=row.latency_p50_ms,
        latency_p90_ms=row.latency_p90_ms,
        latency_p99_ms=row.latency_p99_ms,
        avg_recursion_steps=row.avg_recursion_steps,
        novelty_quantiles=tuple(float(v) for v in row.novelty_quantiles),
        novelty_scored=row.novelty_scored,
    )


def fab_nodes(session: Session, *, fab_id: str) -> list[str]:
    """The nodes a fab has reported, by id."""
    query = select(FabNodeRow.node_id).where(FabNodeRow.fab_id == fab_id)
    return list(session.scalars(query.order_by(FabNodeRow.node_id)))


def fabs(session: Session) -> list[str]:
    """Every fab that has reported a node."""
    return list(session.scalars(select(FabNodeRow.fab_id).distinct().order_by(FabNodeRow.fab_id)))
