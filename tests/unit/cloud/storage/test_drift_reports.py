"""Stored drift reports on a migrated SQLite cloud database: newest, history since a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cloud.storage import drift_reports
from cloud.storage.db import Database

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def test_no_report_before_the_first(db: Database) -> None:
    with db.session() as session:
        assert drift_reports.latest_report(session) is None
        assert drift_reports.reports_since(session, since=T0 - timedelta(days=365)) == []


def test_a_report_comes_back_as_stored_with_its_jobs_and_an_aware_time(db: Database) -> None:
    body = {"fabs": [{"fab_id": "fab-1", "psi": 0.31, "band": "retrain"}], "retrain": []}
    with db.session() as session:
        stored = drift_reports.add_report(session, computed_at=T0, report=body, job_ids=["j-1"])
    assert stored.id > 0 and stored.report == body and stored.job_ids == ("j-1",)
    with db.session() as session:
        latest = drift_reports.latest_report(session)
    assert latest == stored
    assert latest is not None and latest.computed_at == T0 and latest.computed_at.tzinfo is not None


def test_the_latest_is_the_newest_computed_and_the_history_is_oldest_first(db: Database) -> None:
    times = [T0 + timedelta(days=7), T0, T0 + timedelta(days=14), T0 - timedelta(days=7)]
    with db.session() as session:
        for i, at in enumerate(times):
            drift_reports.add_report(session, computed_at=at, report={"n": i}, job_ids=[])
    with db.session() as session:
        latest = drift_reports.latest_report(session)
        since = drift_reports.reports_since(session, since=T0)
    assert latest is not None and latest.report == {"n": 2} and latest.job_ids == ()
    assert [r.computed_at for r in since] == [T0, T0 + timedelta(days=7), T0 + timedelta(days=14)]
    assert [r.report["n"] for r in since] == [1, 0, 2]
