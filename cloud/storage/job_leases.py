"""The lease on a job's running step: how workers claim, renew, complete and end steps.

A step runs under a *lease*: the job row names the worker running it (``worker``) and when that
worker last said so (``heartbeat_at``). Every write a worker makes is a guarded UPDATE naming
its lease, and changes nothing when the lease has gone to another worker, so a worker that was
taken for lost can never complete a step twice. A step is claimed by one conditional UPDATE of
the job row: on PostgreSQL a concurrent claim waits for the row lock and then finds the lease
taken; SQLite has a single writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from cloud.storage import jobs
from cloud.storage.jobs import (
    ACTIVE,
    CANCELLED,
    DONE,
    FAILED,
    PENDING,
    RUNNING,
    SKIPPED,
    Job,
)
from cloud.storage.tables import JobStepRow, TrainingJobRow


def claim_step(
    session: Session,
    *,
    job_id: str,
    step: str,
    worker: str,
    now: datetime,
    stale_before: datetime,
) -> int | None:
    """Take the lease of the job's current step ``step`` for ``worker``.

    The job must be active, not asked to cancel, at ``step``, and its lease free (no worker,
    or a worker whose last heartbeat is older than ``stale_before``).

    Returns:
        The step's attempt number (1 for its first start), or None when it cannot be claimed.
    """
    lease_free = or_(
        TrainingJobRow.worker.is_(None),
        TrainingJobRow.heartbeat_at.is_(None),
        TrainingJobRow.heartbeat_at < stale_before,
    )
    taken = jobs.updated(
        session,
        update(TrainingJobRow)
        .where(
            TrainingJobRow.id == job_id,
            TrainingJobRow.state.in_(ACTIVE),
            TrainingJobRow.cancel_requested.is_(False),
            TrainingJobRow.current_step == step,
            lease_free,
        )
        .values(worker=worker, heartbeat_at=now, state=RUNNING, updated_at=now),
    )
    if not taken:
        return None
    _update_steps(
        session,
        job_id,
        JobStepRow.name == step,
        state=RUNNING,
        attempts=JobStepRow.attempts + 1,
        finished_at=None,
    )
    _update_steps(
        session, job_id, JobStepRow.name == step, JobStepRow.started_at.is_(None), started_at=now
    )
    attempts = session.scalar(
        select(JobStepRow.attempts).where(JobStepRow.job_id == job_id, JobStepRow.name == step)
    )
    return None if attempts is None else int(attempts)


def heartbeat(
    session: Session,
    *,
    job_id: str,
    worker: str,
    now: datetime,
    progress: float | None = None,
    step: str | None = None,
    step_progress: Mapping[str, Any] | None = None,
) -> bool | None:
    """Renew ``worker``'s lease (and record the job's progress, and where its running
    ``step`` stands as that step's output until it finishes).

    Returns:
        Whether the job was asked to cancel; None when the lease is no longer ``worker``'s.
    """
    values: dict[str, Any] = {"heartbeat_at": now}
    if progress is not None:
        values["progress"] = progress
        values["updated_at"] = now
    renewed = jobs.updated(
        session,
        update(TrainingJobRow)
        .where(
            TrainingJobRow.id == job_id,
            TrainingJobRow.worker == worker,
            TrainingJobRow.state == RUNNING,
        )
        .values(**values),
    )
    if not renewed:
        return None
    if step is not None and step_progress is not None:
        session.execute(
            update(JobStepRow)
            .where(
                JobStepRow.job_id == job_id,
                JobStepRow.name == step,
                JobStepRow.state == RUNNING,
            )
            .values(output=dict(step_progress))
            .execution_options(synchronize_session=False)
        )
    return bool(
        session.scalar(select(TrainingJobRow.cancel_requested).where(TrainingJobRow.id == job_id))
    )


def complete_step(
    session: Session,
    *,
    job_id: str,
    step: str,
    worker: str,
    now: datetime,
    output: Mapping[str, Any],
    next_step: str | None,
    progress: float,
    step_state: str = DONE,
    job_state: str | None = None,
    verdict: Mapping[str, Any] | None = None,
) -> bool:
    """Record ``step`` as finished under ``worker``'s lease and release the lease.

    Args:
        next_step: the step that becomes current; None with ``job_state`` for the last step.
        step_state: ``done``, or ``skipped`` for a step that had nothing to do.
        job_state: the job's final state when this was its last step.
        verdict: the gate's verdict, when this step settled it.

    Returns:
        False (and nothing written) when the lease is no longer ``worker``'s.
    """
    values: dict[str, Any] = {
        "worker": None,
        "current_step": next_step,
        "progress": progress,
        "updated_at": now,
    }
    if job_state is not None:
        values.update(state=job_state, finished_at=now, current_step=None)
    if verdict is not None:
        values["verdict"] = dict(verdict)
    if not _release(session, job_id=job_id, worker=worker, values=values):
        return False
    _update_steps(
        session,
        job_id,
        JobStepRow.name == step,
        state=step_state,
        output=dict(output),
        finished_at=now,
    )
    return True


def _update_steps(
    session: Session, job_id: str, *where: ColumnElement[bool], **values: Any
) -> None:
    """Set ``values`` on the steps of ``job_id`` that match ``where``."""
    session.execute(
        update(JobStepRow)
        .where(JobStepRow.job_id == job_id, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def _release(session: Session, *, job_id: str, worker: str, values: Mapping[str, Any]) -> bool:
    return bool(
        jobs.updated(
            session,
            update(TrainingJobRow)
            .where(
                TrainingJobRow.id == job_id,
                TrainingJobRow.worker == worker,
                TrainingJobRow.state == RUNNING,
            )
            .values(**values),
        )
    )


def release_step(session: Session, *, job_id: str, step: str, worker: str, now: datetime) -> bool:
    """Give ``step`` back (``pending``, no worker) for another attempt; False if not ours."""
    if not _release(
        session, job_id=job_id, worker=worker, values={"worker": None, "updated_at": now}
    ):
        return False
    _update_steps(session, job_id, JobStepRow.name == step, state=PENDING)
    return True


def fail_job(
    session: Session,
    *,
    job_id: str,
    step: str,
    error: str,
    now: datetime,
    worker: str | None = None,
    output: Mapping[str, Any] | None = None,
) -> bool:
    """End the job as ``failed`` at ``step`` with ``error``; the steps after it are skipped.

    Args:
        worker: when given, only under that worker's lease.

    Returns:
        False (and nothing written) when the job is finished or the lease is not ``worker``'s.
    """
    guard = [TrainingJobRow.id == job_id, TrainingJobRow.state.in_(ACTIVE)]
    if worker is not None:
        guard.append(TrainingJobRow.worker == worker)
    failed = jobs.updated(
        session,
        update(TrainingJobRow)
        .where(*guard)
        .values(state=FAILED, error=error, finished_at=now, updated_at=now, worker=None),
    )
    if not failed:
        return False
    step_values: dict[str, Any] = {"state": FAILED, "finished_at": now}
    if output is not None:
        step_values["output"] = dict(output)
    _update_steps(session, job_id, JobStepRow.name == step, **step_values)
    _update_steps(session, job_id, JobStepRow.state == PENDING, state=SKIPPED)
    return True


def finish_cancelled(
    session: Session,
    *,
    job_id: str,
    now: datetime,
    worker: str | None = None,
    stale_before: datetime | None = None,
) -> bool:
    """End a job asked to cancel as ``cancelled``: its unfinished steps become ``cancelled``.

    Args:
        worker: the worker whose running step stopped; without it, only a job no live worker
            holds (no lease, or one older than ``stale_before``).

    Returns:
        False (and nothing written) when the job is not active and asked to cancel, or is
        held by another worker.
    """
    guard: list[ColumnElement[bool]] = [
        TrainingJobRow.id == job_id,
        TrainingJobRow.state.in_(ACTIVE),
        TrainingJobRow.cancel_requested.is_(True),
    ]
    if worker is not None:
        guard.append(TrainingJobRow.worker == worker)
    else:
        idle: list[ColumnElement[bool]] = [TrainingJobRow.worker.is_(None)]
        if stale_before is not None:
            idle.append(TrainingJobRow.heartbeat_at < stale_before)
        guard.append(or_(*idle))
    cancelled = jobs.updated(
        session,
        update(TrainingJobRow)
        .where(*guard)
        .values(state=CANCELLED, finished_at=now, updated_at=now, worker=None),
    )
    if not cancelled:
        return False
    _update_steps(session, job_id, JobStepRow.state.in_((PENDING, RUNNING)), state=CANCELLED)
    return True


def stalled_jobs(session: Session, *, stale_before: datetime) -> list[Job]:
    """Active jobs nobody is moving: a worker that stopped renewing its lease before
    ``stale_before``, or no worker and no change since then (a lost or unconsumed message)."""
    lost = and_(
        TrainingJobRow.worker.is_not(None),
        or_(TrainingJobRow.heartbeat_at.is_(None), TrainingJobRow.heartbeat_at < stale_before),
    )
    idle = and_(TrainingJobRow.worker.is_(None), TrainingJobRow.updated_at < stale_before)
    rows = session.scalars(
        select(TrainingJobRow)
        .where(TrainingJobRow.state.in_(ACTIVE), or_(lost, idle))
        .order_by(TrainingJobRow.created_at)
    )
    return [jobs.to_job(row) for row in rows]


def expire_lease(
    session: Session, *, job_id: str, worker: str | None, stale_before: datetime, now: datetime
) -> bool:
    """Drop a lost worker's lease (or mark an idle job as just looked at), so the job is
    enqueued again now and not again before another ``stale_after``; False if it moved since."""
    if worker is None:
        guard = [TrainingJobRow.worker.is_(None), TrainingJobRow.updated_at < stale_before]
    else:
        guard = [
            TrainingJobRow.worker == worker,
            or_(TrainingJobRow.heartbeat_at.is_(None), TrainingJobRow.heartbeat_at < stale_before),
        ]
    return bool(
        jobs.updated(
            session,
            update(TrainingJobRow)
            .where(TrainingJobRow.id == job_id, TrainingJobRow.state.in_(ACTIVE), *guard)
            .values(worker=None, updated_at=now),
        )
    )
