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

    @property
    def has_map(self) -> bool:
        """Whether the map came with the label (only then can it be trained on)."""
        return self.map_bytes is not None and self.rows is not None and self.cols is not None


def add_reviewed_labels(session: Session, *, labels: Sequence[ReviewedLabel], now: datetime) -> int:
    """Store reviewed labels; returns how many."""
    session.add_all(
        ReviewedLabelRow(
            fab_id=label.fab_id,
            wafer_key=label.wafer_key,
            lot_key=label.lot_key,
            reviewer_key=label.reviewer_key,
            label=label.label,
            reviewed_at=label.reviewed_at,
            rows=label.rows,
            cols=label.cols,
            map_bytes=label.map_bytes,
            uploaded_at=now,
        )
        for label in labels
    )
    session.flush()
    return len(labels)


def reviewed_labels(session: Session) -> list[ReviewedLabel]:
    """Every reviewed label, oldest review first."""
    rows = session.scalars(
        select(ReviewedLabelRow).order_by(ReviewedLabelRow.reviewed_at, ReviewedLabelRow.id)
    )
    return [
        ReviewedLabel(
            fab_id=row.fab_id,
            wafer_key=row.wafer_key,
            lot_key=row.lot_key,
            reviewer_key=row.reviewer_key,
            label=row.label,
            reviewed_at=cast(datetime, utc(row.reviewed_at)),
            rows=row.rows,
            cols=row.cols,
            map_bytes=row.map_bytes,
        )
        for row in rows
    ]


def count_reviewed_labels(session: Session) -> int:
    """How many reviewed labels are stored."""
    return int(session.scalar(select(func.count()).select_from(ReviewedLabelRow)) or 0)
