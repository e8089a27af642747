"""Retraining jobs through the service on a migrated SQLite database: what a caller sees when a
job is triggered, listed, inspected and cancelled (no worker runs here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.errors import Conflict, NotFound
from cloud.pipeline.context import STEPS
from cloud.pipeline.dispatch import make_dispatcher
from cloud.services import training
from cloud.settings import CloudSettings
from cloud.storage import job_leases, jobs
from cloud.storage.db import Database, migrate
from cloud.storage.tables import utcnow
from wafercore.errors import InvalidInput

# A broker nobody listens on: enqueueing fails as it does when Redis is down.
NO_BROKER = "redis://127.0.0.1:1/0"


@pytest.fixture
def settings(tmp_path: Path) -> CloudSettings:
    return CloudSettings(work_dir=tmp_path, broker_url=NO_BROKER, result_backend=NO_BROKER)


@pytest.fixture
def db(settings: CloudSettings) -> Iterator[Database]:
    migrate(settings.db_url)
    database = Database(settings.db_url)
    yield database
    database.dispose()


def _trigger(db: Database, settings: CloudSettings, **kw: object) -> jobs.Job:
    args: dict[str, object] = {"config_name": "tiny", "overrides": {}, "reason": "new labels"}
    args.update(kw)
    return training.trigger(
        db,
        make_dispatcher(settings),
        settings,
        requested_by="alice",
        **args,  # type: ignore[arg-type]
    )


def test_a_job_is_stored_before_it_is_enqueued_and_waits_for_recovery_if_the_broker_is_down(
    db: Database, settings: CloudSettings
) -> None:
    job = _trigger(db, settings, overrides={"optim.epochs": 2})
    assert (job.state, job.current_step, job.requested_by) == ("queued", "collect", "alice")
    detail = training.get_job(db, job.id)
    assert [s.name for s in detail.steps] == list(STEPS)
    assert all(s.state == "pending" for s in detail.steps)
    assert detail.logs[0].message == (
        "triggered by alice: config tiny with overrides {'optim.epochs': 2}"
    )
    assert detail.logs[1].level == "warning" and "not enqueued yet" in detail.logs[1].message
    assert [j.id for j in training.list_jobs(db, state="queued")] == [job.id]


def test_bad_input_is_refused_naming_the_field_and_nothing_is_stored(
    db: Database, settings: CloudSettings
) -> None:
    cases = {
        "config_name": {"config_name": "nope"},
        "overrides.optim.lr": {"overrides": {"optim.lr": -1}},
        "reason": {"reason": "  "},
    }
    for field, kw in cases.items():
        with pytest.raises(InvalidInput) as caught:
            _trigger(db, settings, **kw)
        assert caught.value.field == field
    assert training.list_jobs(db) == []
    with pytest.raises(InvalidInput, match="state"):
        training.list_jobs(db, state="sleeping")
    with pytest.raises(NotFound):
        training.get_job(db, "no-such-job")


def test_a_job_no_worker_holds_is_cancelled_at_once_a_finished_one_is_a_conflict(
    db: Database, settings: CloudSettings
) -> None:
    queued = _trigger(db, settings)
    cancelled = training.cancel(db, queued.id, requested_by="bob")
    assert (cancelled.state, cancelled.cancel_requested) == ("cancelled", True)
    assert {s.state for s in training.get_job(db, queued.id).steps} == {"cancelled"}
    assert training.cancel(db, queued.id, requested_by="bob").state == "cancelled"

    failed = _trigger(db, settings)
    with db.session() as session:
        job_leases.fail_job(session, job_id=failed.id, step="collect", error="x", now=utcnow())
    with pytest.raises(Conflict, match="already failed"):
        training.cancel(db, failed.id, requested_by="bob")
    with pytest.raises(NotFound):
        training.cancel(db, "no-such-job", requested_by="bob")
