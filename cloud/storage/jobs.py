"""Retraining jobs, their steps and their logs: what a worker leaves for the next one.

Creating, reading and listing jobs, their logs, cancellation requests and model versions.
What workers do to a job while they run its steps (claim, heartbeat, complete, fail) is in
`cloud.storage.job_leases`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Update, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.storage.tables import JobLogRow, JobStepRow, TrainingJobRow, utc

QUEUED, RUNNING = "queued", "running"
SUCCEEDED, REJECTED, FAILED, CANCELLED = "succeeded", "rejected", "failed", "cancelled"
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, REJECTED, FAILED, CANCELLED)
"""Every state of a job; the last four are final."""
ACTIVE = (QUEUED, RUNNING)
"""States of a job that still has steps to run."""
FINISHED = frozenset({SUCCEEDED, REJECTED, FAILED, CANCELLED})

PENDING, DONE, SKIPPED = "pending", "done", "skipped"
STEP_STATES = (PENDING, RUNNING, DONE, FAILED, SKIPPED, CANCELLED)
"""Every state of a step: ``done`` (and ``skipped``) steps never run again."""


@dataclass(frozen=True)
class Job:
    """A retraining job: what was asked, by whom, and where it stands.

    Attributes:
        model_version: the version the job builds, assigned when it collects its data;
            registered only when the job ``succeeded``.
        worker: the worker holding the lease of the running step, if any.
        heartbeat_at: when that worker last renewed it.
    """

    id: str
    config_name: str
    overrides: dict[str, Any]
    reason: str
    requested_by: str
    state: str
    current_step: str | None
    progress: float
    cancel_requested: bool
    verdict: dict[str, Any] | None
    model_version: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    worker: str | None
    heartbeat_at: datetime | None


@dataclass(frozen=True)
class JobStep:
    """One step of a job: its state, how often it was started, and what it produced."""

    name: str
    state: str
    attempts: int
    output: dict[str, Any] | None
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True)
class JobLogLine:
    """A line of a job's log."""

    at: datetime
    step: str | None
    level: str
    message: str


@dataclass(frozen=True)
class JobDetail:
    """A job with its steps (in order) and the last lines of its log (oldest first)."""

    job: Job
    steps: list[JobStep]
    logs: list[JobLogLine]


def to_job(row: TrainingJobRow) -> Job:
    """The record of a job row."""
    return Job(
        id=row.id,
        config_name=row.config_name,
        overrides=dict(row.overrides or {}),
        reason=row.reason,
        requested_by=row.requested_by,
        state=row.state,
        current_step=row.current_step,
        progress=float(row.progress),
        cancel_requested=bool(row.cancel_requested),
        verdict=row.verdict,
        model_version=row.model_version,
        error=row.error,
        created_at=cast(datetime, utc(row.created_at)),
        updated_at=cast(datetime, utc(row.updated_at)),
        finished_at=utc(row.finished_at),
        worker=row.worker,
        heartbeat_at=utc(row.heartbeat_at),
    )


def updated(session: Session, stmt: Update) -> int:
    """Rows an UPDATE changed (the guard held for that many)."""
    result = session.execute(stmt.execution_options(synchronize_session=False))
    return int(cast(CursorResult[Any], result).rowcount)


def create_job(
    session: Session,
    *,
    job_id: str,
    config_name: str,
    overrides: Mapping[str, Any],
    reason: str,
    requested_by: str,
    steps: Sequence[str],
    now: datetime,
) -> Job:
    """Store a new ``queued`` job whose steps are all ``pending``; the first is current."""
    row = TrainingJobRow(
        id=job_id,
        config_name=config_name,
        overrides=dict(overrides),
        reason=reason,
        requested_by=requested_by,
        state=QUEUED,
        current_step=steps[0],
        progress=0.0,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()  # the steps refer to it (no ORM relationship orders the inserts)
    for position, name in enumerate(steps):
        session.add(
            JobStepRow(job_id=job_id, name=name, position=position, state=PENDING, attempts=0)
        )
    session.flush()
    return to_job(row)


def get_job(session: Session, *, job_id: str) -> Job | None:
    """The job ``job_id``, or None."""
    row = session.get(TrainingJobRow, job_id, populate_existing=True)
    return None if row is None else to_job(row)


def list_jobs(
    session: Session, *, state: str | None = None, limit: int = 50, offset: int = 0
) -> list[Job]:
    """Jobs, newest first, optionally only those in ``state``."""
    stmt = select(TrainingJobRow).order_by(
        TrainingJobRow.created_at.desc(), TrainingJobRow.id.desc()
    )
    if state is not None:
        stmt = stmt.where(TrainingJobRow.state == state)
    return [to_job(row) for row in session.scalars(stmt.limit(limit).offset(offset))]


def job_steps(session: Session, *, job_id: str) -> list[JobStep]:
    """The job's steps in pipeline order."""
    rows = session.scalars(
        select(JobStepRow).where(JobStepRow.job_id == job_id).order_by(JobStepRow.position)
    )
    return [
        JobStep(
            name=row.name,
            state=row.state,
            attempts=row.attempts,
            output=row.output,
            started_at=utc(row.started_at),
            finished_at=utc(row.finished_at),
        )
        for row in rows
    ]


def step_outputs(session: Session, *, job_id: str) -> dict[str, dict[str, Any]]:
    """The outputs of the job's finished (``done`` or ``skipped``) steps, by step name."""
    rows = session.execute(
        select(JobStepRow.name, JobStepRow.output).where(
            JobStepRow.job_id == job_id, JobStepRow.state.in_((DONE, SKIPPED))
        )
    )
    return {name: dict(output or {}) for name, output in rows}


def add_log(
    session: Session,
    *,
    job_id: str,
    step: str | None,
    level: str,
    message: str,
    now: datetime,
) -> None:
    """Append a line to the job's log."""
    session.add(JobLogRow(job_id=job_id, at=now, step=step, level=level, message=message))


def job_logs(session: Session, *, job_id: str, limit: int = 200) -> list[JobLogLine]:
    """The last ``limit`` lines of the job's log, oldest first."""
    rows = session.scalars(
        select(JobLogRow)
        .where(JobLogRow.job_id == job_id)
        .order_by(JobLogRow.id.desc())
        .limit(limit)
    ).all()
    return [
        JobLogLine(at=cast(datetime, utc(r.at)), step=r.step, level=r.level, message=r.message)
        for r in reversed(rows)
    ]


def request_cancel(session: Session, *, job_id: str, now: datetime) -> Job | None:
    """Ask an active job to stop (its running step stops at its next check).

    Returns:
        The job as it is now (a finished job unchanged), or None when there is no such job.
    """
    updated(
        session,
        update(TrainingJobRow)
        .where(TrainingJobRow.id == job_id, TrainingJobRow.state.in_(ACTIVE))
        .values(cancel_requested=True, updated_at=now),
    )
    return get_job(session, job_id=job_id)


def versions_in_use(session: Session, *, prefix: str) -> list[str]:
    """Model versions already assigned to jobs that start with ``prefix``."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = session.scalars(
        select(TrainingJobRow.model_version).where(
            TrainingJobRow.model_version.like(f"{escaped}%", escape="\\")
        )
    )
    return [v for v in rows if v is not None]


def assign_version(session: Session, *, job_id: str, version: str) -> bool:
    """Give the job the model version it builds; False when another job holds it already."""
    try:
        with session.begin_nested():
            session.execute(
                update(TrainingJobRow)
                .where(TrainingJobRow.id == job_id)
                .values(model_version=version)
                .execution_options(synchronize_session=False)
            )
    except IntegrityError:
        return False
    return True
