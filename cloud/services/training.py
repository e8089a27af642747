"""Retraining jobs as the REST API and the CLI see them: trigger, list, inspect, cancel.

A job is stored with all its steps ``pending`` before its first step is enqueued, so the job
exists (and recovery can find it) even when the broker does not answer at that moment.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from cloud.errors import Conflict, NotFound
from cloud.pipeline.context import STEPS
from cloud.pipeline.dispatch import Dispatcher
from cloud.settings import CloudSettings
from cloud.storage import job_leases, jobs
from cloud.storage.db import Database
from cloud.storage.jobs import Job, JobDetail
from cloud.storage.tables import utcnow
from wafercore.errors import InvalidInput

log = logging.getLogger(__name__)

MAX_REASON_CHARS = 2000
MAX_LIST = 500
MAX_LOG_LINES = 5000


def trigger(
    db: Database,
    dispatch: Dispatcher,
    settings: CloudSettings,
    *,
    config_name: str,
    overrides: Mapping[str, Any],
    reason: str,
    requested_by: str,
) -> Job:
    """Start a retraining job of config ``config_name`` with ``overrides``.

    Returns:
        The job as stored (``queued``; in eager mode, where the steps run before this
        returns, as it ended).

    Raises:
        InvalidInput: ``config_name`` (unknown or invalid config), ``overrides.<path>`` (a
            value the config refuses), ``reason`` (empty or too long).
    """
    from cloud.pipeline.job_config import resolve_config

    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput("reason", "say why this model is retrained")
    if len(reason) > MAX_REASON_CHARS:
        raise InvalidInput("reason", f"at most {MAX_REASON_CHARS} characters")
    overrides = dict(overrides or {})
    resolve_config(settings, config_name, overrides)  # validates; the job resolves it again
    job_id = str(uuid.uuid4())
    now = utcnow()
    with db.session() as session:
        jobs.create_job(
            session,
            job_id=job_id,
            config_name=config_name,
            overrides=overrides,
            reason=reason.strip(),
            requested_by=requested_by,
            steps=STEPS,
            now=now,
        )
        jobs.add_log(
            session,
            job_id=job_id,
            step=None,
            level="info",
            message=f"triggered by {requested_by}: config {config_name}"
            + (f" with overrides {overrides}" if overrides else ""),
            now=now,
        )
    _enqueue_first_step(db, dispatch, settings, job_id)
    return get_job(db, job_id, log_limit=0).job


def _enqueue_first_step(
    db: Database, dispatch: Dispatcher, settings: CloudSettings, job_id: str
) -> None:
    """Enqueue the job; when the broker does not answer, say so in its log and leave it to
    recovery (it enqueues jobs nobody touched for ``settings.stale_after_s``)."""
    try:
        dispatch.enqueue(job_id, STEPS[0])
    except Exception as err:
        log.warning("job %s stored but not enqueued: %s", job_id, err)
        with db.session() as session:
            jobs.add_log(
                session,
                job_id=job_id,
                step=None,
                level="warning",
                message=f"not enqueued yet ({type(err).__name__}: {err}); "
                f"recovery retries after {settings.stale_after_s:g} s",
                now=utcnow(),
            )


def list_jobs(
    db: Database, *, state: str | None = None, limit: int = 50, offset: int = 0
) -> list[Job]:
    """Jobs, newest first.

    Raises:
        InvalidInput: ``state`` (not a job state), ``limit`` or ``offset`` out of range.
    """
    if state is not None and state not in jobs.JOB_STATES:
        raise InvalidInput("state", f"{state!r} is not one of {list(jobs.JOB_STATES)}")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput("limit", f"must be 1 to {MAX_LIST}")
    if offset < 0:
        raise InvalidInput("offset", "must be 0 or more")
    with db.session() as session:
        return jobs.list_jobs(session, state=state, limit=limit, offset=offset)


def get_job(db: Database, job_id: str, *, log_limit: int = 200) -> JobDetail:
    """A job with its steps and the last ``log_limit`` lines of its log.

    Raises:
        NotFound: no such job.
        InvalidInput: ``log_limit`` out of range.
    """
    if not 0 <= log_limit <= MAX_LOG_LINES:
        raise InvalidInput("log_limit", f"must be 0 to {MAX_LOG_LINES}")
    with db.session() as session:
        job = jobs.get_job(session, job_id=job_id)
        if job is None:
            raise NotFound("job", job_id)
        steps = jobs.job_steps(session, job_id=job_id)
        logs = jobs.job_logs(session, job_id=job_id, limit=log_limit) if log_limit else []
    return JobDetail(job=job, steps=steps, logs=logs)


def cancel(
    db: Database, job_id: str, *, requested_by: str, settings: CloudSettings | None = None
) -> Job:
    """Ask a job to stop: a running step stops at its next check, queued steps never start.

    A job no worker holds is cancelled here and now. Cancelling a cancelled job returns it.

    Raises:
        NotFound: no such job.
        Conflict: the job already finished otherwise (succeeded, rejected or failed).
    """
    now = utcnow()
    stale_after = settings.stale_after_s if settings is not None else None
    with db.session() as session:
        job = jobs.request_cancel(session, job_id=job_id, now=now)
        if job is None:
            raise NotFound("job", job_id)
        if job.state == jobs.CANCELLED:
            return job
        if job.state in jobs.FINISHED:
            raise Conflict(f"job {job_id} already {job.state}: nothing to cancel")
        jobs.add_log(
            session,
            job_id=job_id,
            step=job.current_step,
            level="info",
            message=f"cancel requested by {requested_by}",
            now=now,
        )
        stale_before = now - timedelta(seconds=stale_after) if stale_after is not None else None
        if job_leases.finish_cancelled(session, job_id=job_id, now=now, stale_before=stale_before):
            jobs.add_log(
                session,
                job_id=job_id,
                step=job.current_step,
                level="info",
                message="cancelled (no step was running)",
                now=now,
            )
        job = jobs.get_job(session, job_id=job_id)
    assert job is not None
    return job
