"""Ingest on real PostgreSQL: the unnest fast path stores every field; one transaction per batch."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.db import make_async_engine, session_factory
from fab_server.models import EdgeNodeRow, LotRow, ResultRow, ReviewItemRow, WaferMapRow
from fab_server.services import ingest, review
from fab_server.settings import FabSettings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture
async def sessions(fab_settings: FabSettings) -> AsyncIterator[Sessions]:
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    yield session_factory(engine)
    await engine.dispose()


def _result(node_id: str, sequence: int, **changes: Any) -> domain.Result:
    base = domain.Result(
        node_id=node_id,
        sequence=sequence,
        wafer_id=f"{node_id}-W{sequence}",
        lot_id=f"LOT-{sequence % 5}",
        model_version="trm-v1.0.0",
        prediction=sequence % 9,
        probabilities=(0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1),
        confidence=0.9,
        steps=1 + sequence % 4,
        latency_ms=3.25,
        flagged=False,
        classified_at=NOW + timedelta(seconds=sequence),
    )
    return dataclasses.replace(base, **changes)


async def _count(sessions: Sessions, table: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


@pytest.mark.asyncio
async def test_every_field_is_stored_as_sent(sessions: Sessions, fab_settings: FabSettings) -> None:
    wafer_map = domain.StoredMap(rows=2, cols=3, values=b"\x00\x01\x02\x00\x00\x01")
    sent = [
        _result("edge-1", 1, novelty=0.75, flagged=True, wafer_map=wafer_map),
        _result(
            "edge-1", 2, review_reason=domain.ReviewReason.CANARY_SAMPLE, lot_id="LOT 'quoted'"
        ),
        _result("edge-1", 3, novelty=None, probabilities=(0.0,) * 8 + (1.0,), prediction=8),
    ]
    received = NOW + timedelta(minutes=5)
    await ingest.ingest_batch(
        sessions, node_id="edge-1", results=sent, settings=fab_settings, now=received
    )
    async with sessions() as session:
        rows = list(await session.scalars(select(ResultRow).order_by(ResultRow.sequence)))
        maps = list(await session.scalars(select(WaferMapRow)))
        stored = [row.to_domain(maps[0].to_domain() if row.sequence == 1 else None) for row in rows]
        yields = [row.die_yield for row in rows]
    assert stored == [dataclasses.replace(r, received_at=received) for r in sent]
    assert yields == [pytest.approx(3 / 5), None, None]  # 3 passing, 2 failing dies


@pytest.mark.asyncio
async def test_concurrent_batches_over_shared_lots_neither_deadlock_nor_lose_rows(
    sessions: Sessions, fab_settings: FabSettings
) -> None:
    # 12 nodes, each batch touching the same 5 lots: the lots' rows are locked in one order.
    batches = {f"edge-{n}": [_result(f"edge-{n}", s) for s in range(1, 101)] for n in range(12)}
    outcomes = await asyncio.gather(
        *(
            ingest.ingest_batch(sessions, node_id=node, results=results, settings=fab_settings)
            for node, results in batches.items()
        )
    )
    assert {(o.accepted, o.duplicates, o.acked_sequence) for o in outcomes} == {(100, 0, 100)}
    assert await _count(sessions, ResultRow) == 1200
    async with sessions() as session:
        lots = {lot.lot_id: lot for lot in await session.scalars(select(LotRow))}
    assert sorted(lots) == [f"LOT-{k}" for k in range(5)]
    assert lots["LOT-1"].first_seen == NOW + timedelta(seconds=1)
    assert lots["LOT-0"].last_seen == NOW + timedelta(seconds=100)


@pytest.mark.asyncio
async def test_the_review_queue_is_fed_in_the_same_transaction(
    sessions: Sessions, fab_settings: FabSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    low = [_result("edge-1", s, confidence=0.3) for s in range(1, 4)]
    await ingest.ingest_batch(sessions, node_id="edge-1", results=low, settings=fab_settings)
    async with sessions() as session:
        keys = sorted(await session.scalars(select(ReviewItemRow.idempotency_key)))
    assert keys == ["auto:edge-1:1", "auto:edge-1:2", "auto:edge-1:3"]

    async def broken(*_: Any, **__: Any) -> int:
        raise RuntimeError("review queue unavailable")

    monkeypatch.setattr(review, "enqueue_from_results", broken)
    later = [_result("edge-1", s, confidence=0.3) for s in range(4, 7)]
    with pytest.raises(RuntimeError):
        await ingest.ingest_batch(sessions, node_id="edge-1", results=later, settings=fab_settings)
    # Nothing of the failed batch is stored, and the ack state did not move.
    assert await _count(sessions, ResultRow) == 3
    async with sessions() as session:
        node = await session.get(EdgeNodeRow, "edge-1")
    assert node is not None and node.acked_sequence == 3
