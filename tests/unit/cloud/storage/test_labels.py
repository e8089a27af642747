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


def _label(**kw: object) -> labels.ReviewedLabel:
    values: dict[str, object] = {
        "fab_id": "fab-1",
        "wafer_key": "w1",
        "lot_key": "l1",
        "reviewer_key": "r1",
        "label": "Scratch",
        "reviewed_at": T0,
        "predicted_label": "Scratch",
        "model_version": "v1",
        "confidence": 0.93,
        "review_reason": 4,
    }
    values.update(kw)
    return labels.ReviewedLabel(**values)  # type: ignore[arg-type]


def test_a_label_is_stored_once_per_fab_wafer_reviewer_and_time(db: Database) -> None:
    first = _label()
    with db.session() as session:
        assert labels.add_reviewed_labels(session, labels=[first], now=T0) == 1
    # A retried or overlapping upload re-sends it, even with other details: skipped.
    resent = _label(label="Center", lot_key="l9", confidence=0.1)
    distinct = [
        _label(fab_id="fab-2"),
        _label(wafer_key="w2"),
        _label(reviewer_key="r2"),
        _label(reviewed_at=T0 + timedelta(seconds=1)),
    ]
    with db.session() as session:
        assert labels.add_reviewed_labels(session, labels=[resent, *distinct], now=T0) == 4
        assert labels.add_reviewed_labels(session, labels=[first, *distinct], now=T0) == 0
        assert labels.add_reviewed_labels(session, labels=[], now=T0) == 0
    with db.session() as session:
        stored = labels.reviewed_labels(session)
        assert labels.count_reviewed_labels(session) == 5
    assert first in stored and resent not in stored
    assert stored[0] == first  # with its prediction, version, confidence and reason
    assert (first.predicted_label, first.model_version, first.confidence, first.review_reason) == (
        "Scratch",
        "v1",
        0.93,
        4,
    )


def test_a_label_without_its_prediction_has_the_defaults(db: Database) -> None:
    bare = labels.ReviewedLabel(
        fab_id="fab-1", wafer_key="w", lot_key="l", reviewer_key="r", label="Donut", reviewed_at=T0
    )
    with db.session() as session:
        labels.add_reviewed_labels(session, labels=[bare], now=T0)
    with db.session() as session:
        (read,) = labels.reviewed_labels(session)
    assert read == bare
    assert (read.predicted_label, read.model_version, read.confidence, read.review_reason) == (
        None,
        "",
        None,
        0,
    )


def test_reviewed_labels_are_filtered_by_fab_time_reason_and_version(db: Database) -> None:
    rows = {
        "old": _label(wafer_key="a", reviewed_at=T0 - timedelta(days=2)),
        "now": _label(wafer_key="b"),
        "fab2": _label(wafer_key="c", fab_id="fab-2"),
        "flagged": _label(wafer_key="d", review_reason=1, reviewed_at=T0 + timedelta(hours=1)),
        "v2": _label(wafer_key="e", model_version="v2", reviewed_at=T0 + timedelta(hours=2)),
    }
    with db.session() as session:
        labels.add_reviewed_labels(session, labels=list(rows.values()), now=T0)

    def keys(**kw: object) -> list[str]:
        with db.session() as session:
            found = labels.reviewed_labels(session, **kw)  # type: ignore[arg-type]
        return [name for f in found for name, label in rows.items() if f == label]

    assert keys() == ["old", "now", "fab2", "flagged", "v2"]
    assert keys(fab_id="fab-1") == ["old", "now", "flagged", "v2"]
    assert keys(fab_id="fab-3") == []
    assert keys(since=T0) == ["now", "fab2", "flagged", "v2"]  # at or after
    assert keys(since=T0 + timedelta(seconds=1)) == ["flagged", "v2"]
    assert keys(review_reason=4) == ["old", "now", "fab2", "v2"]
    assert keys(review_reason=1) == ["flagged"]
    assert keys(model_versions=["v2"]) == ["v2"]
    assert keys(model_versions=["v1", "v2"]) == ["old", "now", "fab2", "flagged", "v2"]
    assert keys(model_versions=[]) == []
    assert keys(fab_id="fab-1", since=T0, review_reason=4, model_versions=["v1"]) == ["now"]
