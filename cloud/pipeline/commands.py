"""``wafer-cloud worker`` and ``wafer-cloud beat``: the processes of the retraining pipeline.

Registered on the CLI group in `cloud.cli`. Heavy imports (Celery, the database) happen inside
the commands, so ``wafer-cloud --help`` stays fast.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import click

from cloud.settings import CloudSettings


@click.command(
    help="Run a Celery worker of the retraining pipeline on CLOUD_TASK_QUEUE (broker "
    "CLOUD_BROKER_URL). Migrates the cloud database first. Start as many as you like, on "
    "any host that reaches the broker, the database and MLflow."
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Steps this worker runs at once (each in its own process with the prefork pool).",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "solo", "threads"]),
    default="prefork",
    show_default=True,
    help="Celery execution pool; prefork runs steps in child processes.",
)
@click.option("--loglevel", default="INFO", show_default=True, help="Celery's log level.")
@click.pass_obj
def worker(settings: CloudSettings, concurrency: int, pool: str, loglevel: str) -> None:
    """Run the pipeline's worker until it is stopped."""
    from celery.signals import worker_ready

    from cloud.pipeline.celery_app import make_celery
    from cloud.pipeline.dispatch import RECOVER_TASK
    from cloud.storage.db import migrate

    if settings.task_always_eager:
        raise click.UsageError(
            "CLOUD_TASK_ALWAYS_EAGER is set: steps run in the API's process; no worker needed"
        )
    migrate(settings.db_url, settings.db_schema)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    app = make_celery(settings)

    def recover_on_start(**_: Any) -> None:
        # Steps whose worker died (this one, before a restart) resume without waiting for beat.
        app.send_task(RECOVER_TASK, queue=settings.task_queue)

    worker_ready.connect(recover_on_start, weak=False)
    app.worker_main(
        [
            "worker",
            "--queues",
            settings.task_queue,
            "--concurrency",
            str(concurrency),
            "--pool",
            pool,
            "--loglevel",
            loglevel,
            "--hostname",
            f"wafer-cloud-{os.getpid()}@{socket.gethostname()}",
            "--without-mingle",
            "--without-gossip",
        ]
    )


@click.command(
    help="Run the pipeline's scheduler: every CLOUD_RECOVER_EVERY_S it enqueues again the "
    "steps of jobs whose worker was lost (no heartbeat for CLOUD_STALE_AFTER_S). Run one."
)
@click.option("--loglevel", default="INFO", show_default=True, help="Celery's log level.")
@click.pass_obj
def beat(settings: CloudSettings, loglevel: str) -> None:
    """Run the scheduler until it is stopped."""
    from cloud.pipeline.celery_app import make_celery

    settings.work_dir.mkdir(parents=True, exist_ok=True)
    app = make_celery(settings)
    app.start(["beat", "--loglevel", loglevel])
