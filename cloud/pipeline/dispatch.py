"""How a job's next step gets to a worker: a message on the pipeline's Celery queue.

The REST API and the CLI hold a `Dispatcher` to start jobs; each step's task holds one to hand
the job on to the next step when it is done.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from cloud.settings import CloudSettings

if TYPE_CHECKING:
    from celery import Celery

TASK_PREFIX = "cloud.pipeline."
RECOVER_TASK = f"{TASK_PREFIX}recover_stalled"
"""The task that enqueues again the steps of jobs whose worker was lost."""
DRIFT_TASK = "cloud.monitoring.compute_drift"
"""Beat's drift report (weekly by default): may start a retraining job."""
ROLLOUT_TASK = "cloud.monitoring.evaluate_rollouts"
"""Beat's decision of every rollout under way."""


def step_task_name(step: str) -> str:
    """The Celery task name of a pipeline step (``cloud.pipeline.train``)."""
    return f"{TASK_PREFIX}{step}"


class Dispatcher(Protocol):
    """Enqueues one step of one job."""

    def enqueue(self, job_id: str, step: str, *, countdown: float | None = None) -> None:
        """Ask a worker to run ``step`` of ``job_id`` (after ``countdown`` seconds)."""
        ...


class CeleryDispatcher:
    """A `Dispatcher` on a Celery app whose tasks are registered (`make_celery`).

    In eager mode (``settings.task_always_eager``) the step runs in this process before
    `enqueue` returns, and so do the steps it enqueues in turn.
    """

    def __init__(self, app: Celery, queue: str) -> None:
        """Send to ``queue`` through ``app``."""
        self.app = app
        self.queue = queue

    def enqueue(self, job_id: str, step: str, *, countdown: float | None = None) -> None:
        """Send the step's task (apply_async, so eager mode runs it here and now)."""
        task = self.app.tasks[step_task_name(step)]
        task.apply_async(args=[job_id], queue=self.queue, countdown=countdown)


def make_dispatcher(settings: CloudSettings) -> CeleryDispatcher:
    """A dispatcher on a new Celery app built from ``settings``."""
    from cloud.pipeline.celery_app import make_celery

    return CeleryDispatcher(make_celery(settings), settings.task_queue)
