"""Lot pages: the recent lots, a lot's wafers in test order, and their stored maps.

Reads go through ``ix_lots_last_seen`` and ``ix_results_lot_id``, so their cost grows with the
lots shown, not with the results table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import LotRow, ResultRow, ReviewItemRow, WaferMapRow, utc


@dataclass(frozen=True)
class LotListing:
    """One line of the recent lots list."""

    lot_id: str
    first_seen: datetime | None
    last_seen: datetime | None
    excursion: bool
    excursion_reason: str
    wafers: int
    flagged: int
    die_yield: float | None  # mean over wafers with a stored map


@dataclass(frozen=True)
class LotWafer:
    """One wafer of a lot as its page lists it (its map only when asked for)."""

    node_id: str
    sequence: int
    wafer_id: str
    prediction: int
    confidence: float
    die_yield: float | None
    flagged: bool
    model_version: str
    classified_at: datetime
    tested_at: datetime | None
    wafer_map: domain.StoredMap | None
    review_item_id: str | None = None  # its review item (the latest), when it was queued


async def recent_lots(session: AsyncSession, *, limit: int) -> list[LotListing]:
    """The ``limit`` lots seen last, newest first, with their wafer counts and mean yield."""
    lots = select(LotRow).order_by(LotRow.last_seen.desc(), LotRow.lot_id).limit(limit).subquery()
    flagged = func.coalesce(func.sum(case((ResultRow.flagged, 1), else_=0)), 0)
    stmt = (
        select(
            lots.c.lot_id,
            lots.c.first_seen,
            lots.c.last_seen,
            lots.c.excursion,
            lots.c.excursion_reason,
            func.count(ResultRow.id),
            flagged,
            func.avg(ResultRow.die_yield),
        )
        .outerjoin(ResultRow, ResultRow.lot_id == lots.c.lot_id)
        .group_by(
            lots.c.lot_id,
            lots.c.first_seen,
            lots.c.last_seen,
            lots.c.excursion,
            lots.c.excursion_reason,
        )
        .order_by(lots.c.last_seen.desc(), lots.c.lot_id)
    )
    return [
        LotListing(
            lot_id=lot_id,
            first_seen=utc(first),
            last_seen=utc(last),
            excursion=bool(excursion),
            excursion_reason=reason or "",
            wafers=int(wafers),
            flagged=int(n_flagged),
            die_yield=None if mean is None else float(mean),
        )
        for lot_id, first, last, excursion, reason, wafers, n_flagged, mean in (
            await session.execute(stmt)
        ).all()
    ]


async def lot_wafers(
    session: AsyncSession, *, lot_id: str, with_maps: bool, limit: int
) -> list[LotWafer]:
    """A lot's wafers in test order (the station's time, else classification time).

    Args:
        session: an open session.
        lot_id: the lot.
        with_maps: also read each wafer's stored map (None for wafers sent without one).
        limit: at most this many wafers, the first tested.
    """
    tested = func.coalesce(ResultRow.tested_at, ResultRow.classified_at)
    order = (tested, ResultRow.wafer_id, ResultRow.node_id, ResultRow.sequence)
    stmt = select(ResultRow).where(ResultRow.lot_id == lot_id).order_by(*order).limit(limit)
    if with_maps:
        stmt = stmt.add_columns(WaferMapRow).outerjoin(
            WaferMapRow,
            and_(
                WaferMapRow.node_id == ResultRow.node_id,
                WaferMapRow.sequence == ResultRow.sequence,
            ),
        )
    reviews = await _review_items(session, lot_id=lot_id)
    out = []
    for found in (await session.execute(stmt)).all():
        # The statement's column count depends on with_maps, so the row type is only known here.
        parts: tuple[Any, ...] = tuple(found)
        row: ResultRow = parts[0]
        map_row: WaferMapRow | None = parts[1] if with_maps else None
        out.append(
            LotWafer(
                node_id=row.node_id,
                sequence=row.sequence,
                wafer_id=row.wafer_id,
                prediction=row.prediction,
                confidence=row.confidence,
                die_yield=row.die_yield,
                flagged=row.flagged,
                model_version=row.model_version,
                classified_at=utc(row.classified_at) or row.classified_at,
                tested_at=utc(row.tested_at),
                wafer_map=map_row.to_domain() if map_row is not None else None,
                review_item_id=reviews.get((row.node_id, row.sequence)),
            )
        )
    return out


async def _review_items(session: AsyncSession, *, lot_id: str) -> dict[tuple[str, int], str]:
    """The review item of each queued wafer of a lot, the latest when it was queued twice."""
    stmt = (
        select(ReviewItemRow.node_id, ReviewItemRow.sequence, ReviewItemRow.id)
        .join(
            ResultRow,
            and_(
                ResultRow.node_id == ReviewItemRow.node_id,
                ResultRow.sequence == ReviewItemRow.sequence,
            ),
        )
        .where(ResultRow.lot_id == lot_id)
        .order_by(ReviewItemRow.created_at, ReviewItemRow.id)
    )
    return {(node, seq): item_id for node, seq, item_id in (await session.execute(stmt)).all()}
