"""Running one step of one job, exactly once to completion, and recovering lost workers.

`run_step` is what every step's Celery task does:

1. claim the step (a conditional UPDATE: the job is active, at this step, not asked to cancel,
   and its lease is free or stale); a duplicate message, a finished job or a step another
   worker holds make it return without doing anything;
2. run the step's function with a heartbeat renewing the lease;
3. record the outcome under the lease (a worker that lost its lease writes nothing), release
   the lease, make the next step current, and enqueue it.

A step that raises an unexpected error is retried (``settings.step_max_attempts``, after
``settings.step_retry_delay_s``); a step whose worker died is enqueued again by
`recover_stalled`, and counts an attempt too, so a step that keeps killing its worker ends
the job instead of looping.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

from cloud.pipeline.context import (
    STEPS,
    JobCancelled,
    LeaseLost,
    StepContext,
    StepFailed,
    StepOutcome,
    next_step,
    progress_at,
)
from cloud.pipeline.dispatch import Dispatcher
from cloud.pipeline.lease import Heartbeat
from cloud.settings import CloudSettings
from cloud.storage import job_leases, jobs
from cloud.storage.db import Database
from cloud.storage.tables import utcnow

log = logging.getLogger(__name__)

StepFunction = Callable[[StepContext], StepOutcome]


class PipelineRuntime:
    """What a worker process's tasks share: settings, the database (opened on first use, so
    after a prefork worker has forked) and the dispatcher of next steps."""

    def __init__(self, settings: CloudSettings, dispatch: Dispatcher) -> None:
        """Tasks of ``settings`` that enqueue their next step through ``dispatch``."""
        self.settings = settings
        self.dispatch = dispatch

    @cached_property
    def db(self) -> Database:
        """The cloud database."""
        return Database(self.settings.db_url, self.settings.db_schema)


def step_function(step: str) -> StepFunction:
    """The function of ``step`` (imported when first needed: they pull in PyTorch)."""
    from cloud.pipeline import data_steps, model_steps, train_step

    functions: dict[str, StepFunction] = {
        "collect": data_steps.collect,
        "validate": data_steps.validate,
        "train": train_step.train,
        "evaluate": model_steps.evaluate,
        "export": model_steps.export,
        "latency": model_steps.latency,
        "sign": model_steps.sign,
        "register": model_steps.register,
    }
    return functions[step]


def worker_name() -> str:
    """This attempt's lease holder: host, process and a nonce (two attempts never share one)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class _Claim:
    job: jobs.Job
    attempt: int
    outputs: dict[str, dict[str, Any]]


def _stale_before(settings: CloudSettings, now: datetime) -> datetime:
    return now - timedelta(seconds=settings.stale_after_s)


def _claim(runtime: PipelineRuntime, job_id: str, step: str, worker: str) -> _Claim | None:
    """Claim ``step`` of ``job_id``; a job asked to cancel and held by nobody ends here."""
    now = utcnow()
    stale_before = _stale_before(runtime.settings, now)
    with runtime.db.session() as session:
        job = jobs.get_job(session, job_id=job_id)
        if job is None or job.state in jobs.FINISHED:
            return None
        if job.cancel_requested:
            if job_leases.finish_cancelled(
                session, job_id=job_id, now=now, stale_before=stale_before
            ):
                jobs.add_log(
                    session,
                    job_id=job_id,
                    step=step,
                    level="info",
                    message=f"cancelled before {step} started",
                    now=now,
                )
            return None
        attempt = job_leases.claim_step(
            session, job_id=job_id, step=step, worker=worker, now=now, stale_before=stale_before
        )
        if attempt is None:
            return None
        claimed = jobs.get_job(session, job_id=job_id)
        outputs = jobs.step_outputs(session, job_id=job_id)
        jobs.add_log(
            session,
            job_id=job_id,
            step=step,
            level="info",
            message=f"started (attempt {attempt}, worker {worker})",
            now=now,
        )
    assert claimed is not None  # claimed in this transaction
    return _Claim(claimed, attempt, outputs)


def run_step(runtime: PipelineRuntime, job_id: str, step: str) -> None:
    """Run ``step`` of job ``job_id`` if it is this step's turn and nobody else runs it."""
    settings = runtime.settings
    worker = worker_name()
    claim = _claim(runtime, job_id, step, worker)
    if claim is None:
        log.info("job %s: step %s is not to be run now", job_id, step)
        return
    if claim.attempt > settings.step_max_attempts:
        _fail(
            runtime,
            claim.job,
            step,
            worker,
            f"step {step} did not finish in {settings.step_max_attempts} attempts "
            "(it failed, or its worker was lost, each time)",
        )
        return
    with Heartbeat(runtime.db, job_id, step, worker, settings.heartbeat_s) as heartbeat:
        context = StepContext(
            settings=settings,
            db=runtime.db,
            job=claim.job,
            step=step,
            attempt=claim.attempt,
            worker=worker,
            outputs=claim.outputs,
            heartbeat=heartbeat,
        )
        outcome = _execute(runtime, context)
    if outcome is not None:
        _complete(runtime, context, outcome)


def _execute(runtime: PipelineRuntime, context: StepContext) -> StepOutcome | None:
    """The step's outcome, or None when it ended otherwise (recorded here)."""
    job, step, worker = context.job, context.step, context.worker
    try:
        context.check()
        return step_function(step)(context)
    except JobCancelled:
        _cancelled(runtime, job.id, step, worker)
    except LeaseLost:
        log.warning("job %s: step %s was taken over by another worker; stopped", job.id, step)
    except StepFailed as err:
        _fail(runtime, job, step, worker, err.reason, err.output)
    except Exception as err:
        log.exception("job %s: step %s raised", job.id, step)
        _retry_or_fail(runtime, context, err)
    return None


def _complete(runtime: PipelineRuntime, context: StepContext, outcome: StepOutcome) -> None:
    """Record the outcome, release the lease and enqueue the next step."""
    job, step = context.job, context.step
    following = next_step(step)
    if following is None and outcome.job_state is None:
        raise RuntimeError(f"the last step {step} must set the job's final state")
    now = utcnow()
    with runtime.db.session() as session:
        recorded = job_leases.complete_step(
            session,
            job_id=job.id,
            step=step,
            worker=context.worker,
            now=now,
            output=outcome.output,
            next_step=following,
            progress=progress_at(step, 1.0),
            step_state=jobs.SKIPPED if outcome.skipped else jobs.DONE,
            job_state=outcome.job_state,
            verdict=outcome.verdict,
        )
        if recorded:
            done = "skipped" if outcome.skipped else "done"
            final = f"; job {outcome.job_state}" if outcome.job_state else ""
            jobs.add_log(
                session, job_id=job.id, step=step, level="info", message=f"{done}{final}", now=now
            )
    if not recorded:
        log.warning("job %s: step %s finished after its lease was lost; dropped", job.id, step)
        return
    if following is not None:
        runtime.dispatch.enqueue(job.id, following)


def _cancelled(runtime: PipelineRuntime, job_id: str, step: str, worker: str) -> None:
    now = utcnow()
    with runtime.db.session() as session:
        if job_leases.finish_cancelled(session, job_id=job_id, now=now, worker=worker):
            jobs.add_log(
                session,
                job_id=job_id,
                step=step,
                level="info",
                message="cancelled: the running step stopped",
                now=now,
            )


def _fail(
    runtime: PipelineRuntime,
    job: jobs.Job,
    step: str,
    worker: str,
    reason: str,
    output: dict[str, Any] | None = None,
) -> None:
    now = utcnow()
    with runtime.db.session() as session:
        if job_leases.fail_job(
            session,
            job_id=job.id,
            step=step,
            error=reason,
            now=now,
            worker=worker,
            output=output,
        ):
            jobs.add_log(session, job_id=job.id, step=step, level="error", message=reason, now=now)


def _retry_or_fail(runtime: PipelineRuntime, context: StepContext, err: Exception) -> None:
    """An unexpected error: try the step again later, or fail the job after the last attempt."""
    settings, job, step = runtime.settings, context.job, context.step
    what = f"{type(err).__name__}: {err}"
    if context.attempt >= settings.step_max_attempts:
        _fail(runtime, job, step, context.worker, f"step {step} failed: {what}")
        return
    now = utcnow()
    with runtime.db.session() as session:
        released = job_leases.release_step(
            session, job_id=job.id, step=step, worker=context.worker, now=now
        )
        if released:
            jobs.add_log(
                session,
                job_id=job.id,
                step=step,
                level="warning",
                message=f"attempt {context.attempt} failed ({what}); "
                f"retrying in {settings.step_retry_delay_s:g} s",
                now=now,
            )
    if released:
        runtime.dispatch.enqueue(job.id, step, countdown=settings.step_retry_delay_s)


def recover_stalled(runtime: PipelineRuntime) -> list[str]:
    """Enqueue again the current step of every active job nobody is moving.

    A job whose worker stopped renewing its lease more than ``settings.stale_after_s`` ago
    loses the lease (the step will resume from what it saved: training from its last
    checkpoint); a job with no worker and no change for as long (its message was lost) is
    enqueued again. Run by `wafer-cloud beat` periodically and once whenever a worker starts.

    Returns:
        The ids of the jobs enqueued again.
    """
    now = utcnow()
    stale_before = _stale_before(runtime.settings, now)
    recovered: list[tuple[str, str]] = []
    with runtime.db.session() as session:
        for job in job_leases.stalled_jobs(session, stale_before=stale_before):
            step = job.current_step or STEPS[0]
            if not job_leases.expire_lease(
                session, job_id=job.id, worker=job.worker, stale_before=stale_before, now=now
            ):
                continue
            recovered.append((job.id, step))
            if job.worker is not None:
                seen = job.heartbeat_at or job.updated_at
                jobs.add_log(
                    session,
                    job_id=job.id,
                    step=step,
                    level="warning",
                    message=f"worker {job.worker} was lost (no heartbeat for "
                    f"{(now - seen).total_seconds():.0f} s): step {step} enqueued again",
                    now=now,
                )
    for job_id, step in recovered:
        runtime.dispatch.enqueue(job_id, step)
    if recovered:
        log.info("recovered %d stalled job(s): %s", len(recovered), [j for j, _ in recovered])
    return [job_id for job_id, _ in recovered]
