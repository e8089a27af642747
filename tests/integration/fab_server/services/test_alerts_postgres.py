"""Alerts on real PostgreSQL: every rule from stored rows, lot flags, concurrent evaluations."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.db import make_async_engine, session_factory
from fab_server.models import AlertRow, EdgeMetricsRow, LabelRow, LotRow, ResultRow, ReviewItemRow
from fab_server.services import alerts
from fab_server.settings import FabSettings
from wafercore.classes import DefectClass

pytestmark = pytest.mark.integration

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


@pytest_asyncio.fixture
async def sessions(fab_settings: FabSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    yield session_factory(engine)
    await engine.dispose()


async def _add(sessions: async_sessionmaker[AsyncSession], rows: Sequence[Any]) -> None:
    async with sessions() as session, session.begin():
        # Labels reference review items, but no ORM relationship tells the flush to order them.
        session.add_all([r for r in rows if isinstance(r, ReviewItemRow)])
        await session.flush()
        session.add_all([r for r in rows if not isinstance(r, ReviewItemRow)])


def _window(node: str, end: datetime, *, wafers: int, p99: float, rate: float) -> EdgeMetricsRow:
    return EdgeMetricsRow(
        node_id=node,
        window_start=end - timedelta(minutes=1),
        window_end=end,
        wafers_classified=wafers,
        throughput_per_minute=float(wafers),
        latency_p50_ms=p99 / 3,
        latency_p90_ms=p99 / 2,
        latency_p99_ms=p99,
        avg_recursion_steps=1.5,
        review_rate=rate,
        model_version="trm-v2.0.0",
        received_at=end,
    )


def _verdict(version: str, predicted: int, true: int, at: datetime) -> list[Any]:
    item_id = f"item-{next(_ids)}"
    outcome = "confirmed" if predicted == true else "relabelled"
    common = {"node_id": "edge-01", "sequence": next(_ids), "wafer_id": f"W-{item_id}"}
    return [
        ReviewItemRow(
            id=item_id,
            idempotency_key=f"auto:{item_id}",
            reason=1,
            state="resolved",
            priority=0.4,
            created_at=at,
            **common,
        ),
        LabelRow(
            review_item_id=item_id,
            outcome=outcome,
            true_label=true,
            predicted_class=predicted,
            model_version=version,
            resolved_by="eng",
            resolved_at=at,
            **common,
        ),
    ]


def _lot(lot_id: str, last_seen: datetime, predictions: Sequence[int]) -> list[Any]:
    rows: list[Any] = [LotRow(lot_id=lot_id, first_seen=last_seen, last_seen=last_seen)]
    for i, prediction in enumerate(predictions):
        rows.append(
            ResultRow(
                node_id="edge-02",
                sequence=next(_ids),
                wafer_id=f"{lot_id}-{i}",
                lot_id=lot_id,
                model_version="trm-v2.0.0",
                prediction=prediction,
                probabilities=[1 / 9] * 9,
                confidence=0.8,
                steps=2,
                latency_ms=25.0,
                flagged=False,
                classified_at=last_seen,
                received_at=last_seen,
            )
        )
    return rows


def _fab_day() -> list[Any]:
    """One day of a fab in which every rule fires once."""
    rows: list[Any] = []
    for minute in range(1, 11):  # edge-01: slow (critical); edge-02: flags 30 % of 100 wafers
        end = NOW - timedelta(minutes=minute)
        rows.append(_window("edge-01", end, wafers=4, p99=40.0 if minute % 2 else 62.0, rate=0.1))
        rows.append(_window("edge-02", end, wafers=10, p99=12.0, rate=0.3))
    at = NOW - timedelta(hours=3)
    scratch, loc, none = DefectClass.SCRATCH, DefectClass.LOC, DefectClass.NONE
    for _ in range(12):  # trm-v2.0.0: 12 scratches right, 12 called Loc, 16 None right
        rows += _verdict("trm-v2.0.0", scratch, scratch, at) + _verdict(
            "trm-v2.0.0", loc, scratch, at
        )
    for _ in range(16):
        rows += _verdict("trm-v2.0.0", none, none, at)
    for i in range(alerts.MIN_BASELINE_LOTS + 2):
        rows += _lot(f"LOT-{i:02d}", NOW - timedelta(days=2, hours=i), [none] * 18 + [loc] * 2)
    rows += _lot("LOT-HOT", NOW - timedelta(minutes=30), [none] * 8 + [DefectClass.DONUT] * 12)
    return rows


@pytest.mark.asyncio
async def test_every_rule_fires_from_stored_rows_and_clears_again(
    sessions: async_sessionmaker[AsyncSession], fab_settings: FabSettings
) -> None:
    await _add(sessions, _fab_day())
    found = {
        (a.kind, a.subject): a
        for a in await alerts.evaluate_alerts(sessions, settings=fab_settings, now=NOW)
    }
    assert set(found) == {
        ("latency_p99", "edge-01"),
        ("review_rate", "edge-02"),
        ("reviewed_accuracy", "trm-v2.0.0"),
        ("class_f1", "trm-v2.0.0/Scratch"),
        ("lot_excursion", "LOT-HOT"),
    }
    latency = found["latency_p99", "edge-01"]
    assert latency.value == pytest.approx(51.0)  # equal wafers: the mean of 40 and 62
    assert latency.severity is domain.AlertSeverity.CRITICAL
    assert found["review_rate", "edge-02"].value == pytest.approx(0.3)
    assert found["reviewed_accuracy", "trm-v2.0.0"].value == pytest.approx(28 / 40)
    # Scratch: TP 12, FN 12, FP 0 -> 2*12 / (2*12 + 12) = 0.667 on 24 reviewed scratches.
    assert found["class_f1", "trm-v2.0.0/Scratch"].value == pytest.approx(2 / 3)
    hot = found["lot_excursion", "LOT-HOT"]
    assert hot.value == pytest.approx(0.6)
    assert hot.threshold == pytest.approx(0.1 + fab_settings.alerts.excursion_margin)
    async with sessions() as session:
        lot = await session.get(LotRow, "LOT-HOT")
        assert lot is not None and lot.excursion and "Donut" in lot.excursion_reason
        old = await session.get(LotRow, "LOT-00")
        assert old is not None and not old.excursion

    # Re-evaluating changes nothing but the time stamps: no duplicates.
    again = await alerts.evaluate_alerts(
        sessions, settings=fab_settings, now=NOW + timedelta(seconds=30)
    )
    assert sorted(a.id for a in again) == sorted(a.id for a in found.values())
    assert {a.updated_at for a in again} == {NOW + timedelta(seconds=30)}

    await alerts.acknowledge_alert(sessions, alert_id=hot.id, user="process-eng")
    # Eight days later no window, verdict or lot is recent: everything has cleared.
    assert (
        await alerts.evaluate_alerts(sessions, settings=fab_settings, now=NOW + timedelta(days=8))
        == []
    )
    stored = await alerts.list_alerts(sessions, state=domain.AlertState.RESOLVED)
    assert len(stored) == 5
    assert next(a for a in stored if a.id == hot.id).acknowledged_by == "process-eng"


@pytest.mark.asyncio
async def test_concurrent_evaluations_never_duplicate_an_alert(
    sessions: async_sessionmaker[AsyncSession], fab_settings: FabSettings
) -> None:
    await _add(
        sessions,
        [_window(f"edge-{i}", NOW, wafers=5, p99=80.0, rate=0.0) for i in range(4)],
    )
    results = await asyncio.gather(
        *(alerts.evaluate_alerts(sessions, settings=fab_settings, now=NOW) for _ in range(4))
    )
    assert all(len(r) == 4 for r in results)
    async with sessions() as session:
        stored = await session.scalar(select(func.count()).select_from(AlertRow))
    assert stored == 4
