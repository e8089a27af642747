"""Alert evaluation, listing, acknowledgement and the loop, on a migrated SQLite database."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.errors import InvalidArgument, NotFound
from fab_server.models import (
    AlertRow,
    EdgeMetricsRow,
    LabelRow,
    LotRow,
    ResultConflictRow,
    ResultRow,
    ReviewItemRow,
)
from fab_server.services import alerts
from fab_server.settings import FabSettings

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ACTIVE, ACKED, RESOLVED = (
    domain.AlertState.ACTIVE,
    domain.AlertState.ACKNOWLEDGED,
    domain.AlertState.RESOLVED,
)
_ids = itertools.count(1)


@pytest.fixture
def settings(tmp_path: Path) -> FabSettings:
    return FabSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}")


@pytest_asyncio.fixture
async def sessions(settings: FabSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    migrate(settings.database_url)
    engine = make_async_engine(settings.database_url)
    yield session_factory(engine)
    await engine.dispose()


async def _add(sessions: async_sessionmaker[AsyncSession], rows: Sequence[Any]) -> None:
    async with sessions() as session, session.begin():
        # Labels reference review items, but no ORM relationship tells the flush to order them.
        session.add_all([r for r in rows if isinstance(r, ReviewItemRow)])
        await session.flush()
        session.add_all([r for r in rows if not isinstance(r, ReviewItemRow)])


def _metrics(node: str, end: datetime, *, wafers: int, p99: float, rate: float = 0.1) -> Any:
    return EdgeMetricsRow(
        node_id=node,
        window_start=end - timedelta(minutes=1),
        window_end=end,
        wafers_classified=wafers,
        throughput_per_minute=float(wafers),
        latency_p50_ms=p99 / 2,
        latency_p90_ms=p99 * 0.8,
        latency_p99_ms=p99,
        avg_recursion_steps=1.2,
        review_rate=rate,
        model_version="trm-v1.0.0",
        outbox_depth=0,
        received_at=end,
    )


def _verdicts(
    version: str, *, confirmed: int, relabelled: int, at: datetime, predicted: int = 4
) -> list[Any]:
    """Review items and their labels: ``confirmed`` right, ``relabelled`` called None."""
    rows: list[Any] = []
    for i in range(confirmed + relabelled):
        item_id = f"item-{next(_ids)}"
        outcome = "confirmed" if i < confirmed else "relabelled"
        rows.append(
            ReviewItemRow(
                id=item_id,
                idempotency_key=f"key-{item_id}",
                node_id="edge-01",
                sequence=i,
                wafer_id=f"W-{item_id}",
                reason=1,
                state="resolved",
                priority=0.5,
                created_at=at,
            )
        )
        rows.append(
            LabelRow(
                review_item_id=item_id,
                node_id="edge-01",
                sequence=i,
                wafer_id=f"W-{item_id}",
                outcome=outcome,
                true_label=predicted if outcome == "confirmed" else 0,
                predicted_class=predicted,
                model_version=version,
                resolved_by="eng",
                resolved_at=at,
            )
        )
    return rows


def _lot(lot_id: str, last_seen: datetime, failing: int, wafers: int = 10) -> list[Any]:
    rows: list[Any] = [LotRow(lot_id=lot_id, first_seen=last_seen, last_seen=last_seen)]
    for i in range(wafers):
        seq = next(_ids)
        rows.append(
            ResultRow(
                node_id="edge-01",
                sequence=seq,
                wafer_id=f"{lot_id}-W{i}",
                lot_id=lot_id,
                model_version="trm-v1.0.0",
                prediction=3 if i < failing else 0,
                probabilities=[0.0] * 9,
                confidence=0.9,
                steps=1,
                latency_ms=20.0,
                flagged=False,
                classified_at=last_seen,
                received_at=last_seen,
            )
        )
    return rows


def _by_kind(found: Sequence[domain.Alert]) -> dict[tuple[str, str], domain.Alert]:
    return {(a.kind, a.subject): a for a in found}


@pytest.mark.asyncio
async def test_latency_alert_is_raised_refreshed_escalated_and_resolved(
    sessions: async_sessionmaker[AsyncSession], settings: FabSettings
) -> None:
    # Weighted by wafers: (30 * 40 + 10 * 70) / 40 = 47.5 (the plain mean would be 55).
    await _add(
        sessions,
        [
            _metrics("edge-01", NOW - timedelta(minutes=2), wafers=30, p99=40.0),
            _metrics("edge-01", NOW - timedelta(minutes=1), wafers=10, p99=70.0),
            _metrics("edge-01", NOW - timedelta(minutes=30), wafers=1000, p99=10.0),  # too old
            _metrics("edge-02", NOW - timedelta(minutes=1), wafers=10, p99=20.0),
        ],
    )
    (alert,) = await alerts.evaluate_alerts(sessions, settings=settings, now=NOW)
    assert (alert.kind, alert.subject, alert.severity, alert.state) == (
        "latency_p99",
        "edge-01",
        domain.AlertSeverity.WARNING,
        ACTIVE,
    )
    assert alert.value == pytest.approx(47.5)
    assert alert.created_at == NOW

    acked = await alerts.acknowledge_alert(sessions, alert_id=alert.id, user="ana", now=NOW)
    assert (acked.state, acked.acknowledged_by, acked.acknowledged_at) == (ACKED, "ana", NOW)

    # Still slow a minute later: the same alert is refreshed, the acknowledgement kept.
    later = NOW + timedelta(minutes=1)
    await _add(sessions, [_metrics("edge-01", later, wafers=40, p99=46.0)])
    (again,) = await alerts.evaluate_alerts(sessions, settings=settings, now=later)
    assert (again.id, again.state, again.updated_at, again.created_at) == (
        alert.id,
        ACKED,
        later,
        NOW,
    )
    assert again.value == pytest.approx((30 * 40 + 10 * 70 + 40 * 46) / 80)

    # Worse: critical now, and an acknowledged warning becomes active again.
    worse = later + timedelta(minutes=1)
    await _add(sessions, [_metrics("edge-01", worse, wafers=200, p99=70.0)])
    (escalated,) = await alerts.evaluate_alerts(sessions, settings=settings, now=worse)
    assert (escalated.id, escalated.severity, escalated.state) == (
        alert.id,
        domain.AlertSeverity.CRITICAL,
        ACTIVE,
    )
    assert escalated.acknowledged_by is None
    assert escalated.threshold == 50.0

    # No window in the last 15 minutes is slow any more: resolved, still listed.
    assert (
        await alerts.evaluate_alerts(sessions, settings=settings, now=worse + timedelta(hours=1))
        == []
    )
    (stored,) = await alerts.list_alerts(sessions)
    assert (stored.id, stored.state) == (alert.id, RESOLVED)
    assert await alerts.list_alerts(sessions, state=ACTIVE) == []


@pytest.mark.asyncio
async def test_accuracy_review_rate_and_f1_alerts_from_stored_aggregates(
    sessions: async_sessionmaker[AsyncSession], settings: FabSettings
) -> None:
    await _add(
        sessions,
        [
            *_verdicts("trm-v1.0.0", confirmed=15, relabelled=5, at=NOW - timedelta(hours=2)),
            # An old, bad day: outside the 24 h accuracy window but inside the 7-day F1 window.
            *_verdicts("trm-v1.1.0", confirmed=0, relabelled=25, at=NOW - timedelta(days=3)),
            *[
                _metrics("edge-03", NOW - timedelta(minutes=m), wafers=10, p99=20.0, rate=0.4)
                for m in range(1, 7)
            ],
        ],
    )
    found = _by_kind(await alerts.evaluate_alerts(sessions, settings=settings, now=NOW))
    # trm-v1.0.0: 15 of 20 confirmed (accuracy 75 %); Edge-Ring F1 30/35 and None's support 5
    # are fine. trm-v1.1.0 called 25 None wafers Edge-Ring three days ago: outside the
    # accuracy window, inside the F1 window, where None has F1 0 on support 25 (and Edge-Ring
    # support 0: not judged).
    assert set(found) == {
        ("reviewed_accuracy", "trm-v1.0.0"),
        ("review_rate", "edge-03"),
        ("class_f1", "trm-v1.1.0/None"),
    }
    accuracy = found["reviewed_accuracy", "trm-v1.0.0"]
    assert (accuracy.value, accuracy.severity) == (0.75, domain.AlertSeverity.CRITICAL)
    assert found["review_rate", "edge-03"].value == pytest.approx(0.4)
    assert found["class_f1", "trm-v1.1.0/None"].value == 0.0


@pytest.mark.asyncio
async def test_a_result_conflict_raises_a_critical_alert_for_its_node_for_a_week(
    sessions: async_sessionmaker[AsyncSession], settings: FabSettings
) -> None:
    conflict = ResultConflictRow(
        node_id="edge-7",
        sequence=42,
        wafer_id="FORGED",
        stored_wafer_id="W42",
        differences=["wafer_id"],
        incoming={"wafer_id": "FORGED"},
        received_at=NOW - timedelta(hours=1),
    )
    await _add(sessions, [conflict])
    (alert,) = await alerts.evaluate_alerts(sessions, settings=settings, now=NOW)
    assert (alert.kind, alert.subject, alert.severity) == (
        "result_conflict",
        "edge-7",
        domain.AlertSeverity.CRITICAL,
    )
    assert alert.value == 1.0 and "kept for inspection" in alert.message
    later = NOW + alerts.CONFLICT_WINDOW
    assert await alerts.evaluate_alerts(sessions, settings=settings, now=later) == []


@pytest.mark.asyncio
async def test_lot_excursion_sets_the_lot_flag_and_clears_it(
    sessions: async_sessionmaker[AsyncSession], settings: FabSettings
) -> None:
    history = [
        row
        for i in range(alerts.MIN_BASELINE_LOTS)
        for row in _lot(f"L-{i}", NOW - timedelta(days=2, minutes=i), failing=1)
    ]
    await _add(sessions, [*history, *_lot("L-HOT", NOW - timedelta(minutes=5), failing=7)])
    (alert,) = await alerts.evaluate_alerts(sessions, settings=settings, now=NOW)
    assert (alert.kind, alert.subject) == ("lot_excursion", "L-HOT")
    assert alert.value == pytest.approx(0.7)
    async with sessions() as session:
        lot = await session.get(LotRow, "L-HOT")
        assert lot is not None and lot.excursion
        assert lot.excursion_reason == alert.message
        assert "Edge-Loc" in lot.excursion_reason

    # Ten more clean wafers arrive: 7 of 20 (35 %) is within 10 % + 30 %.
    more = _lot("L-HOT", NOW + timedelta(minutes=1), failing=0)[1:]
    async with sessions() as session, session.begin():
        session.add_all(more)
        hot = await session.get(LotRow, "L-HOT")
        assert hot is not None
        hot.last_seen = NOW + timedelta(minutes=1)
    assert (
        await alerts.evaluate_alerts(sessions, settings=settings, now=NOW + timedelta(minutes=2))
        == []
    )
    async with sessions() as session:
        lot = await session.get(LotRow, "L-HOT")
        assert lot is not None and (lot.excursion, lot.excursion_reason) == (False, "")


@pytest.mark.asyncio
async def test_unacknowledged_excursion_of_a_quiet_lot_stays_until_acknowledged(
    sessions: async_sessionmaker[AsyncSession], settings: FabSettings
) -> None:
    history = [
        row
        for i in range(alerts.MIN_BASELINE_LOTS)
        for row in _lot(f"L-{i}", NOW - timedelta(days=2, minutes=i), failing=0)
    ]
    await _add(sessions, [*history, *_lot("L-HOT", NOW, failing=10)])
    (alert,) = await alerts.evaluate_alerts(sessions, settings=settings, now=NOW)

    two_days_later = NOW + timedelta(days=2)
    (still,) = await alerts.evaluate_alerts(sessions, settings=settings, now=two_days_later)
    assert (still.id, still.state) == (alert.id, ACTIVE)

    await alerts.acknowledge_alert(sessions, alert_id=alert.id, user="ana")
    assert await alerts.evaluate_alerts(sessions, settings=settings, now=two_days_later) == []
    async with sessions() as session:
        lot = await session.get(LotRow, "L-HOT")
        assert lot is not None and lot.excursion  # the lot's history keeps the flag


@pytest.mark.asyncio
async def test_acknowledge_is_idempotent_and_checks_its_arguments(
    sessions: async_sessionmaker[AsyncSession], settings: FabSettings
) -> None:
    await _add(sessions, [_metrics("edge-01", NOW, wafers=5, p99=99.0)])
    (alert,) = await alerts.evaluate_alerts(sessions, settings=settings, now=NOW)
    first = await alerts.acknowledge_alert(sessions, alert_id=alert.id, user="ana", now=NOW)
    second = await alerts.acknowledge_alert(
        sessions, alert_id=alert.id, user="ben", now=NOW + timedelta(minutes=1)
    )
    assert second == first

    with pytest.raises(NotFound):
        await alerts.acknowledge_alert(sessions, alert_id=alert.id + 100, user="ana")
    with pytest.raises(InvalidArgument) as bad_user:
        await alerts.acknowledge_alert(sessions, alert_id=alert.id, user=" ")
    assert bad_user.value.field == "user"

    # A resolved alert stays resolved when someone acknowledges it afterwards.
    await alerts.evaluate_alerts(sessions, settings=settings, now=NOW + timedelta(hours=1))
    (resolved,) = await alerts.list_alerts(sessions, state=RESOLVED)
    assert (
        await alerts.acknowledge_alert(sessions, alert_id=resolved.id, user="cy")
    ).state is RESOLVED


@pytest.mark.asyncio
async def test_list_alerts_filters_orders_and_limits(
    sessions: async_sessionmaker[AsyncSession], settings: FabSettings
) -> None:
    await _add(sessions, [_metrics(f"edge-{i}", NOW, wafers=5, p99=99.0) for i in range(3)])
    raised = await alerts.evaluate_alerts(sessions, settings=settings, now=NOW)
    assert len(raised) == 3
    await alerts.acknowledge_alert(sessions, alert_id=raised[0].id, user="ana")

    assert [a.id for a in await alerts.list_alerts(sessions, state=ACKED)] == [raised[0].id]
    assert len(await alerts.list_alerts(sessions, state=ACTIVE)) == 2
    newest_first = await alerts.list_alerts(sessions, limit=2)
    assert [a.id for a in newest_first] == sorted((a.id for a in raised), reverse=True)[:2]
    for limit in (0, alerts.MAX_LIST_LIMIT + 1):
        with pytest.raises(InvalidArgument) as bad:
            await alerts.list_alerts(sessions, limit=limit)
        assert bad.value.field == "limit"


@pytest.mark.asyncio
async def test_the_loop_evaluates_survives_failures_and_stops(
    sessions: async_sessionmaker[AsyncSession],
    settings: FabSettings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = alerts.evaluate_alerts

    async def flaky(*args: Any, **kwargs: Any) -> list[domain.Alert]:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("database restarting")
        return await real(*args, **kwargs)

    monkeypatch.setattr(alerts, "evaluate_alerts", flaky)
    recent = datetime.now(UTC) - timedelta(seconds=5)
    await _add(sessions, [_metrics("edge-01", recent, wafers=5, p99=99.0)])
    stop = asyncio.Event()
    fast = settings.model_copy(update={"alert_interval_seconds": 0.01})
    loop = asyncio.create_task(alerts.run_alert_loop(sessions, fast, stop))
    async with asyncio.timeout(10):
        while len(calls) < 3:
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(loop, timeout=5)

    async with sessions() as session:
        kinds = (await session.scalars(select(AlertRow.kind))).all()
    assert kinds == ["latency_p99"]  # evaluated after the failure, and never duplicated


@pytest.mark.asyncio
async def test_recent_lots_reads_the_active_lots_and_their_baseline_only(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    rows = [
        row
        for i, hours_ago in enumerate((60, 50, 40, 3, 2, 1))
        for row in _lot(f"L-{i}", NOW - timedelta(hours=hours_ago), failing=i, wafers=6)
    ]
    await _add(sessions, rows)
    async with sessions() as session:
        lots = await alerts.repo.recent_lots(
            session,
            active_since=NOW - timedelta(hours=24),
            until=NOW,
            baseline_lots=2,
            max_active=2,
        )
        idle = await alerts.repo.recent_lots(
            session, active_since=NOW, until=NOW + timedelta(hours=1), baseline_lots=2, max_active=2
        )
    # The two latest of three active lots, and the two lots before them; oldest first.
    assert [lot.lot_id for lot in lots] == ["L-2", "L-3", "L-4", "L-5"]
    assert [lot.class_counts[3] for lot in lots] == [2, 3, 4, 5]
    assert [sum(lot.class_counts) for lot in lots] == [6, 6, 6, 6]
    assert lots[-1].last_seen == NOW - timedelta(hours=1)
    assert idle == []  # no lot seen since: nothing is read at all
