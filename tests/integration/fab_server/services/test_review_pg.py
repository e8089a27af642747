"""The review queue on real PostgreSQL: concurrent claims and flags, lease expiry, accuracy."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.db import make_async_engine, session_factory
from fab_server.errors import Conflict
from fab_server.models import ResultRow
from fab_server.services import review
from fab_server.settings import FabSettings

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


@pytest_asyncio.fixture
async def sessions(fab_settings: FabSettings) -> AsyncIterator[Sessions]:
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    yield session_factory(engine)
    await engine.dispose()


def _result(sequence: int, confidence: float) -> domain.Result:
    return domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id="LOT-1",
        model_version="trm-v1.0.0",
        prediction=sequence % 9,
        probabilities=(1 / 9,) * 9,
        confidence=confidence,
        steps=1,
        latency_ms=10.0,
        flagged=False,
        classified_at=NOW,
    )


async def _ingest(sessions: Sessions, settings: FabSettings, results: list[domain.Result]) -> int:
    async with sessions.begin() as session:
        session.add_all(
            ResultRow(
                **{
                    f.name: getattr(r, f.name)
                    for f in dataclasses.fields(r)
                    if f.name
                    not in (
                        "wafer_map",
                        "received_at",
                        "review_reason",
                        "probabilities",
                        "embedding",
                    )
                },
                probabilities=list(r.probabilities),
                review_reason=int(r.review_reason),
                received_at=NOW,
            )
            for r in results
        )
        await session.flush()
        return await review.enqueue_from_results(
            session, results=results, settings=settings, now=NOW
        )


@pytest.mark.asyncio
async def test_eight_concurrent_claimers_never_share_an_item(
    sessions: Sessions, fab_settings: FabSettings
) -> None:
    total = 40
    queued = await _ingest(
        sessions, fab_settings, [_result(s, confidence=s / 100) for s in range(1, total + 1)]
    )
    assert queued == total

    async def claimer(user: str) -> list[domain.ReviewItem]:
        mine: list[domain.ReviewItem] = []
        while True:
            item = await review.claim_next(sessions, user=user, settings=fab_settings, now=NOW)
            if item is None:
                return mine
            mine.append(item)

    claims = await asyncio.gather(*(claimer(f"eng-{n}") for n in range(8)))
    ids = [item.id for mine in claims for item in mine]
    assert len(ids) == total and len(set(ids)) == total
    assert sum(1 for mine in claims if mine) > 1  # the claimers really ran side by side
    for n, mine in enumerate(claims):
        assert all(item.claimed_by == f"eng-{n}" for item in mine)
        # Each claimer takes items in priority order.
        assert [i.priority for i in mine] == sorted(i.priority for i in mine)
    depth = await review.queue_depth(sessions, now=NOW)
    assert depth == {domain.ReviewState.OPEN: 0, domain.ReviewState.CLAIMED: total}
    lapsed = await review.queue_depth(sessions, now=NOW + timedelta(days=1))
    assert lapsed == {domain.ReviewState.OPEN: total, domain.ReviewState.CLAIMED: 0}


@pytest.mark.asyncio
async def test_concurrent_flags_with_one_key_make_one_ticket(
    sessions: Sessions, fab_settings: FabSettings
) -> None:
    request = domain.FlagRequest(
        idempotency_key="station-3/0001",
        node_id="edge-1",
        sequence=77,
        wafer_id="W77",
        reason=domain.ReviewReason.MANUAL,
    )
    tickets = await asyncio.gather(
        *(
            review.flag_for_review(sessions, request=request, settings=fab_settings, now=NOW)
            for _ in range(8)
        )
    )
    assert len({t.id for t in tickets}) == 1
    assert len(await review.list_queue(sessions, now=NOW)) == 1


@pytest.mark.asyncio
async def test_lapsed_lease_taken_over_then_late_resolution_conflicts(
    sessions: Sessions, fab_settings: FabSettings
) -> None:
    await _ingest(sessions, fab_settings, [_result(5, confidence=0.3)])
    first = await review.claim_next(sessions, user="ana", settings=fab_settings, now=NOW)
    assert first is not None
    later = NOW + timedelta(seconds=fab_settings.review_lease_seconds + 1)
    [listed] = await review.list_queue(sessions, now=later)
    assert listed.state is domain.ReviewState.OPEN and listed.claimed_by is None
    taken = await review.claim_item(
        sessions, item_id=first.id, user="ben", settings=fab_settings, now=later
    )
    assert taken.claimed_by == "ben"
    verdict = domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=2)
    with pytest.raises(Conflict):
        await review.resolve(sessions, item_id=first.id, resolution=verdict, user="ana", now=later)
    done = await review.resolve(
        sessions, item_id=first.id, resolution=verdict, user="ben", now=later
    )
    assert done.resolved_at == later
    [stats] = await review.reviewed_accuracy(sessions, since=NOW)
    assert (stats.model_version, stats.reviewed, stats.confirmed) == ("trm-v1.0.0", 1, 0)
    assert [c.predicted_class for c in stats.per_class] == [5]
