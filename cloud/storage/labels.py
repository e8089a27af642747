"""Engineer-reviewed labels the fabs upload: the training data of the next model.

Identifiers are keyed hashes made in the fab (``wafer_key``, ``lot_key``, ``reviewer_key``);
``label`` is the class's display name (``Edge-Ring``, `wafercore.classes`); the map travels,
in the canonical encoding, only where the fab's policy allows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud.storage.tables import ReviewedLabelRow, utc
from wafercore.sql import dialect_insert


@dataclass(frozen=True)
class ReviewedLabel:
    """One engineer's label of one wafer, as a fab uploaded it.

    Attributes:
        fab_id: the uploading fab.
        wafer_key: keyed hash of the wafer id (stable: two reviews of a wafer share it).
        lot_key: keyed hash of the lot id.
        reviewer_key: keyed hash of the engineer.
        label: the class's display name.
        reviewed_at: when the engineer resolved the review (aware, UTC).
        rows, cols, map_bytes: the map (canonical encoding, row-major), where policy allows.
        predicted_label: the class the model predicted (display name), None when unknown.
        model_version: the model that predicted it ("" when unknown).
        confidence: the prediction's confidence, None when unknown.
        review_reason: why it was reviewed (the contract's ReviewReason number; 4: an unbiased
            canary sample, the only kind the A/B statistics count).
    """

    fab_id: str
    wafer_key: str
    lot_key: str
    reviewer_key: str
    label: str
    reviewed_at: datetime
    rows: int | None = None
    cols: int | None = None
    map_bytes: bytes | None = None
    predicted_label: str | None = None
    model_version: str = ""
    confidence: float | None = None
    review_reason: int = 0

    @property
    def has_map(self) -> bool:
        """Whether the map came with the label (only then can it be trained on)."""
        return self.map_bytes is not None and self.rows is not None and self.cols is not None


def add_reviewed_labels(session: Session, *, labels: Sequence[ReviewedLabel], now: datetime) -> int:
    """Store reviewed labels, each once: a label already stored (same fab, wafer, reviewer and
    time, as a retried or overlapping upload re-sends it) is skipped.

    Returns:
        How many were new.
    """
    if not labels:
        return 0
    stmt = (
        dialect_insert(session, ReviewedLabelRow)
        .values([_values(label, now) for label in labels])
        .on_conflict_do_nothing(
            index_elements=["fab_id", "wafer_key", "reviewer_key", "reviewed_at"]
        )
        .returning(ReviewedLabelRow.id)
    )
    return len(session.execute(stmt).all())


def _values(label: ReviewedLabel, now: datetime) -> dict[str, object]:
    return {
        "fab_id": label.fab_id,
        "wafer_key": label.wafer_key,
        "lot_key": label.lot_key,
        "reviewer_key": label.reviewer_key,
        "label": label.label,
        "reviewed_at": label.reviewed_at,
        "rows": label.rows,
        "cols": label.cols,
        "map_bytes": label.map_bytes,
        "predicted_label": label.predicted_label,
        "model_version": label.model_version,
        "confidence": label.confidence,
        "review_reason": label.review_reason,
        "uploaded_at": now,
    }


def reviewed_labels(
    session: Session,
    *,
    fab_id: str | None = None,
    since: datetime | None = None,
    review_reason: int | None = None,
    model_versions: Sequence[str] | None = None,
) -> list[ReviewedLabel]:
    """Reviewed labels, oldest review first; every one unless filtered.

    Args:
        session: the cloud database.
        fab_id: only this fab's.
        since: only those reviewed at or after this time.
        review_reason: only those reviewed for this reason (4: canary samples).
        model_versions: only predictions of these versions.
    """
    query = select(ReviewedLabelRow)
    if fab_id is not None:
        query = query.where(ReviewedLabelRow.fab_id == fab_id)
    if since is not None:
        query = query.where(ReviewedLabelRow.reviewed_at >= since)
    if review_reason is not None:
        query = query.where(ReviewedLabelRow.review_reason == review_reason)
    if model_versions is not None:
        query = query.where(ReviewedLabelRow.model_version.in_(list(model_versions)))
    rows = session.scalars(query.order_by(ReviewedLabelRow.reviewed_at, ReviewedLabelRow.id))
    return [_record(row) for row in rows]


def _record(row: ReviewedLabelRow) -> ReviewedLabel:
    return ReviewedLabel(
        fab_id=row.fab_id,
        wafer_key=row.wafer_key,
        lot_key=row.lot_key,
        reviewer_key=row.reviewer_key,
        label=row.label,
        reviewed_at=cast(datetime, utc(row.reviewed_at)),
        rows=row.rows,
        cols=row.cols,
        map_bytes=row.map_bytes,
        predicted_label=row.predicted_label,
        model_version=row.model_version,
        confidence=row.confidence,
        review_reason=row.review_reason,
    )


def count_reviewed_labels(session: Session) -> int:
    """How many reviewed labels are stored."""
    return int(session.scalar(select(func.count()).select_from(ReviewedLabelRow)) or 0)
