"""Ingest on SQLite: batch validation, canonical maps, die yield, idempotent stores and acks."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.models import EdgeNodeRow, LotRow, ResultRow, ReviewItemRow, WaferMapRow
from fab_server.repository import results as results_repo
from fab_server.services import ingest
from fab_server.settings import FabSettings
from wafercore.errors import InvalidInput

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = FabSettings(stream_max_batch=50)
Sessions = async_sessionmaker[AsyncSession]
PROBABILITIES = (0.02, 0.02, 0.02, 0.84, 0.02, 0.02, 0.02, 0.02, 0.02)


def _result(sequence: int, **changes: Any) -> domain.Result:
    base = domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id="LOT-1",
        model_version="trm-v1.0.0",
        prediction=3,
        probabilities=PROBABILITIES,
        confidence=0.84,
        steps=2,
        latency_ms=12.0,
        flagged=False,
        classified_at=NOW + timedelta(seconds=sequence),
    )
    return dataclasses.replace(base, **changes)


async def _count(sessions: Sessions, table: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(table)) or 0)


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "changes", "field"),
    [
        (0, {"wafer_id": ""}, "results[0].wafer_id"),
        (1, {"lot_id": "L" * 129}, "results[1].lot_id"),
        (1, {"sequence": 0}, "results[1].sequence"),
        (1, {"node_id": "edge-2"}, "results[1].node_id"),
        (1, {"model_version": ""}, "results[1].model_version"),
        (1, {"probabilities": PROBABILITIES[:8]}, "results[1].class_probabilities"),
        (1, {"probabilities": (0.5,) * 9}, "results[1].class_probabilities"),
        (1, {"probabilities": (-0.1, 1.1) + (0.0,) * 7}, "results[1].class_probabilities[0]"),
        (1, {"prediction": 9}, "results[1].prediction"),
        (1, {"confidence": 1.7}, "results[1].confidence"),
        (1, {"confidence": float("nan")}, "results[1].confidence"),
        (1, {"steps": 0}, "results[1].recursion_steps_used"),
        (1, {"latency_ms": -1.0}, "results[1].inference_latency_ms"),
        (1, {"novelty": float("inf")}, "results[1].novelty_score"),
        (1, {"classified_at": datetime(2026, 3, 1)}, "results[1].classified_at"),
        (1, {"sequence": 1}, "results[1].sequence"),  # not above results[0]'s
        (1, {"wafer_id": "W\x00"}, "results[1].wafer_id"),  # PostgreSQL: INTERNAL before
        (1, {"lot_id": "LOT\x1b[2J"}, "results[1].lot_id"),  # a terminal escape
        (1, {"tested_at": datetime(1970, 1, 1, tzinfo=UTC)}, "results[1].tested_at"),
        (
            1,
            {"wafer_map": domain.StoredMap(rows=2, cols=2, values=b"\x00\x01\x02")},
            "results[1].wafer_map.values",
        ),
        (
            1,
            {"wafer_map": domain.StoredMap(rows=2, cols=2, values=b"\x00\x01\x02\x03")},
            "results[1].wafer_map.values",
        ),
        (
            1,
            {"wafer_map": domain.StoredMap(rows=0, cols=2, values=b"")},
            "results[1].wafer_map",
        ),
    ],
)
def test_an_invalid_result_is_named_by_its_field(
    index: int, changes: dict[str, Any], field: str
) -> None:
    batch = [_result(1), _result(2), _result(3)]
    batch[index] = dataclasses.replace(batch[index], **changes)
    with pytest.raises(InvalidInput) as caught:
        ingest.validate_batch("edge-1", batch, max_batch=10)
    assert caught.value.field == field


def test_batch_level_errors_name_node_id_and_results() -> None:
    with pytest.raises(InvalidInput) as empty_node:
        ingest.validate_batch("", [_result(1)], max_batch=10)
    assert empty_node.value.field == "node_id"
    with pytest.raises(InvalidInput) as empty:
        ingest.validate_batch("edge-1", [], max_batch=10)
    assert empty.value.field == "results"
    with pytest.raises(InvalidInput) as too_many:
        ingest.validate_batch("edge-1", [_result(s) for s in range(1, 12)], max_batch=10)
    assert too_many.value.field == "results"
    assert "at most 10" in too_many.value.reason


def test_a_result_without_node_id_takes_the_batchs() -> None:
    checked = ingest.validate_batch("edge-1", [_result(1, node_id="")], max_batch=10)
    assert checked[0].node_id == "edge-1"


def test_canonical_map_converts_wm811k_and_names_bad_bytes() -> None:
    # WM-811K: 0 no die, 1 pass, 2 fail -> canonical 2 out, 0 pass, 1 fail.
    raw = domain.RawWaferMap(rows=1, cols=3, values=b"\x00\x01\x02", encoding=1)
    assert ingest.canonical_map(raw, field="m").values == b"\x02\x00\x01"
    canonical = domain.RawWaferMap(rows=1, cols=3, values=b"\x00\x01\x02")
    assert ingest.canonical_map(canonical, field="m").values == b"\x00\x01\x02"
    with pytest.raises(InvalidInput) as bad_value:
        ingest.canonical_map(domain.RawWaferMap(1, 3, b"\x00\x07\x01"), field="m")
    assert bad_value.value.field == "m.values"
    assert "byte 1 is 7" in bad_value.value.reason
    with pytest.raises(InvalidInput) as bad_size:
        ingest.canonical_map(domain.RawWaferMap(26, 26, bytes(675)), field="m")
    assert "has 675 bytes, expected 676" in bad_size.value.reason


def test_canonical_map_refuses_an_unknown_encoding() -> None:
    with pytest.raises(InvalidInput) as unknown:
        ingest.canonical_map(domain.RawWaferMap(1, 3, b"\x00\x01\x02", encoding=99), field="m")
    assert unknown.value.field == "m.encoding"


def test_die_yield_is_passing_over_passing_and_failing_dies() -> None:
    assert ingest.die_yield(domain.StoredMap(2, 3, b"\x00\x00\x01\x02\x02\x00")) == 0.75
    assert ingest.die_yield(domain.StoredMap(1, 2, b"\x02\x02")) is None


# --- storing ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_batch_is_stored_with_maps_lots_node_and_review_items(sessions: Sessions) -> None:
    wafer_map = domain.StoredMap(rows=2, cols=2, values=b"\x00\x00\x00\x01")
    batch = [
        _result(1, wafer_map=wafer_map),
        _result(2, lot_id="LOT-2", confidence=0.3),  # below the review threshold
        _result(3),
    ]
    outcome = await ingest.ingest_batch(
        sessions, node_id="edge-1", results=batch, settings=SETTINGS, now=NOW
    )
    assert outcome == domain.IngestOutcome("edge-1", acked_sequence=3, accepted=3, duplicates=0)
    async with sessions() as session:
        rows = {r.sequence: r for r in await session.scalars(select(ResultRow))}
        lots = {r.lot_id: r for r in await session.scalars(select(LotRow))}
        node = await session.get(EdgeNodeRow, "edge-1")
        review_sequences = list(await session.scalars(select(ReviewItemRow.sequence)))
    assert sorted(rows) == [1, 2, 3]
    assert rows[1].die_yield == 0.75 and rows[2].die_yield is None
    assert rows[1].probabilities == list(PROBABILITIES)
    assert await _count(sessions, WaferMapRow) == 1
    assert sorted(lots) == ["LOT-1", "LOT-2"]
    lot1 = lots["LOT-1"]
    assert (lot1.first_seen.replace(tzinfo=UTC), lot1.last_seen.replace(tzinfo=UTC)) == (
        batch[0].classified_at,
        batch[2].classified_at,
    )
    assert node is not None and node.acked_sequence == 3
    assert review_sequences == [2]


def _counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.mark.asyncio
async def test_a_resent_batch_counts_duplicates_and_stores_nothing_new(sessions: Sessions) -> None:
    ingested, duplicates = (
        _counter("fab_results_ingested_total"),
        _counter("fab_results_duplicate_total"),
    )
    first = [_result(s, confidence=0.3) for s in range(1, 6)]
    await ingest.ingest_batch(sessions, node_id="edge-1", results=first, settings=SETTINGS)
    overlapping = [_result(s, confidence=0.3) for s in range(4, 9)]
    outcome = await ingest.ingest_batch(
        sessions, node_id="edge-1", results=overlapping, settings=SETTINGS
    )
    assert (outcome.accepted, outcome.duplicates, outcome.acked_sequence) == (3, 2, 8)
    again = await ingest.ingest_batch(sessions, node_id="edge-1", results=first, settings=SETTINGS)
    assert (again.accepted, again.duplicates) == (0, 5)
    assert again.acked_sequence == 8  # never decreases
    assert await _count(sessions, ResultRow) == 8
    assert await _count(sessions, ReviewItemRow) == 8  # each result queued once
    assert _counter("fab_results_ingested_total") - ingested == 8
    assert _counter("fab_results_duplicate_total") - duplicates == 7


@pytest.mark.asyncio
async def test_an_invalid_batch_stores_nothing(sessions: Sessions) -> None:
    rejected = _counter("fab_results_rejected_total")
    batch = [_result(1), _result(2), _result(3, confidence=1.7)]
    with pytest.raises(InvalidInput, match=r"results\[2\]\.confidence"):
        await ingest.ingest_batch(sessions, node_id="edge-1", results=batch, settings=SETTINGS)
    for table in (ResultRow, LotRow, EdgeNodeRow):
        assert await _count(sessions, table) == 0
    assert _counter("fab_results_rejected_total") - rejected == 3


@pytest.mark.asyncio
async def test_results_above_the_batch_limit_are_rejected(sessions: Sessions) -> None:
    batch = [_result(s) for s in range(1, SETTINGS.stream_max_batch + 2)]
    with pytest.raises(InvalidInput, match="at most 50"):
        await ingest.ingest_batch(sessions, node_id="edge-1", results=batch, settings=SETTINGS)
    assert await _count(sessions, ResultRow) == 0


@pytest.mark.asyncio
async def test_the_station_time_is_stored_beside_the_classification_time(
    sessions: Sessions,
) -> None:
    tested = NOW - timedelta(minutes=3)
    batch = [_result(1, tested_at=tested), _result(2)]
    await ingest.ingest_batch(sessions, node_id="edge-1", results=batch, settings=SETTINGS)
    async with sessions() as session:
        rows = (await session.scalars(select(ResultRow).order_by(ResultRow.sequence))).all()
        stored = [row.to_domain() for row in rows]
    assert [(r.tested_at, r.classified_at) for r in stored] == [
        (tested, NOW + timedelta(seconds=1)),
        (None, NOW + timedelta(seconds=2)),
    ]


@pytest.mark.asyncio
async def test_a_sequence_resent_with_other_content_is_a_conflict_kept_aside(
    sessions: Sessions,
) -> None:
    conflicting = _counter("fab_results_conflicting_total")
    await ingest.ingest_batch(
        sessions, node_id="edge-1", results=[_result(1), _result(2)], settings=SETTINGS
    )
    # Sequence 2 again with another wafer and prediction (a forged or confused sender), and a
    # faithful redelivery of sequence 1.
    forged = _result(2, wafer_id="FORGED", prediction=0)
    outcome = await ingest.ingest_batch(
        sessions, node_id="edge-1", results=[_result(1), forged, _result(3)], settings=SETTINGS
    )
    assert (outcome.accepted, outcome.duplicates, outcome.rejected) == (1, 1, 1)
    assert outcome.acked_sequence == 3  # resending it cannot succeed: acked, not retried
    async with sessions() as session:
        stored = await session.scalar(select(ResultRow.wafer_id).where(ResultRow.sequence == 2))
        conflicts = await results_repo.conflicts(session, node_id="edge-1")
    assert stored == "W2"  # the stored result is unchanged
    (conflict,) = conflicts
    assert (conflict.sequence, conflict.wafer_id, conflict.stored_wafer_id) == (2, "FORGED", "W2")
    assert conflict.differences == ("wafer_id", "prediction")
    assert conflict.incoming["prediction"] == 0
    assert _counter("fab_results_conflicting_total") - conflicting == 1
