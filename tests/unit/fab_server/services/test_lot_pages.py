"""Lot pages on SQLite: recent lots, a lot's wafers in test order, and the stacked map."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import InvalidArgument, NotFound
from fab_server.repository.lots import LotWafer
from fab_server.services import ingest, lots, review
from fab_server.settings import FabSettings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


def _map(rows: list[list[int]]) -> domain.StoredMap:
    grid = np.array(rows, dtype=np.uint8)
    return domain.StoredMap(rows=grid.shape[0], cols=grid.shape[1], values=grid.tobytes())


def _result(sequence: int, lot_id: str = "LOT-1", **changes: Any) -> domain.Result:
    base = domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id=lot_id,
        model_version="cnn-v2.0.0",
        prediction=0,
        probabilities=(1.0,) + (0.0,) * 8,
        confidence=0.99,
        steps=1,
        latency_ms=2.0,
        flagged=False,
        classified_at=NOW + timedelta(minutes=sequence),
    )
    return dataclasses.replace(base, **changes)


async def _store(sessions: Sessions, results: list[domain.Result]) -> None:
    await ingest.ingest_batch(sessions, node_id="edge-1", results=results, settings=FabSettings())


@pytest.mark.asyncio
async def test_stacked_map_is_the_fail_rate_per_position_of_the_common_shape(
    sessions: Sessions,
) -> None:
    # Three 2x3 wafers (position (0,2) is out of wafer on one of them), one 1x2 wafer left
    # out as another shape, one wafer without a map.
    await _store(
        sessions,
        [
            _result(1, wafer_map=_map([[1, 0, 1], [0, 0, 2]])),
            _result(2, wafer_map=_map([[1, 1, 2], [0, 0, 2]])),
            _result(3, wafer_map=_map([[0, 1, 0], [0, 1, 2]])),
            _result(4, wafer_map=_map([[1, 1]])),
            _result(5),
        ],
    )
    page = await lots.lot_page(sessions, lot_id="LOT-1")
    assert page.stacked is not None
    assert (page.stacked.stacked, page.stacked.left_out, page.stacked.without_map) == (3, 1, 1)
    expected = np.array([[2 / 3, 2 / 3, 1 / 2], [0.0, 1 / 3, np.nan]])
    np.testing.assert_allclose(page.stacked.rates, expected)
    assert page.summary.total_wafers == 5


@pytest.mark.asyncio
async def test_wafers_come_in_test_order_with_yield_and_maps(sessions: Sessions) -> None:
    # Sequence 2 was tested before sequence 1; sequence 3 has no station time.
    await _store(
        sessions,
        [
            _result(1, tested_at=NOW + timedelta(minutes=5), wafer_map=_map([[0, 1]])),
            _result(2, tested_at=NOW, prediction=4, flagged=True, wafer_map=_map([[0, 0]])),
            _result(3, wafer_map=_map([[1, 1]]), confidence=0.1),  # queued for review
        ],
    )
    page = await lots.lot_page(sessions, lot_id="LOT-1")
    assert [w.wafer_id for w in page.wafers] == ["W2", "W3", "W1"]
    queued = {item.wafer_id: item.id for item in await review.list_queue(sessions)}
    assert set(queued) == {"W2", "W3"}  # flagged, and low confidence
    assert [w.review_item_id for w in page.wafers] == [queued["W2"], queued["W3"], None]
    assert [w.die_yield for w in page.wafers] == [1.0, 0.0, 0.5]
    assert page.wafers[0].prediction == 4 and page.wafers[0].flagged
    assert page.wafers[2].wafer_map == _map([[0, 1]])


@pytest.mark.asyncio
async def test_a_lot_without_maps_has_no_stacked_map(sessions: Sessions) -> None:
    await _store(sessions, [_result(1), _result(2)])
    page = await lots.lot_page(sessions, lot_id="LOT-1")
    assert page.stacked is None
    assert len(page.wafers) == 2
    with pytest.raises(NotFound):
        await lots.lot_page(sessions, lot_id="LOT-404")


@pytest.mark.asyncio
async def test_recent_lots_newest_first_with_counts(sessions: Sessions) -> None:
    await _store(
        sessions,
        [
            _result(1, "LOT-A", wafer_map=_map([[0, 1]]), flagged=True),
            _result(2, "LOT-A", wafer_map=_map([[0, 0]])),
            _result(3, "LOT-B"),
            _result(4, "LOT-C"),
        ],
    )
    listing = await lots.recent_lots(sessions, limit=2)
    assert [lot.lot_id for lot in listing] == ["LOT-C", "LOT-B"]
    every = {lot.lot_id: lot for lot in await lots.recent_lots(sessions)}
    assert (every["LOT-A"].wafers, every["LOT-A"].flagged) == (2, 1)
    assert every["LOT-A"].die_yield == pytest.approx(0.75)
    assert every["LOT-B"].die_yield is None
    with pytest.raises(InvalidArgument):
        await lots.recent_lots(sessions, limit=0)


def test_shape_ties_go_to_the_first_seen() -> None:
    wafer = LotWafer
    common: dict[str, Any] = {
        "node_id": "e",
        "prediction": 0,
        "confidence": 1.0,
        "die_yield": None,
        "flagged": False,
        "model_version": "v",
        "classified_at": NOW,
        "tested_at": None,
    }
    wafers = [
        wafer(sequence=1, wafer_id="a", wafer_map=_map([[1, 1, 1]]), **common),
        wafer(sequence=2, wafer_id="b", wafer_map=_map([[0], [1]]), **common),
    ]
    stacked = lots.stack_maps(wafers)
    assert stacked is not None
    assert stacked.rates.shape == (1, 3) and stacked.left_out == 1
