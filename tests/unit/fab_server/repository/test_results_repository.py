"""The results repository on SQLite: idempotent inserts, lot spans, monotonic acks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.models import LotRow, WaferMapRow
from fab_server.repository import results as repo

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


def _result(sequence: int, wafer_map: domain.StoredMap | None = None) -> domain.Result:
    return domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id="LOT-1",
        model_version="trm-v1.0.0",
        prediction=0,
        probabilities=(1.0,) + (0.0,) * 8,
        confidence=1.0,
        steps=1,
        latency_ms=1.0,
        flagged=False,
        classified_at=T0,
        wafer_map=wafer_map,
    )


@pytest.mark.asyncio
async def test_insert_returns_only_newly_stored_sequences(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        first = await repo.insert_results(
            session, results=[_result(1), _result(2)], die_yields=[None, 0.5], received_at=T0
        )
        second = await repo.insert_results(
            session, results=[_result(2), _result(3)], die_yields=[None, None], received_at=T0
        )
        empty = await repo.insert_results(session, results=[], die_yields=[], received_at=T0)
    assert (first, second, empty) == ({1, 2}, {3}, set())


@pytest.mark.asyncio
async def test_maps_are_stored_once(sessions: Sessions) -> None:
    one = domain.StoredMap(rows=1, cols=1, values=b"\x00")
    other = domain.StoredMap(rows=1, cols=1, values=b"\x01")
    async with sessions.begin() as session:
        await repo.insert_maps(session, results=[_result(1, one), _result(2)])
        await repo.insert_maps(session, results=[_result(1, other)])
    async with sessions() as session:
        maps = list(await session.scalars(select(WaferMapRow)))
    assert [(m.sequence, m.values) for m in maps] == [(1, b"\x00")]


@pytest.mark.asyncio
async def test_lot_spans_only_widen_and_keep_the_excursion(sessions: Sessions) -> None:
    hour = timedelta(hours=1)
    async with sessions.begin() as session:
        await repo.upsert_lots(session, spans={"LOT-1": (T0, T0 + hour)})
        await session.execute(update(LotRow).values(excursion=True, excursion_reason="why"))
        await repo.upsert_lots(session, spans={"LOT-1": (T0 + hour / 2, T0 + 2 * hour)})
        await repo.upsert_lots(session, spans={"LOT-1": (T0 - hour, T0)})
    async with sessions() as session:
        lot = await session.get(LotRow, "LOT-1")
    assert lot is not None
    assert (lot.first_seen.replace(tzinfo=UTC), lot.last_seen.replace(tzinfo=UTC)) == (
        T0 - hour,
        T0 + 2 * hour,
    )
    assert (lot.excursion, lot.excursion_reason) == (True, "why")


@pytest.mark.asyncio
async def test_the_acked_sequence_never_decreases(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        assert await repo.advance_node(session, node_id="n", stored_up_to=10, now=T0) == 10
        assert await repo.advance_node(session, node_id="n", stored_up_to=4, now=T0) == 10
        assert await repo.advance_node(session, node_id="n", stored_up_to=12, now=T0) == 12
        assert await repo.node_acked_sequence(session, node_id="n") == 12
        assert await repo.node_acked_sequence(session, node_id="never-seen") == 0
