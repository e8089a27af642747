"""What the sync uploads, read from the fab's database: labels after the watermark and the
daily per-node aggregates of every (node, UTC day) that changed.

Aggregates (per node, UTC day of ``classified_at`` and model version): wafers per predicted
class, wafers classified, flagged (results the model's own signals send to review,
`review_rules.model_flags`: canary samples are drawn at random, not flagged, and people's
requests are not the model's), reviewed and reviewed-correct (verdicts other than unusable on
flagged wafers; correct: confirmed), latency p50/p90/p99 (``numpy.percentile`` of
``latency_ms``) and mean steps. A day is recomputed whole whenever a result of it was received,
or a verdict on one of its wafers was given, since the watermark; every known node also gets
today's figures (zeros when it classified nothing), so the cloud knows the fab's nodes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, time, timedelta

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.services import review_rules
from fab_server.settings import FabSettings
from fab_server.sync import storage
from fab_server.sync.records import DailyFigures, LabelRecord, ResultFigures, ReviewMark
from wafercore.classes import NUM_CLASSES
from wafercore.novelty import score_quantiles

Sessions = async_sessionmaker[AsyncSession]
_REVIEWED = (domain.ReviewOutcome.CONFIRMED, domain.ReviewOutcome.RELABELLED)


async def label_batch(
    sessions: Sessions,
    *,
    after_id: int,
    watermark: int,
    resolved_since: datetime,
    limit: int,
    with_maps: bool,
) -> list[LabelRecord]:
    """The next uploadable labels after ``after_id`` (see `storage.labels_page`)."""
    async with sessions() as session:
        return await storage.labels_page(
            session,
            after_id=after_id,
            watermark=watermark,
            resolved_since=resolved_since,
            limit=limit,
            with_maps=with_maps,
        )


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """``[start, end)`` of a UTC day."""
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _days(first: datetime, last: datetime) -> Iterable[date]:
    day = first.astimezone(UTC).date()
    while day <= last.astimezone(UTC).date():
        yield day
        day += timedelta(days=1)


def daily_figures(
    node_id: str,
    day: date,
    results: Sequence[ResultFigures],
    marks: Sequence[ReviewMark],
    settings: FabSettings,
) -> list[DailyFigures]:
    """The aggregates of one node's day, one per model version (pure)."""
    by_version: dict[str, list[ResultFigures]] = defaultdict(list)
    for result in results:
        by_version[result.model_version].append(result)
    flagged = {
        r.sequence
        for r in results
        if review_rules.model_flags(
            flagged=r.flagged, confidence=r.confidence, novelty=r.novelty, settings=settings
        )
    }
    reviewed: set[int] = set()
    correct: set[int] = set()
    for mark in marks:
        if mark.outcome in _REVIEWED:
            reviewed.add(mark.sequence)
        if mark.outcome is domain.ReviewOutcome.CONFIRMED:
            correct.add(mark.sequence)
    out = []
    for version in sorted(by_version):
        rows = by_version[version]
        sequences = {r.sequence for r in rows}
        latency = np.array([r.latency_ms for r in rows], dtype=np.float64)
        p50, p90, p99 = (float(v) for v in np.percentile(latency, [50, 90, 99]))
        counts = np.bincount([r.prediction for r in rows], minlength=NUM_CLASSES)
        scored = [r.novelty for r in rows if r.novelty is not None]
        out.append(
            DailyFigures(
                node_id=node_id,
                day=day,
                model_version=version,
                class_counts=tuple(int(c) for c in counts[:NUM_CLASSES]),
                wafers_classified=len(rows),
                flagged_count=len(flagged & sequences),
                reviewed_count=len(reviewed & flagged & sequences),
                reviewed_correct_count=len(correct & flagged & sequences),
                latency_p50_ms=p50,
                latency_p90_ms=p90,
                latency_p99_ms=p99,
                avg_recursion_steps=float(np.mean([r.steps for r in rows])),
                novelty_quantiles=score_quantiles(scored),
                novelty_scored=len(scored),
            )
        )
    return out


def idle_day(node_id: str, day: date, model_version: str) -> DailyFigures:
    """The figures of a node that classified nothing that day."""
    return DailyFigures(
        node_id=node_id,
        day=day,
        model_version=model_version,
        class_counts=(0,) * NUM_CLASSES,
        wafers_classified=0,
        flagged_count=0,
        reviewed_count=0,
        reviewed_correct_count=0,
        latency_p50_ms=0.0,
        latency_p90_ms=0.0,
        latency_p99_ms=0.0,
        avg_recursion_steps=0.0,
    )


async def _touched(session: AsyncSession, since: datetime) -> set[tuple[str, date]]:
    touched: set[tuple[str, date]] = set()
    for node_id, (first, last) in (
        await storage.received_spans(session, received_since=since)
    ).items():
        touched.update((node_id, day) for day in _days(first, last))
    for node_id, classified_at in await storage.labelled_since(session, resolved_since=since):
        touched.add((node_id, classified_at.astimezone(UTC).date()))
    return touched


async def collect_aggregates(
    sessions: Sessions, *, since: datetime, now: datetime, settings: FabSettings
) -> list[DailyFigures]:
    """The aggregates of every (node, day) touched since ``since``, and today's of every node.

    Args:
        sessions: session factory.
        since: results received, or verdicts given, at or after this time count as changes.
        now: the current time (UTC): its day is "today".
        settings: the review thresholds that say which results the model flags.

    Returns:
        Figures ordered by (node, day, version); a node idle today gets zeros for the version it
        reports running (nodes that never reported a version are left out).
    """
    today = now.astimezone(UTC).date()
    async with sessions() as session:
        known = await storage.known_nodes(session)
        touched = await _touched(session, since) | {(n.node_id, today) for n in known}
        figures: list[DailyFigures] = []
        for node_id, day in sorted(touched):
            start, end = day_bounds(day)
            results = await storage.day_results(session, node_id=node_id, start=start, end=end)
            if not results:
                continue
            marks = await storage.day_review_marks(session, node_id=node_id, start=start, end=end)
            figures.extend(daily_figures(node_id, day, results, marks, settings))
    reported = {(f.node_id, f.day) for f in figures}
    for node in known:
        if (node.node_id, today) not in reported and node.installed_version:
            figures.append(idle_day(node.node_id, today, node.installed_version))
    return sorted(figures, key=lambda f: (f.node_id, f.day, f.model_version))
