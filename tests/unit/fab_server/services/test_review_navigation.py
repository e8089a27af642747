"""Moving through the review queue on SQLite: next/previous item, wrap-around, class filter."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.services import ingest, review
from fab_server.settings import FabSettings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = FabSettings(review_lease_seconds=600, review_confidence_threshold=1.0)
Sessions = async_sessionmaker[AsyncSession]
CONFIDENCES = (0.5, 0.2, 0.9, 0.7)  # queue order: sequences 2, 1, 4, 3


def _probabilities(predicted: int, confidence: float) -> tuple[float, ...]:
    rest = (1.0 - confidence) / 8
    return tuple(confidence if k == predicted else rest for k in range(9))


@pytest_asyncio.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[Sessions]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}"
    migrate(url)
    engine = make_async_engine(url)
    factory = session_factory(engine)
    results = [
        domain.Result(
            node_id="edge-1",
            sequence=seq,
            wafer_id=f"W{seq}",
            lot_id="LOT-1",
            model_version="trm-v1.0.0",
            prediction=seq % 2,
            probabilities=_probabilities(seq % 2, conf),
            confidence=conf,
            steps=2,
            latency_ms=12.0,
            flagged=False,
            classified_at=NOW,
        )
        for seq, conf in enumerate(CONFIDENCES, start=1)
    ]
    await ingest.ingest_batch(factory, node_id="edge-1", results=results, settings=SETTINGS)
    yield factory
    await engine.dispose()


async def _queue(sessions: Sessions) -> list[domain.ReviewItem]:
    return await review.list_queue(sessions, now=NOW)


@pytest.mark.asyncio
async def test_next_and_previous_follow_queue_order_and_wrap(sessions: Sessions) -> None:
    items = await _queue(sessions)
    assert [i.wafer_id for i in items] == ["W2", "W1", "W4", "W3"]
    first, second, _, last = items

    async def step(item: domain.ReviewItem, forward: bool, wrap: bool = False) -> str | None:
        found = await review.adjacent(
            sessions, item=item, user="ana", forward=forward, wrap=wrap, now=NOW
        )
        return found.wafer_id if found else None

    assert await step(first, True) == "W1"
    assert await step(second, False) == "W2"
    assert await step(last, True) is None
    assert await step(last, True, wrap=True) == "W2"
    assert await step(first, False, wrap=True) == "W3"


@pytest.mark.asyncio
async def test_items_others_hold_are_skipped_and_ones_i_hold_are_not(sessions: Sessions) -> None:
    first, second, third, _ = await _queue(sessions)
    await review.claim_item(sessions, item_id=second.id, user="ben", settings=SETTINGS, now=NOW)
    found = await review.adjacent(sessions, item=first, user="ana", now=NOW)
    assert found is not None and found.id == third.id
    mine = await review.adjacent(sessions, item=first, user="ben", now=NOW)
    assert mine is not None and mine.id == second.id


@pytest.mark.asyncio
async def test_the_queue_filters_by_predicted_class(sessions: Sessions) -> None:
    odd = domain.ReviewFilter(predicted_class=1)
    listed = await review.list_queue(sessions, filters=odd, now=NOW)
    assert [i.wafer_id for i in listed] == ["W1", "W3"]
    found = await review.adjacent(sessions, item=listed[0], user="ana", filters=odd, now=NOW)
    assert found is not None and found.wafer_id == "W3"
