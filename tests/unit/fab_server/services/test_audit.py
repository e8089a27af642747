"""The audit trail on SQLite: every verdict with who, when, from what to what; CSV export."""

from __future__ import annotations

import csv
import dataclasses
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import InvalidArgument
from fab_server.services import audit, ingest, review
from fab_server.settings import FabSettings
from wafercore.errors import InvalidInput

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = FabSettings()
Sessions = async_sessionmaker[AsyncSession]


def _result(sequence: int, **changes: Any) -> domain.Result:
    base = domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id="LOT-1",
        model_version="cnn-v2.0.0",
        prediction=4,  # Edge-Ring
        probabilities=(0.0,) * 4 + (0.3,) + (0.7 / 4,) * 4,
        confidence=0.3,  # low: every result goes to the review queue
        steps=1,
        latency_ms=2.0,
        flagged=False,
        classified_at=NOW,
    )
    return dataclasses.replace(base, **changes)


async def _queue(sessions: Sessions, count: int) -> list[domain.ReviewItem]:
    await ingest.ingest_batch(
        sessions,
        node_id="edge-1",
        results=[_result(s) for s in range(1, count + 1)],
        settings=SETTINGS,
    )
    items = await review.list_queue(sessions)
    assert len(items) == count
    return sorted(items, key=lambda item: item.wafer_id)


async def _verdict(
    sessions: Sessions, item: domain.ReviewItem, user: str, resolution: domain.Resolution, at: int
) -> None:
    now = NOW + timedelta(minutes=at)
    await review.claim_item(sessions, item_id=item.id, user=user, settings=SETTINGS, now=now)
    await review.resolve(sessions, item_id=item.id, resolution=resolution, user=user, now=now)


@pytest.mark.asyncio
async def test_trail_lists_every_verdict_newest_first_with_from_and_to(sessions: Sessions) -> None:
    w1, w2, w3 = await _queue(sessions, 3)
    await _verdict(sessions, w1, "alice", domain.Resolution(domain.ReviewOutcome.CONFIRMED, 4), 1)
    relabel = domain.Resolution(domain.ReviewOutcome.RELABELLED, 2, comment="=SUM(A1)")
    await _verdict(sessions, w2, "bob", relabel, 2)
    # An admin's override: resolved without holding the claim.
    await review.resolve(
        sessions,
        item_id=w3.id,
        resolution=domain.Resolution(domain.ReviewOutcome.UNUSABLE),
        user="root",
        override=True,
        now=NOW + timedelta(minutes=3),
    )
    trail = await audit.audit_trail(sessions)
    assert [(e.wafer_id, e.resolved_by) for e in trail] == [
        ("W3", "root"),
        ("W2", "bob"),
        ("W1", "alice"),
    ]
    unusable, relabelled, confirmed = trail
    assert (relabelled.predicted_class, relabelled.true_label, relabelled.outcome) == (
        4,
        2,
        "relabelled",
    )
    assert relabelled.resolved_at == NOW + timedelta(minutes=2)
    assert (confirmed.predicted_class, confirmed.true_label) == (4, 4)
    assert audit.is_override(unusable) and not audit.is_override(confirmed)
    assert [e.wafer_id for e in await audit.audit_trail(sessions, wafer_id="W2")] == ["W2"]
    assert [e.wafer_id for e in await audit.audit_trail(sessions, user="alice")] == ["W1"]
    assert await audit.audit_trail(sessions, user="alice", wafer_id="W2") == []

    rows = list(csv.DictReader(io.StringIO(audit.audit_csv(trail))))
    assert list(rows[0]) == list(audit.CSV_COLUMNS)
    by_wafer = {row["wafer_id"]: row for row in rows}
    assert by_wafer["W2"]["from_class"] == "Edge-Ring"
    assert by_wafer["W2"]["to_class"] == "Donut"
    assert by_wafer["W2"]["resolved_by"] == "bob"
    assert by_wafer["W2"]["comment"].endswith("bob: =SUM(A1)")
    assert by_wafer["W3"]["override"] == "yes" and by_wafer["W3"]["to_class"] == ""
    assert by_wafer["W1"]["resolved_at"] == (NOW + timedelta(minutes=1)).isoformat()


@pytest.mark.asyncio
async def test_formula_cells_are_quoted_and_limits_checked(sessions: Sessions) -> None:
    (item,) = await _queue(sessions, 1)
    start = domain.Resolution(domain.ReviewOutcome.UNUSABLE, comment="ignored")
    await _verdict(sessions, item, "alice", start, 1)
    (entry,) = await audit.audit_trail(sessions)
    formula = dataclasses.replace(entry, comment="=HYPERLINK(1)")
    (row,) = csv.DictReader(io.StringIO(audit.audit_csv([formula])))
    assert row["comment"] == "'=HYPERLINK(1)"
    with pytest.raises(InvalidArgument):
        await audit.audit_trail(sessions, limit=0)
    with pytest.raises(InvalidInput):
        await audit.audit_trail(sessions, wafer_id="")
