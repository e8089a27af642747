"""The sync agent's data access: watermarks, labels to upload, the figures of a node's day.

Keyword-only functions on an ``AsyncSession`` that return `fab_server.sync.records` objects,
like `fab_server.repository`; only this module of the sync package touches ORM rows.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import (
    EdgeNodeRow,
    LabelRow,
    ModelAssignmentRow,
    ResultRow,
    ReviewItemRow,
    SyncStateRow,
    WaferMapRow,
    utc,
)
from fab_server.repository import dialect_insert
from fab_server.sync.records import (
    KnownNode,
    LabelRecord,
    ResultFigures,
    ReviewMark,
    StateEntry,
)

UPLOADED_OUTCOMES = (domain.ReviewOutcome.CONFIRMED.value, domain.ReviewOutcome.RELABELLED.value)
"""Verdicts that are training data (an unusable wafer is not)."""


def _aware(value: datetime) -> datetime:
    out = utc(value)
    assert out is not None
    return out


async def get_state(session: AsyncSession, *, name: str) -> StateEntry | None:
    """The value stored under ``name``, or None."""
    row = await session.get(SyncStateRow, name)
    if row is None:
        return None
    return StateEntry(name=row.name, value=dict(row.value), updated_at=_aware(row.updated_at))


async def set_state(
    session: AsyncSession, *, name: str, value: dict[str, object], now: datetime
) -> None:
    """Create or replace the value stored under ``name``."""
    stmt = dialect_insert(session, SyncStateRow).values(name=name, value=value, updated_at=now)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["name"], set_={"value": value, "updated_at": now}
        )
    )


async def all_states(session: AsyncSession) -> list[StateEntry]:
    """Every stored value, by name."""
    rows = await session.scalars(select(SyncStateRow).order_by(SyncStateRow.name))
    return [
        StateEntry(name=r.name, value=dict(r.value), updated_at=_aware(r.updated_at)) for r in rows
    ]


async def labels_page(
    session: AsyncSession,
    *,
    after_id: int,
    watermark: int,
    resolved_since: datetime,
    limit: int,
    with_maps: bool,
) -> list[LabelRecord]:
    """Uploadable labels with id above ``after_id``, by id, at most ``limit``.

    A label qualifies when its id is above ``watermark`` (not acknowledged yet) or it was
    resolved at or after ``resolved_since`` (the overlap: PostgreSQL commits ids out of order).
    Maps are read only when ``with_maps``.
    """
    columns: list[Any] = [
        LabelRow,
        ReviewItemRow.lot_id,
        ReviewItemRow.reason,
        ReviewItemRow.confidence,
        *([WaferMapRow] if with_maps else []),
    ]
    stmt = (
        select(*columns)
        .join(ReviewItemRow, ReviewItemRow.id == LabelRow.review_item_id)
        .where(
            LabelRow.id > after_id,
            LabelRow.outcome.in_(UPLOADED_OUTCOMES),
            LabelRow.true_label.is_not(None),
            or_(LabelRow.id > watermark, LabelRow.resolved_at >= resolved_since),
        )
        .order_by(LabelRow.id)
        .limit(limit)
    )
    if with_maps:
        stmt = stmt.outerjoin(
            WaferMapRow,
            and_(
                WaferMapRow.node_id == LabelRow.node_id, WaferMapRow.sequence == LabelRow.sequence
            ),
        )
    return [_label_record(row, with_maps) for row in (await session.execute(stmt)).all()]


def _label_record(row: Any, with_maps: bool) -> LabelRecord:
    label: LabelRow = row[0]
    stored_map: WaferMapRow | None = row[4] if with_maps else None
    assert label.true_label is not None
    return LabelRecord(
        label_id=label.id,
        wafer_id=label.wafer_id,
        lot_id=row[1],
        node_id=label.node_id,
        sequence=label.sequence,
        outcome=domain.ReviewOutcome(label.outcome),
        true_label=label.true_label,
        predicted_class=label.predicted_class,
        model_version=label.model_version or "",
        confidence=row[3],
        reason=domain.ReviewReason(row[2]),
        resolved_by=label.resolved_by,
        resolved_at=_aware(label.resolved_at),
        wafer_map=stored_map.to_domain() if stored_map is not None else None,
    )


async def received_spans(
    session: AsyncSession, *, received_since: datetime
) -> dict[str, tuple[datetime, datetime]]:
    """Per node, the first and last ``classified_at`` of results received since a time."""
    stmt = (
        select(
            ResultRow.node_id, func.min(ResultRow.classified_at), func.max(ResultRow.classified_at)
        )
        .where(ResultRow.received_at >= received_since)
        .group_by(ResultRow.node_id)
    )
    return {
        node: (_aware(first), _aware(last))
        for node, first, last in (await session.execute(stmt)).all()
    }


async def labelled_since(
    session: AsyncSession, *, resolved_since: datetime
) -> list[tuple[str, datetime]]:
    """(node, classified_at) of the results whose verdict came at or after a time."""
    stmt = (
        select(ResultRow.node_id, ResultRow.classified_at)
        .join(
            LabelRow,
            and_(LabelRow.node_id == ResultRow.node_id, LabelRow.sequence == ResultRow.sequence),
        )
        .where(LabelRow.resolved_at >= resolved_since)
        .distinct()
    )
    return [(node, _aware(at)) for node, at in (await session.execute(stmt)).all()]


async def day_results(
    session: AsyncSession, *, node_id: str, start: datetime, end: datetime
) -> list[ResultFigures]:
    """A node's results classified in ``[start, end)``."""
    stmt = select(
        ResultRow.sequence,
        ResultRow.model_version,
        ResultRow.prediction,
        ResultRow.latency_ms,
        ResultRow.steps,
        ResultRow.flagged,
        ResultRow.confidence,
        ResultRow.novelty,
    ).where(
        ResultRow.node_id == node_id,
        ResultRow.classified_at >= start,
        ResultRow.classified_at < end,
    )
    return [ResultFigures(*row) for row in (await session.execute(stmt)).all()]


async def day_review_marks(
    session: AsyncSession, *, node_id: str, start: datetime, end: datetime
) -> list[ReviewMark]:
    """The review items (and verdicts) of a node's results classified in ``[start, end)``."""
    stmt = (
        select(ReviewItemRow.sequence, ReviewItemRow.reason, LabelRow.outcome)
        .join(
            ResultRow,
            and_(
                ResultRow.node_id == ReviewItemRow.node_id,
                ResultRow.sequence == ReviewItemRow.sequence,
            ),
        )
        .outerjoin(LabelRow, LabelRow.review_item_id == ReviewItemRow.id)
        .where(
            ReviewItemRow.node_id == node_id,
            ResultRow.classified_at >= start,
            ResultRow.classified_at < end,
        )
    )
    return [
        ReviewMark(
            sequence=sequence,
            reason=domain.ReviewReason(reason),
            outcome=domain.ReviewOutcome(outcome) if outcome else None,
        )
        for sequence, reason, outcome in (await session.execute(stmt)).all()
    ]


async def known_nodes(session: AsyncSession) -> list[KnownNode]:
    """Every node the fab has heard from, by id."""
    rows = await session.execute(
        select(EdgeNodeRow.node_id, EdgeNodeRow.installed_version).order_by(EdgeNodeRow.node_id)
    )
    return [KnownNode(node_id=node, installed_version=version) for node, version in rows.all()]


async def own_assignments(
    session: AsyncSession, *, node_ids: Collection[str]
) -> dict[str, domain.Assignment]:
    """The assignments of exactly these nodes (not the fab-wide default's)."""
    if not node_ids:
        return {}
    rows = await session.scalars(
        select(ModelAssignmentRow).where(ModelAssignmentRow.node_id.in_(list(node_ids)))
    )
    return {row.node_id: row.to_domain() for row in rows}
