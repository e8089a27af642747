"""Reviewed labels on a migrated SQLite cloud database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cloud.storage import labels
from cloud.storage.db import Database

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_reviewed_labels_come_back_oldest_review_first_with_their_maps(db: Database) -> None:
    newer = labels.ReviewedLabel(
        fab_id="fab-1",
        wafer_key="w1",
        lot_key="l1",
        reviewer_key="r1",
        label="Scratch",
        reviewed_at=T0,
        rows=2,
        cols=3,
        map_bytes=bytes([0, 1, 2, 0, 1, 2]),
    )
    older = labels.ReviewedLabel(
        fab_id="fab-2",
        wafer_key="w2",
        lot_key="l2",
        reviewer_key="r2",
        label="Center",
        reviewed_at=T0 - timedelta(days=1),
    )
    with db.session() as session:
        assert labels.add_reviewed_labels(session, labels=[newer, older], now=T0) == 2
    with db.session() as session:
        assert labels.reviewed_labels(session) == [older, newer]
        assert labels.count_reviewed_labels(session) == 2
    assert newer.has_map and not older.has_map
