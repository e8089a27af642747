"""The retraining pipeline's Celery app: Redis broker and result backend, one queue, and a
task per step (`cloud.pipeline.context.STEPS`) plus the recovery task; beat also schedules the
drift report and the rollout decisions (`cloud.services.drift`, `cloud.services.rollouts`).

Nothing happens at import time: `make_celery` builds an app from the settings it is given
(the worker's come from the environment, `wafer-cloud worker`; the API's from its own).

Delivery is at least once: a task is acknowledged after it ran (``task_acks_late``) and given
back when its worker process dies (``task_reject_on_worker_lost``), one message at a time per
process (``worker_prefetch_multiplier=1``: a training step can take hours). A step's task
therefore may run twice (Redis also hands an unacknowledged message to another worker after its
visibility timeout, an hour by default); `cloud.pipeline.runner.run_step` makes every run but
the one holding the step's lease a no-op. Steps hand off by message: a step that finished
enqueues the next one; a message lost with its worker is replaced by the recovery task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cloud.pipeline.context import STEPS
from cloud.pipeline.dispatch import (
    DRIFT_TASK,
    RECOVER_TASK,
    ROLLOUT_TASK,
    CeleryDispatcher,
    step_task_name,
)
from cloud.settings import CloudSettings

if TYPE_CHECKING:
    from celery import Celery

    from cloud.pipeline.runner import PipelineRuntime

BEAT_SCHEDULE_FILE = "celerybeat-schedule"
"""`wafer-cloud beat`'s schedule state, in ``settings.work_dir``."""


def make_celery(settings: CloudSettings) -> Celery:
    """A Celery app for ``settings`` with the pipeline's tasks registered.

    Its beat schedule runs the recovery task every ``settings.recover_every_s``, the drift
    report every ``settings.drift.every_s`` and the rollout decisions every
    ``settings.rollouts.evaluate_every_s``.
    """
    from celery import Celery

    app = Celery("wafer-cloud", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        result_backend=settings.result_backend,
        task_default_queue=settings.task_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_always_eager=settings.task_always_eager,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        beat_schedule={
            name: {
                "task": task,
                "schedule": every,
                # A run still queued behind a long step when the next is due is dropped.
                "options": {"queue": settings.task_queue, "expires": every},
            }
            for name, task, every in (
                ("recover-stalled-jobs", RECOVER_TASK, settings.recover_every_s),
                ("compute-drift", DRIFT_TASK, settings.drift.every_s),
                ("evaluate-rollouts", ROLLOUT_TASK, settings.rollouts.evaluate_every_s),
            )
        },
        beat_schedule_filename=str(settings.work_dir / BEAT_SCHEDULE_FILE),
    )
    _register_tasks(app, settings)
    return app


def _register_tasks(app: Celery, settings: CloudSettings) -> None:
    """One task per step and the recovery task, all sharing one `PipelineRuntime`.

    Not ``shared``: a shared task would be added to every app this process makes later (the
    API's dispatcher, a test's), bound to this app's settings.
    """
    from cloud.pipeline.runner import PipelineRuntime, recover_stalled, run_step

    runtime = PipelineRuntime(settings, CeleryDispatcher(app, settings.task_queue))

    def step_task(step: str) -> None:
        def run(job_id: str) -> None:
            run_step(runtime, job_id, step)

        run.__name__ = run.__qualname__ = f"run_{step}"
        run.__doc__ = f"Run the {step} step of a job."
        app.task(name=step_task_name(step), shared=False)(run)

    for step in STEPS:
        step_task(step)

    def recover() -> int:
        """Enqueue again the steps of jobs whose worker was lost."""
        return len(recover_stalled(runtime))

    app.task(name=RECOVER_TASK, shared=False)(recover)
    _register_monitoring(app, runtime)


def _register_monitoring(app: Celery, runtime: PipelineRuntime) -> None:
    """The drift and rollout tasks (beat's), on the runtime's database and a registry."""
    from cloud.registry.registry import ModelRegistry
    from cloud.services import drift, rollouts
    from cloud.storage.tables import utcnow

    def compute_drift() -> int:
        """Compute and store a drift report; returns its number."""
        registry = ModelRegistry(runtime.settings, runtime.db)
        report = drift.compute(
            runtime.db, registry, runtime.dispatch, runtime.settings, now=utcnow()
        )
        return report.id

    def evaluate_rollouts() -> list[str]:
        """Decide every rollout under way; returns their stages after the decisions."""
        registry = ModelRegistry(runtime.settings, runtime.db)
        decided = rollouts.evaluate_active(
            runtime.db, registry, runtime.settings.rollouts, now=utcnow()
        )
        return [rollout.stage for rollout in decided]

    app.task(name=DRIFT_TASK, shared=False)(compute_drift)
    app.task(name=ROLLOUT_TASK, shared=False)(evaluate_rollouts)
