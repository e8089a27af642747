"""Collectors on the fab's database (SQLite): labels after the watermark, daily aggregates."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.services import distribution
from fab_server.settings import FabSettings
from fab_server.sync import collectors
from fab_server.sync.records import ResultFigures, ReviewMark

from .conftest import NOW, make_result

Sessions = async_sessionmaker[AsyncSession]
Store = Callable[..., Awaitable[domain.IngestOutcome]]
Verdict = Callable[..., Awaitable[domain.ReviewItem]]
CONFIRMED, RELABELLED, UNUSABLE = (
    domain.ReviewOutcome.CONFIRMED,
    domain.ReviewOutcome.RELABELLED,
    domain.ReviewOutcome.UNUSABLE,
)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


async def _labels(sessions: Sessions, **changes: Any) -> list[Any]:
    query: dict[str, Any] = {
        "after_id": 0,
        "watermark": 0,
        "resolved_since": NOW + timedelta(days=1),
        "limit": 100,
        "with_maps": False,
    }
    query.update(changes)
    return await collectors.label_batch(sessions, **query)


@pytest.mark.asyncio
async def test_labels_join_the_review_item_and_skip_unusable(
    sessions: Sessions, store: Store, verdict: Verdict
) -> None:
    await store([make_result(s) for s in (1, 2, 3)])
    await verdict("edge-1", 1, CONFIRMED)
    await verdict("edge-1", 2, RELABELLED, 5, user="eng-bob")
    await verdict("edge-1", 3, UNUSABLE)
    labels = await _labels(sessions)
    assert [(lab.sequence, lab.outcome, lab.true_label) for lab in labels] == [
        (1, CONFIRMED, 3),
        (2, RELABELLED, 5),
    ]
    first = labels[0]
    assert (first.wafer_id, first.lot_id, first.node_id) == ("WAFER-0001", "LOT-SECRET-7", "edge-1")
    assert (first.predicted_class, first.model_version) == (3, "trm-v1.0.0")
    assert first.confidence == pytest.approx(0.3)
    assert first.reason is domain.ReviewReason.LOW_CONFIDENCE
    assert (first.resolved_by, first.resolved_at) == ("eng-alice", NOW)
    assert first.wafer_map is None  # not read unless the policy lets maps leave
    with_maps = await _labels(sessions, with_maps=True)
    assert with_maps[0].wafer_map is not None
    assert with_maps[0].wafer_map.values == make_result(1).wafer_map.values  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_labels_after_the_watermark_plus_the_overlap_window(
    sessions: Sessions, store: Store, verdict: Verdict
) -> None:
    await store([make_result(s) for s in (1, 2, 3, 4)])
    for sequence in (1, 2, 3, 4):
        await verdict("edge-1", sequence, CONFIRMED, at=NOW + timedelta(minutes=sequence))
    ids = [lab.label_id for lab in await _labels(sessions)]
    # Watermark at the third label: only the fourth is new ...
    assert [lab.label_id for lab in await _labels(sessions, watermark=ids[2])] == [ids[3]]
    # ... but labels resolved within the overlap window are sent again.
    overlap = await _labels(sessions, watermark=ids[2], resolved_since=NOW + timedelta(minutes=2))
    assert [lab.label_id for lab in overlap] == ids[1:]
    # Keyset pages.
    page = await _labels(sessions, limit=2)
    assert [lab.label_id for lab in page] == ids[:2]
    assert [lab.label_id for lab in await _labels(sessions, after_id=ids[1], limit=2)] == ids[2:]


def test_daily_figures_by_hand() -> None:
    results = [
        ResultFigures(sequence=1, model_version="v-a", prediction=0, latency_ms=10.0, steps=1),
        ResultFigures(2, "v-a", prediction=3, latency_ms=20.0, steps=3, confidence=0.3),
        # Flagged by its node: its novelty model found it novel.
        ResultFigures(3, "v-a", prediction=3, latency_ms=30.0, steps=2, novelty=0.9, flagged=True),
        ResultFigures(4, "v-b", prediction=8, latency_ms=5.0, steps=4, flagged=True),
    ]
    marks = [
        ReviewMark(sequence=2, reason=domain.ReviewReason.LOW_CONFIDENCE, outcome=CONFIRMED),
        ReviewMark(sequence=3, reason=domain.ReviewReason.NOVELTY, outcome=RELABELLED),
        ReviewMark(sequence=1, reason=domain.ReviewReason.CANARY_SAMPLE, outcome=CONFIRMED),
        ReviewMark(sequence=4, reason=domain.ReviewReason.MANUAL, outcome=UNUSABLE),
    ]
    a, b = collectors.daily_figures("edge-1", date(2026, 3, 1), results, marks, FabSettings())
    assert (a.model_version, b.model_version) == ("v-a", "v-b")
    assert a.class_counts == (1, 0, 0, 2, 0, 0, 0, 0, 0)
    assert a.wafers_classified == 3
    # The confident canary sample is not "flagged" (the model did not flag it) and its verdict
    # is not a review of a flagged wafer; unusable verdicts are not "reviewed".
    assert (a.flagged_count, a.reviewed_count, a.reviewed_correct_count) == (2, 2, 1)
    assert (b.flagged_count, b.reviewed_count, b.reviewed_correct_count) == (1, 0, 0)
    expected = np.percentile([10.0, 20.0, 30.0], [50, 90, 99])
    assert (a.latency_p50_ms, a.latency_p90_ms, a.latency_p99_ms) == pytest.approx(tuple(expected))
    assert a.avg_recursion_steps == pytest.approx(2.0)
    assert b.class_counts[8] == 1 and b.latency_p99_ms == pytest.approx(5.0)
    # Novelty quantiles cover the scored wafers only; a version without scores has none.
    assert (a.novelty_scored, a.novelty_quantiles) == (1, (0.9,) * 19)
    assert (b.novelty_scored, b.novelty_quantiles) == (0, ())


@pytest.mark.asyncio
async def test_aggregates_of_touched_days_and_an_idle_known_node(
    sessions: Sessions, store: Store, verdict: Verdict
) -> None:
    yesterday = NOW - timedelta(days=1)
    await store([make_result(1, classified_at=yesterday), make_result(2), make_result(3)])
    await store([make_result(1, node_id="edge-2", classified_at=yesterday)])
    # edge-3 only polled for its model: known, idle today.
    await distribution.get_assignment(
        sessions,
        node_id="edge-3",
        installed_version="trm-v1.0.0",
        previous_version="",
        artifact_format="onnx",
        now=NOW,
    )
    await verdict("edge-1", 2, CONFIRMED)
    figures = await collectors.collect_aggregates(
        sessions, since=LONG_AGO, now=NOW, settings=FabSettings()
    )
    keys = [(f.node_id, f.day, f.wafers_classified) for f in figures]
    assert keys == [
        ("edge-1", yesterday.date(), 1),
        ("edge-1", NOW.date(), 2),
        ("edge-2", yesterday.date(), 1),
        ("edge-3", NOW.date(), 0),
    ]
    today = figures[1]
    assert (today.flagged_count, today.reviewed_count, today.reviewed_correct_count) == (2, 1, 1)
    assert figures[3].class_counts == (0,) * 9 and figures[3].model_version == "trm-v1.0.0"


@pytest.mark.asyncio
async def test_only_days_touched_since_the_watermark_are_recomputed(
    sessions: Sessions, store: Store, verdict: Verdict
) -> None:
    yesterday = NOW - timedelta(days=1)
    await store([make_result(1, classified_at=yesterday)], NOW - timedelta(hours=5))
    await store([make_result(2)], NOW - timedelta(hours=5))
    later = NOW - timedelta(hours=1)
    # Nothing changed since: only today's figures (every known node's, every pass).
    unchanged = await collectors.collect_aggregates(
        sessions, since=later, now=NOW, settings=FabSettings()
    )
    assert [(f.day, f.wafers_classified) for f in unchanged] == [(NOW.date(), 1)]
    # A verdict on yesterday's wafer changes yesterday's figures: they are sent again.
    await verdict("edge-1", 1, RELABELLED, 0, at=NOW)
    figures, today = await collectors.collect_aggregates(
        sessions, since=later, now=NOW, settings=FabSettings()
    )
    assert (figures.day, figures.reviewed_count, figures.reviewed_correct_count) == (
        yesterday.date(),
        1,
        0,
    )
    assert today == unchanged[0]
