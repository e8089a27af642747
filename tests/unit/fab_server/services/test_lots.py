"""Lot summaries on SQLite: counts per class, yield, flagged, dominant pattern, excursion."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import NotFound
from fab_server.models import LotRow
from fab_server.services import ingest, lots
from fab_server.settings import FabSettings
from wafercore.errors import InvalidInput

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


def _result(sequence: int, prediction: int, **changes: Any) -> domain.Result:
    probabilities = [0.0] * 9
    probabilities[prediction] = 1.0
    base = domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id="LOT-1",
        model_version="trm-v1.0.0",
        prediction=prediction,
        probabilities=tuple(probabilities),
        confidence=1.0,
        steps=1,
        latency_ms=5.0,
        flagged=False,
        classified_at=NOW + timedelta(minutes=sequence),
    )
    return dataclasses.replace(base, **changes)


async def _store(sessions: Sessions, results: list[domain.Result]) -> None:
    await ingest.ingest_batch(sessions, node_id="edge-1", results=results, settings=FabSettings())


@pytest.mark.asyncio
async def test_summary_counts_classes_yield_flags_and_times(sessions: Sessions) -> None:
    good = domain.StoredMap(rows=1, cols=4, values=b"\x00\x00\x00\x00")  # yield 1.0
    half = domain.StoredMap(rows=1, cols=4, values=b"\x00\x01\x02\x02")  # yield 0.5
    await _store(
        sessions,
        [
            _result(1, 0, wafer_map=good),
            _result(2, 4, wafer_map=half, flagged=True),
            _result(3, 4),
            _result(4, 8),
            _result(5, 0),
            _result(6, 0, lot_id="LOT-2"),
        ],
    )
    summary = await lots.lot_summary(sessions, lot_id="LOT-1")
    assert summary.class_counts == (2, 0, 0, 0, 2, 0, 0, 0, 1)
    assert summary.total_wafers == 5
    assert summary.die_yield == pytest.approx(0.75)
    assert summary.flagged_count == 1
    assert summary.dominant_pattern == 4  # Edge-Ring; None is never dominant
    assert (summary.excursion, summary.excursion_reason) == (False, "")
    assert (summary.first_seen, summary.last_seen) == (
        NOW + timedelta(minutes=1),
        NOW + timedelta(minutes=5),
    )


@pytest.mark.asyncio
async def test_a_lot_without_patterns_or_maps(sessions: Sessions) -> None:
    await _store(sessions, [_result(1, 0), _result(2, 0)])
    summary = await lots.lot_summary(sessions, lot_id="LOT-1")
    assert summary.dominant_pattern == 0
    assert summary.die_yield is None


@pytest.mark.asyncio
async def test_ties_go_to_the_lower_class_and_excursion_comes_from_the_lot(
    sessions: Sessions,
) -> None:
    await _store(sessions, [_result(1, 7), _result(2, 2)])
    async with sessions.begin() as session:
        await session.execute(
            update(LotRow).values(excursion=True, excursion_reason="Donut on 50% of wafers")
        )
    summary = await lots.lot_summary(sessions, lot_id="LOT-1")
    assert summary.dominant_pattern == 2
    assert (summary.excursion, summary.excursion_reason) == (True, "Donut on 50% of wafers")


@pytest.mark.asyncio
async def test_unknown_and_invalid_lots(sessions: Sessions) -> None:
    with pytest.raises(NotFound):
        await lots.lot_summary(sessions, lot_id="LOT-404")
    with pytest.raises(InvalidInput) as empty:
        await lots.lot_summary(sessions, lot_id="")
    assert empty.value.field == "lot_id"
