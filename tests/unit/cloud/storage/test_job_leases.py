"""Leases on running steps (claim, heartbeat, complete, fail, cancel, recover) on a migrated
SQLite cloud database."""

from __future__ import annotations

from datetime import datetime, timedelta

from cloud.storage import job_leases, jobs
from cloud.storage.db import Database
from tests.unit.cloud.storage.conftest import STEPS, T0, create_job


def _claim(db: Database, worker: str, at: datetime, step: str = "collect") -> int | None:
    with db.session() as session:
        return job_leases.claim_step(
            session,
            job_id="job-1",
            step=step,
            worker=worker,
            now=at,
            stale_before=at - timedelta(seconds=60),
        )


def _get(db: Database, job_id: str = "job-1") -> jobs.Job:
    with db.session() as session:
        job = jobs.get_job(session, job_id=job_id)
    assert job is not None
    return job


def _steps(db: Database) -> dict[str, tuple[str, int]]:
    with db.session() as session:
        return {s.name: (s.state, s.attempts) for s in jobs.job_steps(session, job_id="job-1")}


def test_a_step_is_claimed_once_while_its_lease_is_fresh(db: Database) -> None:
    create_job(db)
    assert _claim(db, "w1", T0) == 1
    job = _get(db)
    assert (job.state, job.worker, job.heartbeat_at) == ("running", "w1", T0)
    assert _claim(db, "w2", T0 + timedelta(seconds=30)) is None  # w1's lease is fresh
    assert _claim(db, "w2", T0, step="validate") is None  # not the current step
    assert _steps(db)["collect"] == ("running", 1)


def test_a_stale_lease_goes_to_the_next_claimant_and_the_old_worker_writes_nothing(
    db: Database,
) -> None:
    create_job(db)
    _claim(db, "w1", T0)
    later = T0 + timedelta(seconds=61)
    assert _claim(db, "w2", later) == 2  # w1 stopped renewing: w2 takes over
    with db.session() as session:
        assert job_leases.heartbeat(session, job_id="job-1", worker="w1", now=later) is None
        assert not job_leases.complete_step(
            session,
            job_id="job-1",
            step="collect",
            worker="w1",
            now=later,
            output={"by": "w1"},
            next_step="validate",
            progress=0.1,
        )
        assert job_leases.heartbeat(session, job_id="job-1", worker="w2", now=later) is False
        assert job_leases.complete_step(
            session,
            job_id="job-1",
            step="collect",
            worker="w2",
            now=later,
            output={"by": "w2"},
            next_step="validate",
            progress=0.1,
        )
        assert jobs.step_outputs(session, job_id="job-1") == {"collect": {"by": "w2"}}
    job = _get(db)
    assert (job.current_step, job.worker, job.progress) == ("validate", None, 0.1)
    assert _claim(db, "w3", later, step="collect") is None  # done steps never run again
    assert _claim(db, "w3", later, step="validate") == 1


def test_the_heartbeat_records_progress_and_reports_a_cancellation(db: Database) -> None:
    create_job(db)
    _claim(db, "w1", T0)
    with db.session() as session:
        assert (
            job_leases.heartbeat(session, job_id="job-1", worker="w1", now=T0, progress=0.3)
            is False
        )
        assert jobs.request_cancel(session, job_id="job-1", now=T0) is not None
        assert job_leases.heartbeat(session, job_id="job-1", worker="w1", now=T0) is True
    assert _get(db).progress == 0.3
    assert _claim(db, "w2", T0 + timedelta(hours=1)) is None  # never claimed once cancelling


def test_the_last_step_sets_the_final_state_and_the_verdict(db: Database) -> None:
    create_job(db)
    with db.session() as session:
        jobs.assign_version(session, job_id="job-1", version="cnn-v0.1.0")
    for step, following in (("collect", "validate"), ("validate", "train"), ("train", None)):
        _claim(db, "w", T0, step=step)
        with db.session() as session:
            assert job_leases.complete_step(
                session,
                job_id="job-1",
                step=step,
                worker="w",
                now=T0,
                output={},
                next_step=following,
                progress=1.0 if following is None else 0.5,
                job_state=None if following else jobs.REJECTED,
                verdict={"passed": False} if following is None else None,
            )
    job = _get(db)
    assert (job.state, job.current_step, job.verdict) == ("rejected", None, {"passed": False})
    assert job.finished_at == T0 and job.model_version == "cnn-v0.1.0"


def test_a_failed_step_fails_the_job_and_skips_the_rest(db: Database) -> None:
    create_job(db)
    _claim(db, "w", T0)
    with db.session() as session:
        assert not job_leases.fail_job(
            session, job_id="job-1", step="collect", error="x", now=T0, worker="other"
        )
        assert job_leases.fail_job(
            session,
            job_id="job-1",
            step="collect",
            error="data file missing",
            now=T0,
            worker="w",
            output={"checks": []},
        )
    job = _get(db)
    assert (job.state, job.error, job.worker) == ("failed", "data file missing", None)
    assert _steps(db) == {
        "collect": ("failed", 1),
        "validate": ("skipped", 0),
        "train": ("skipped", 0),
    }


def test_a_released_step_is_pending_again_for_another_attempt(db: Database) -> None:
    create_job(db)
    _claim(db, "w1", T0)
    with db.session() as session:
        assert job_leases.release_step(session, job_id="job-1", step="collect", worker="w1", now=T0)
    assert _steps(db)["collect"] == ("pending", 1)
    assert _claim(db, "w2", T0) == 2


def test_a_job_nobody_runs_is_cancelled_at_once_a_running_one_by_its_worker(
    db: Database,
) -> None:
    create_job(db, "idle")
    create_job(db, "job-1")
    _claim(db, "w1", T0)
    with db.session() as session:
        for job_id in ("idle", "job-1"):
            jobs.request_cancel(session, job_id=job_id, now=T0)
        assert job_leases.finish_cancelled(session, job_id="idle", now=T0)
        assert not job_leases.finish_cancelled(session, job_id="job-1", now=T0)  # w1 holds it
        assert not job_leases.finish_cancelled(session, job_id="job-1", now=T0, worker="w2")
        assert job_leases.finish_cancelled(session, job_id="job-1", now=T0, worker="w1")
    assert _get(db, "idle").state == _get(db).state == "cancelled"
    assert _steps(db) == {name: ("cancelled", 1 if name == "collect" else 0) for name in STEPS}
    with db.session() as session:  # a finished job stays as it is
        assert jobs.request_cancel(session, job_id="job-1", now=T0).state == "cancelled"  # type: ignore[union-attr]
        assert jobs.request_cancel(session, job_id="nope", now=T0) is None


def test_stalled_jobs_are_those_with_a_lost_worker_or_untouched_without_one(
    db: Database,
) -> None:
    create_job(db, "fresh", at=T0 + timedelta(seconds=50))
    create_job(db, "untouched", at=T0)
    create_job(db, "job-1", at=T0)
    _claim(db, "w1", T0)  # its heartbeat stops at T0
    stale_before = T0 + timedelta(seconds=30)
    with db.session() as session:
        stalled = job_leases.stalled_jobs(session, stale_before=stale_before)
        assert sorted(j.id for j in stalled) == ["job-1", "untouched"]
        now = T0 + timedelta(seconds=31)
        for job in stalled:
            assert job_leases.expire_lease(
                session, job_id=job.id, worker=job.worker, stale_before=stale_before, now=now
            )
        assert job_leases.stalled_jobs(session, stale_before=stale_before) == []
    assert _get(db).worker is None
    assert _claim(db, "w2", T0 + timedelta(seconds=32)) == 2
