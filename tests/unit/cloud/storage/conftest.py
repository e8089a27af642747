"""What the job repositories' tests share: a job of three steps created at a fixed time."""

from __future__ import annotations

from datetime import UTC, datetime

from cloud.storage import jobs
from cloud.storage.db import Database

STEPS = ("collect", "validate", "train")
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def create_job(db: Database, job_id: str = "job-1", at: datetime = T0) -> jobs.Job:
    """A queued job of `STEPS` asked by alice at ``at``."""
    with db.session() as session:
        return jobs.create_job(
            session,
            job_id=job_id,
            config_name="tiny",
            overrides={"optim.epochs": 2},
            reason="new labels",
            requested_by="alice",
            steps=STEPS,
            now=at,
        )
