"""Lots: one lot's summary (class counts, yield, excursion), the recent lots, a lot's page."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import InvalidArgument, NotFound
from fab_server.repository import lots as lots_repo
from fab_server.repository import results as results_repo
from wafercore.encoding import FAIL, OUT
from wafercore.validation import check_id


async def lot_summary(
    sessions: async_sessionmaker[AsyncSession], *, lot_id: str
) -> domain.LotSummary:
    """Summarise every result stored for a lot.

    Args:
        sessions: session factory.
        lot_id: the lot.

    Returns:
        Counts per class (9), total wafers, mean die yield over the wafers with a stored map
        (None when there is none), flagged count, the most frequent class other than None (0
        when no wafer shows a pattern; ties go to the lower class id), the excursion state
        that the alert rules keep on the lot, and its first/last seen times.

    Raises:
        InvalidArgument: empty or over-long ``lot_id``.
        NotFound: no result of the lot is stored.
    """
    check_id(lot_id, "lot_id")
    async with sessions() as session:
        summary = await results_repo.lot_summary(session, lot_id=lot_id)
    if summary is None:
        raise NotFound(f"lot {lot_id!r}")
    return summary


MAX_RECENT_LOTS = 500
"""Most lots one listing returns."""

MAX_LOT_WAFERS = 1000
"""Most wafers of one lot a lot page reads (a lot is normally 25)."""


@dataclass(frozen=True)
class StackedMap:
    """Fail rate per die position over a lot's wafers of one shape.

    ``rates`` is NaN where no stacked wafer has a die; ``left_out`` counts wafers with a map
    of another shape, ``without_map`` the wafers sent without a map.
    """

    rates: npt.NDArray[np.float64]
    stacked: int
    left_out: int
    without_map: int


@dataclass(frozen=True)
class LotPage:
    """Everything a lot page shows: the summary, the wafers in test order and the stacked map."""

    summary: domain.LotSummary
    wafers: list[lots_repo.LotWafer]
    stacked: StackedMap | None  # None when no wafer of the lot has a stored map


async def recent_lots(
    sessions: async_sessionmaker[AsyncSession], *, limit: int = 100
) -> list[lots_repo.LotListing]:
    """The lots seen last, newest first, with wafer and flagged counts and mean die yield.

    Raises:
        InvalidArgument: ``limit`` outside 1..`MAX_RECENT_LOTS`.
    """
    if not 1 <= limit <= MAX_RECENT_LOTS:
        raise InvalidArgument("limit", f"must be between 1 and {MAX_RECENT_LOTS}, got {limit}")
    async with sessions() as session:
        return await lots_repo.recent_lots(session, limit=limit)


async def lot_page(sessions: async_sessionmaker[AsyncSession], *, lot_id: str) -> LotPage:
    """A lot's summary, its wafers (with maps) in test order and its stacked map.

    Raises:
        InvalidArgument: empty or over-long ``lot_id``.
        NotFound: no result of the lot is stored.
    """
    summary = await lot_summary(sessions, lot_id=lot_id)
    async with sessions() as session:
        wafers = await lots_repo.lot_wafers(
            session, lot_id=lot_id, with_maps=True, limit=MAX_LOT_WAFERS
        )
    return LotPage(summary=summary, wafers=wafers, stacked=stack_maps(wafers))


def stack_maps(wafers: Sequence[lots_repo.LotWafer]) -> StackedMap | None:
    """Fail rate per die position over the wafers' maps of the most common shape.

    A position's rate is failing dies over wafers that have a die there, so an edge die
    missing from some wafers is not diluted by them. Ties between shapes go to the shape
    seen first, so the result does not depend on dictionary order.

    Returns:
        None when no wafer has a map.
    """
    maps = [w.wafer_map for w in wafers if w.wafer_map is not None]
    if not maps:
        return None
    shapes = Counter((m.rows, m.cols) for m in maps)
    shape, count = shapes.most_common(1)[0]
    stack = np.stack(
        [
            np.frombuffer(m.values, dtype=np.uint8).reshape(shape)
            for m in maps
            if (m.rows, m.cols) == shape
        ]
    )
    dies = np.count_nonzero(stack != OUT, axis=0)
    fails = np.count_nonzero(stack == FAIL, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = np.where(dies > 0, fails / np.maximum(dies, 1), np.nan)
    return StackedMap(
        rates=rates.astype(np.float64),
        stacked=count,
        left_out=len(maps) - count,
        without_map=len(wafers) - len(maps),
    )
