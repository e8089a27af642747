"""Drift reports as computed (table ``drift_reports``), newest last, with the jobs they started."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.storage.tables import DriftReportRow, utc


@dataclass(frozen=True)
class StoredDriftReport:
    """A stored report: its number, when it was computed, the report (JSON) and its jobs."""

    id: int
    computed_at: datetime
    report: dict[str, Any]
    job_ids: tuple[str, ...]


def _record(row: DriftReportRow) -> StoredDriftReport:
    return StoredDriftReport(
        id=row.id,
        computed_at=cast(datetime, utc(row.computed_at)),
        report=row.report,
        job_ids=tuple(row.job_ids),
    )


def add_report(
    session: Session, *, computed_at: datetime, report: dict[str, Any], job_ids: list[str]
) -> StoredDriftReport:
    """Store a computed report."""
    row = DriftReportRow(computed_at=computed_at, report=report, job_ids=job_ids)
    session.add(row)
    session.flush()
    return _record(row)


def latest_report(session: Session) -> StoredDriftReport | None:
    """The newest report, or None."""
    row = session.scalars(
        select(DriftReportRow).order_by(DriftReportRow.computed_at.desc()).limit(1)
    ).first()
    return _record(row) if row is not None else None


def reports_since(session: Session, *, since: datetime) -> list[StoredDriftReport]:
    """Reports computed at or after ``since``, oldest first (the history the plots draw)."""
    rows = session.scalars(
        select(DriftReportRow)
        .where(DriftReportRow.computed_at >= since)
        .order_by(DriftReportRow.computed_at)
    )
    return [_record(row) for row in rows]
