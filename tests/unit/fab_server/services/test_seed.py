"""Seeded synthetic wafers: every one stored, in lots of 25 that are each one product."""

from __future__ import annotations

from collections import defaultdict

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.models import ResultRow, WaferMapRow
from fab_server.services.classify import Classifier
from fab_server.services.seed import WAFERS_PER_LOT, seed_synthetic
from fab_server.settings import FabSettings
from wafercore.shipped import shipped_model_dir

Sessions = async_sessionmaker[AsyncSession]


@pytest.mark.asyncio
async def test_seeded_lots_hold_25_wafers_of_one_shape_and_seeding_again_adds_lots(
    sessions: Sessions,
) -> None:
    classifier = Classifier(shipped_model_dir())
    first = await seed_synthetic(sessions, classifier, settings=FabSettings(), count=60)
    again = await seed_synthetic(sessions, classifier, settings=FabSettings(), count=10)
    assert (first.accepted, again.accepted) == (60, 10)
    async with sessions() as session:
        rows = (
            await session.execute(
                select(ResultRow.lot_id, WaferMapRow.rows, WaferMapRow.cols).join(
                    WaferMapRow,
                    (WaferMapRow.node_id == ResultRow.node_id)
                    & (WaferMapRow.sequence == ResultRow.sequence),
                )
            )
        ).all()
    shapes: dict[str, set[tuple[int, int]]] = defaultdict(set)
    sizes: dict[str, int] = defaultdict(int)
    for lot_id, rows_, cols in rows:
        shapes[lot_id].add((rows_, cols))
        sizes[lot_id] += 1
    assert len(rows) == 70
    assert all(len(s) == 1 for s in shapes.values()), shapes
    assert sorted(sizes.values()) == [10, 10, 25, 25]  # 60 = 25 + 25 + 10, then a new lot
    assert max(sizes.values()) == WAFERS_PER_LOT
    assert len({next(iter(s)) for s in shapes.values()}) > 1  # products differ between lots
