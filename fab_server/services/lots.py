"""Lot summaries: class counts, yield and excursion state of one lot."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import NotFound
from fab_server.repository import results as results_repo
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
