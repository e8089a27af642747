"""Jobs, their steps, logs and versions on a migrated SQLite cloud database."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from cloud.storage import jobs
from cloud.storage.db import Database
from tests.unit.cloud.storage.conftest import STEPS, T0, create_job


def _get(db: Database, job_id: str = "job-1") -> jobs.Job:
    with db.session() as session:
        job = jobs.get_job(session, job_id=job_id)
    assert job is not None
    return job


def _steps(db: Database) -> dict[str, tuple[str, int]]:
    with db.session() as session:
        return {s.name: (s.state, s.attempts) for s in jobs.job_steps(session, job_id="job-1")}


def test_a_new_job_is_queued_at_its_first_step_with_every_step_pending(db: Database) -> None:
    job = create_job(db)
    assert (job.state, job.current_step, job.progress, job.cancel_requested) == (
        "queued",
        "collect",
        0.0,
        False,
    )
    assert job.overrides == {"optim.epochs": 2} and job.created_at == T0
    assert _get(db) == job
    assert _steps(db) == {name: ("pending", 0) for name in STEPS}
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.state = "running"  # type: ignore[misc]


def test_two_jobs_never_hold_the_same_model_version(db: Database) -> None:
    create_job(db, "a")
    create_job(db, "b")
    with db.session() as session:
        assert jobs.assign_version(session, job_id="a", version="cnn-v0.1.0")
        assert not jobs.assign_version(session, job_id="b", version="cnn-v0.1.0")
        assert jobs.assign_version(session, job_id="b", version="cnn-v0.1.1")
        assert sorted(jobs.versions_in_use(session, prefix="cnn-v0.1.")) == [
            "cnn-v0.1.0",
            "cnn-v0.1.1",
        ]
        assert jobs.versions_in_use(session, prefix="cnn-v0.10.") == []
    assert (_get(db, "a").model_version, _get(db, "b").model_version) == (
        "cnn-v0.1.0",
        "cnn-v0.1.1",
    )


def test_logs_come_back_oldest_first_and_the_list_newest_first(db: Database) -> None:
    create_job(db, "older", at=T0)
    create_job(db, "job-1", at=T0 + timedelta(minutes=1))
    with db.session() as session:
        for i in range(5):
            jobs.add_log(
                session, job_id="job-1", step="train", level="info", message=f"l{i}", now=T0
            )
        lines = jobs.job_logs(session, job_id="job-1", limit=3)
        assert [line.message for line in lines] == ["l2", "l3", "l4"]
        assert lines[0].at == T0 and lines[0].step == "train"
        assert [j.id for j in jobs.list_jobs(session)] == ["job-1", "older"]
        assert [j.id for j in jobs.list_jobs(session, limit=1, offset=1)] == ["older"]
        assert jobs.list_jobs(session, state="running") == []
