"""The review queue's life cycle on SQLite: enqueue, flag, claim, lease expiry, resolve, stats."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument, NotFound
from fab_server.models import LabelRow, ResultRow
from fab_server.repository import review as review_repo
from fab_server.services import review
from fab_server.settings import FabSettings

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# The fab's own novelty threshold is set: results at or above it are queued as novel.
SETTINGS = FabSettings(review_lease_seconds=600, review_novelty_threshold=0.5)
Sessions = async_sessionmaker[AsyncSession]


def _result(sequence: int, confidence: float = 0.4, **changes: object) -> domain.Result:
    base = domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id="LOT-1",
        model_version="trm-v1.0.0",
        prediction=4,
        probabilities=(0.0,) * 9,
        confidence=confidence,
        steps=2,
        latency_ms=12.0,
        flagged=False,
        classified_at=NOW,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def _ingest(sessions: Sessions, results: list[domain.Result]) -> int:
    """Store results and enqueue them in one transaction, as ingest does."""
    async with sessions.begin() as session:
        for r in results:
            session.add(
                ResultRow(
                    node_id=r.node_id,
                    sequence=r.sequence,
                    wafer_id=r.wafer_id,
                    lot_id=r.lot_id,
                    model_version=r.model_version,
                    prediction=r.prediction,
                    probabilities=list(r.probabilities),
                    confidence=r.confidence,
                    steps=r.steps,
                    latency_ms=r.latency_ms,
                    novelty=r.novelty,
                    flagged=r.flagged,
                    review_reason=int(r.review_reason),
                    classified_at=r.classified_at,
                    received_at=NOW,
                )
            )
        await session.flush()
        return await review.enqueue_from_results(
            session, results=results, settings=SETTINGS, now=NOW
        )


def _flag(key: str, sequence: int, **changes: object) -> domain.FlagRequest:
    request = domain.FlagRequest(
        idempotency_key=key,
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        reason=domain.ReviewReason.UNSPECIFIED,
        comment="looks odd",
        requested_by="station-3",
    )
    return dataclasses.replace(request, **changes)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_enqueue_keeps_only_results_that_need_review_and_is_idempotent(
    sessions: Sessions,
) -> None:
    results = [
        _result(1, confidence=0.95),  # confident: not queued
        _result(2, confidence=0.55),
        _result(3, confidence=0.97, novelty=0.9),
        _result(4, confidence=0.99, review_reason=domain.ReviewReason.CANARY_SAMPLE),
        _result(5, confidence=0.2),
    ]
    assert await _ingest(sessions, results) == 4
    async with sessions.begin() as session:  # a re-delivered batch queues nothing new
        again = await review.enqueue_from_results(
            session, results=results, settings=SETTINGS, now=NOW
        )
    assert again == 0
    queue = await review.list_queue(sessions, now=NOW)
    assert [(i.sequence, i.reason) for i in queue] == [
        (3, domain.ReviewReason.NOVELTY),  # priority 1 - 0.9
        (5, domain.ReviewReason.LOW_CONFIDENCE),  # 0.2
        (2, domain.ReviewReason.LOW_CONFIDENCE),  # 0.55
        (4, domain.ReviewReason.CANARY_SAMPLE),  # 0.99
    ]
    assert queue[0].idempotency_key == "auto:edge-1:3"
    assert queue[0].model_version == "trm-v1.0.0" and queue[0].lot_id == "LOT-1"


@pytest.mark.asyncio
async def test_flag_is_idempotent_and_completed_when_the_result_arrives(
    sessions: Sessions,
) -> None:
    first = await review.flag_for_review(
        sessions, request=_flag("k-1", 9), settings=SETTINGS, now=NOW
    )
    retry = await review.flag_for_review(
        sessions, request=_flag("k-1", 9), settings=SETTINGS, now=NOW + timedelta(minutes=5)
    )
    assert retry == first
    assert (first.reason, first.priority, first.predicted_class) == (
        domain.ReviewReason.MANUAL,
        0.0,
        None,
    )
    with pytest.raises(Conflict):
        await review.flag_for_review(sessions, request=_flag("k-1", 10), settings=SETTINGS)
    with pytest.raises(InvalidArgument) as raised:
        await review.flag_for_review(sessions, request=_flag("", 9), settings=SETTINGS)
    assert raised.value.field == "idempotency_key"

    # The result arrives (low confidence): the flagged item gets its prediction, no duplicate.
    assert await _ingest(sessions, [_result(9, confidence=0.3)]) == 0
    item, result = await review.get_item(sessions, item_id=first.id, now=NOW)
    assert result is not None and result.wafer_id == "W9"
    assert (item.predicted_class, item.confidence, item.priority) == (4, 0.3, 0.3)
    assert len(await review.list_queue(sessions, now=NOW)) == 1

    # The reviewer's note is added to the station's, not put in its place.
    await review.claim_item(sessions, item_id=item.id, user="ana", settings=SETTINGS, now=NOW)
    verdict = domain.Resolution(domain.ReviewOutcome.CONFIRMED, comment="agree")
    done = await review.resolve(sessions, item_id=item.id, resolution=verdict, user="ana", now=NOW)
    assert done.comment == "looks odd\nana: agree"


@pytest.mark.asyncio
async def test_flag_of_a_stored_result_carries_its_prediction(sessions: Sessions) -> None:
    await _ingest(sessions, [_result(3, confidence=0.9)])
    item = await review.flag_for_review(
        sessions, request=_flag("k-3", 3), settings=SETTINGS, now=NOW
    )
    assert (item.predicted_class, item.priority, item.lot_id) == (4, 0.9, "LOT-1")
    with pytest.raises(InvalidArgument) as raised:
        await review.flag_for_review(
            sessions, request=_flag("k-4", 3, wafer_id="OTHER"), settings=SETTINGS
        )
    assert raised.value.field == "wafer_id"


@pytest.mark.asyncio
async def test_claim_lease_expiry_and_resolution(sessions: Sessions) -> None:
    await _ingest(sessions, [_result(1, confidence=0.1), _result(2, confidence=0.5)])
    ana = await review.claim_next(sessions, user="ana", settings=SETTINGS, now=NOW)
    assert ana is not None and ana.sequence == 1 and ana.claimed_by == "ana"
    assert ana.lease_expires_at == NOW + timedelta(seconds=600)
    ben = await review.claim_next(sessions, user="ben", settings=SETTINGS, now=NOW)
    assert ben is not None and ben.sequence == 2
    assert await review.claim_next(sessions, user="cy", settings=SETTINGS, now=NOW) is None
    with pytest.raises(Conflict, match="claimed by ana"):
        await review.claim_item(sessions, item_id=ana.id, user="cy", settings=SETTINGS, now=NOW)

    # Ana's lease lapses: the item is open again and Cy takes it over.
    later = NOW + timedelta(seconds=601)
    depth = await review.queue_depth(sessions, now=later)
    assert depth == {domain.ReviewState.OPEN: 2, domain.ReviewState.CLAIMED: 0}
    assert [i.id for i in await review.list_queue(sessions, now=later)] == [ana.id, ben.id]
    cy = await review.claim_next(sessions, user="cy", settings=SETTINGS, now=later)
    assert cy is not None and cy.id == ana.id and cy.claimed_by == "cy"

    verdict = domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=1)
    with pytest.raises(Conflict, match="claimed by cy"):
        await review.resolve(sessions, item_id=ana.id, resolution=verdict, user="ana", now=later)
    done = await review.resolve(sessions, item_id=ana.id, resolution=verdict, user="cy", now=later)
    assert (done.state, done.outcome, done.true_label, done.resolved_by) == (
        domain.ReviewState.RESOLVED,
        domain.ReviewOutcome.RELABELLED,
        1,
        "cy",
    )
    # The same verdict again is a retry; another one is a conflict.
    again = await review.resolve(sessions, item_id=ana.id, resolution=verdict, user="cy", now=later)
    assert again == done
    with pytest.raises(Conflict, match="already resolved"):
        await review.resolve(
            sessions,
            item_id=ana.id,
            resolution=domain.Resolution(domain.ReviewOutcome.UNUSABLE),
            user="cy",
            now=later,
        )

    # Ben's lease lapsed too, but nobody took it: he may still resolve it.
    confirm = domain.Resolution(domain.ReviewOutcome.CONFIRMED)
    kept = await review.resolve(sessions, item_id=ben.id, resolution=confirm, user="ben", now=later)
    assert kept.true_label == 4
    async with sessions() as session:
        labels = (await session.scalars(select(LabelRow).order_by(LabelRow.id))).all()
    assert [(lb.resolved_by, lb.predicted_class, lb.true_label) for lb in labels] == [
        ("cy", 4, 1),
        ("ben", 4, 4),
    ]
    assert all(lb.model_version == "trm-v1.0.0" for lb in labels)
    history = await review.history(sessions)
    assert [i.id for i in history] == [ben.id, ana.id]
    assert [i.id for i in await review.history(sessions, resolved_by="cy")] == [ana.id]


@pytest.mark.asyncio
async def test_release_and_admin_override(sessions: Sessions) -> None:
    await _ingest(sessions, [_result(1), _result(2)])
    item = await review.claim_next(sessions, user="ana", settings=SETTINGS, now=NOW)
    assert item is not None
    with pytest.raises(Conflict, match="only they or an admin"):
        await review.release(sessions, item_id=item.id, user="ben", now=NOW)
    released = await review.release(sessions, item_id=item.id, user="boss", override=True, now=NOW)
    assert (released.state, released.claimed_by) == (domain.ReviewState.OPEN, None)
    assert await review.release(sessions, item_id=item.id, user="ana", now=NOW) == released

    # An item nobody claimed cannot be resolved except by override.
    verdict = domain.Resolution(domain.ReviewOutcome.UNUSABLE, comment="smeared map")
    with pytest.raises(Conflict, match="not claimed"):
        await review.resolve(sessions, item_id=item.id, resolution=verdict, user="ana", now=NOW)
    forced = await review.resolve(
        sessions, item_id=item.id, resolution=verdict, user="boss", override=True, now=NOW
    )
    assert (forced.resolved_by, forced.true_label) == ("boss", None)
    assert forced.comment == "boss: smeared map"
    with pytest.raises(Conflict, match="already resolved"):
        await review.release(sessions, item_id=item.id, user="boss", override=True, now=NOW)
    with pytest.raises(NotFound):
        await review.claim_item(
            sessions, item_id="00000000-0000-0000-0000-000000000000", user="a", settings=SETTINGS
        )


@pytest.mark.asyncio
async def test_claiming_an_item_renews_the_own_lease(sessions: Sessions) -> None:
    await _ingest(sessions, [_result(1)])
    [item] = await review.list_queue(sessions, now=NOW)
    first = await review.claim_item(
        sessions, item_id=item.id, user="ana", settings=SETTINGS, now=NOW
    )
    later = NOW + timedelta(minutes=5)
    renewed = await review.claim_item(
        sessions, item_id=item.id, user="ana", settings=SETTINGS, now=later
    )
    assert first.lease_expires_at is not None and renewed.lease_expires_at is not None
    assert renewed.lease_expires_at - first.lease_expires_at == timedelta(minutes=5)
    claimed = await review.list_queue(sessions, state=domain.ReviewState.CLAIMED, now=later)
    assert [i.claimed_by for i in claimed] == ["ana"]


@pytest.mark.asyncio
async def test_filters_narrow_listing_and_claiming(sessions: Sessions) -> None:
    await _ingest(
        sessions,
        [_result(1, confidence=0.1), _result(2, confidence=0.5, lot_id="LOT-2", novelty=0.7)],
    )
    by_lot = domain.ReviewFilter(lot_id="LOT-2")
    assert [i.sequence for i in await review.list_queue(sessions, filters=by_lot, now=NOW)] == [2]
    novel = domain.ReviewFilter(reason=domain.ReviewReason.NOVELTY)
    item = await review.claim_next(sessions, user="a", settings=SETTINGS, filters=novel, now=NOW)
    assert item is not None and item.sequence == 2
    with pytest.raises(InvalidArgument) as raised:
        await review.list_queue(sessions, limit=0)
    assert raised.value.field == "limit"


@pytest.mark.asyncio
async def test_reviewed_accuracy_per_model_and_class_excludes_unusable(sessions: Sessions) -> None:
    results = [
        _result(1, prediction=4),
        _result(2, prediction=4),
        _result(3, prediction=4),
        _result(4, prediction=1),
        _result(5, prediction=1, model_version="trm-v1.1.0"),
    ]
    await _ingest(sessions, results)
    verdicts = {
        1: domain.Resolution(domain.ReviewOutcome.CONFIRMED),
        2: domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=3),
        3: domain.Resolution(domain.ReviewOutcome.UNUSABLE),
        4: domain.Resolution(domain.ReviewOutcome.CONFIRMED),
        5: domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=0),
    }
    for item in await review.list_queue(sessions, now=NOW):
        await review.claim_item(sessions, item_id=item.id, user="ana", settings=SETTINGS, now=NOW)
        await review.resolve(
            sessions, item_id=item.id, resolution=verdicts[item.sequence], user="ana", now=NOW
        )
    stats = {s.model_version: s for s in await review.reviewed_accuracy(sessions)}
    v10 = stats["trm-v1.0.0"]
    assert (v10.reviewed, v10.confirmed, v10.accuracy) == (3, 2, pytest.approx(2 / 3))
    assert [(c.predicted_class, c.reviewed, c.confirmed) for c in v10.per_class] == [
        (1, 1, 1),
        (4, 2, 1),
    ]
    assert stats["trm-v1.1.0"].accuracy == 0.0
    only = await review.reviewed_accuracy(sessions, model_version="trm-v1.1.0")
    assert [s.model_version for s in only] == ["trm-v1.1.0"]
    assert await review.reviewed_accuracy(sessions, since=NOW + timedelta(seconds=1)) == []
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(LabelRow)) == 5


@pytest.mark.asyncio
async def test_concurrent_claimers_on_sqlite_get_distinct_items(sessions: Sessions) -> None:
    await _ingest(sessions, [_result(s, confidence=s / 100) for s in range(1, 21)])

    async def claimer(user: str) -> list[str]:
        mine: list[str] = []
        while item := await review.claim_next(sessions, user=user, settings=SETTINGS, now=NOW):
            mine.append(item.id)
        return mine

    claims = await asyncio.gather(*(claimer(f"eng-{n}") for n in range(8)))
    ids = [item_id for mine in claims for item_id in mine]
    assert len(ids) == 20 and len(set(ids)) == 20


@pytest.mark.asyncio
async def test_a_stale_read_changes_nothing(sessions: Sessions) -> None:
    await _ingest(sessions, [_result(1)])
    [stale] = await review.list_queue(sessions, now=NOW)
    await review.claim_item(sessions, item_id=stale.id, user="ana", settings=SETTINGS, now=NOW)
    async with sessions.begin() as session:
        lease = NOW + timedelta(hours=1)
        assert (
            await review_repo.claim(session, expected=stale, user="ben", lease_expires_at=lease)
            is None
        )
        assert await review_repo.release(session, expected=stale) is None
    [held] = await review.list_queue(sessions, state=domain.ReviewState.CLAIMED, now=NOW)
    assert held.claimed_by == "ana"
