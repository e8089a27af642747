"""The retraining pipeline on real `wafer-cloud worker` processes, Redis, PostgreSQL and the
session's MLflow server: a job from trigger to registered candidate, a worker killed with
SIGKILL mid-training, a cancelled job."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import torch

from cloud.pipeline.celery_app import make_celery
from cloud.pipeline.context import STEPS, progress_at
from cloud.pipeline.dispatch import make_dispatcher
from cloud.registry.registry import ModelRegistry
from cloud.services import training
from cloud.settings import CloudSettings, DataChecks
from cloud.storage import jobs, labels
from cloud.storage.db import Database
from cloud.storage.jobs import JobDetail
from cloud.storage.tables import utcnow
from cloud.training.trainer import LAST
from wafercore.classes import DefectClass
from wafercore.synthetic import generate_map

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): ")


def _detail(db: Database, job_id: str) -> JobDetail:
    return training.get_job(db, job_id, log_limit=1000)


def _finished(db: Database, job_id: str) -> JobDetail | None:
    detail = _detail(db, job_id)
    return detail if detail.job.state in jobs.FINISHED else None


def _epochs_logged(detail: JobDetail) -> list[int]:
    return [
        int(match[1])
        for line in detail.logs
        if line.step == "train" and (match := EPOCH_LINE.match(line.message))
    ]


def _messages(detail: JobDetail) -> list[str]:
    return [f"{line.step}: {line.message}" for line in detail.logs]


def _review(wafer: str, reviewer: str, label: DefectClass, seed: int) -> labels.ReviewedLabel:
    grid = generate_map(label, np.random.default_rng(seed), 30, 34)
    return labels.ReviewedLabel(
        fab_id="fab-1",
        wafer_key=wafer,
        lot_key="lot-a",
        reviewer_key=reviewer,
        label=label.display_name,
        reviewed_at=utcnow() - timedelta(days=3),
        rows=30,
        cols=34,
        map_bytes=grid.tobytes(),
    )


def _trigger(settings: CloudSettings, db: Database, **overrides: Any) -> jobs.Job:
    return training.trigger(
        db,
        make_dispatcher(settings),
        settings,
        config_name="tiny",
        overrides=overrides,
        reason="integration test",
        requested_by="alice",
    )


def test_a_job_runs_from_trigger_to_registered_candidate(
    pipeline_settings: CloudSettings,
    database: Database,
    start_worker: Callable[[CloudSettings], Any],
    wait: Callable[..., Any],
) -> None:
    settings = pipeline_settings
    with database.session() as session:
        reviewed = [
            _review("w1", "alice", DefectClass.SCRATCH, 1),
            _review("w1", "bob", DefectClass.SCRATCH, 1),
            _review("w2", "alice", DefectClass.CENTER, 2),
            _review("w2", "bob", DefectClass.CENTER, 2),
            _review("w3", "carol", DefectClass.DONUT, 3),
        ]
        labels.add_reviewed_labels(session, labels=reviewed, now=utcnow())
    start_worker(settings)

    started = time.monotonic()
    job = _trigger(settings, database)
    assert job.state == "queued" and job.current_step == "collect"
    detail = wait(lambda: _finished(database, job.id), "the job to finish")
    print(f"tiny job from trigger to registered candidate: {time.monotonic() - started:.1f} s")

    job = detail.job
    assert job.state == "succeeded", _messages(detail)
    assert job.error is None and job.progress == 1.0 and job.worker is None
    assert [step.name for step in detail.steps] == list(STEPS)
    assert [(step.state, step.attempts) for step in detail.steps] == [("done", 1)] * len(STEPS)
    outputs = {step.name: step.output or {} for step in detail.steps}
    # The reviewed maps joined the WM-811K-format data: one row per wafer, its latest review.
    assert outputs["collect"]["reviewed"] == {"labels": 5, "wafers": 3, "added_maps": 3}
    assert outputs["collect"]["rows"] == 9 * (40 + 12) + 3
    agreement = outputs["validate"]["checks"][0]
    assert agreement["name"] == "agreement" and agreement["passed"]
    assert "2 wafers" in agreement["detail"]
    assert outputs["train"]["resumed_from_epoch"] == 0 and outputs["train"]["epochs_trained"] == 4
    assert _epochs_logged(detail) == [1, 2, 3, 4]
    assert outputs["export"]["tensorrt"].startswith(("skipped: ", "built: "))

    verdict = job.verdict
    assert verdict is not None and verdict["passed"] and verdict["failed"] == []
    assert [c["name"] for c in verdict["checks"]] == [
        "macro_f1_vs_champion",
        "accuracy",
        "class_f1",
        "latency_p99",
    ]
    assert "no champion" in verdict["checks"][0]["detail"] and verdict["champion"] is None

    registry = ModelRegistry(settings, database)
    candidate = registry.by_alias("candidate")
    assert candidate is not None
    assert candidate.version == job.model_version == outputs["register"]["version"] == "cnn-v0.1.0"
    assert candidate.tags["job_id"] == job.id and candidate.tags["gate_verdict"] == "passed"
    assert candidate.artifact_sha256 == outputs["sign"]["sha256"]
    assert candidate.metrics["macro_f1"] == pytest.approx(verdict["candidate"]["macro_f1"])
    assert registry.by_alias("champion") is None
    manifest = json.loads((settings.jobs_dir / job.id / "model" / "model.json").read_text())
    assert manifest["version"] == "cnn-v0.1.0"


def test_a_worker_killed_mid_training_resumes_from_its_last_checkpoint(
    pipeline_settings: CloudSettings,
    database: Database,
    start_worker: Callable[[CloudSettings], Any],
    wait: Callable[..., Any],
) -> None:
    settings = pipeline_settings
    first = start_worker(settings)
    job = _trigger(settings, database, **{"optim.epochs": 5, "optim.samples_per_epoch": 1600})
    wait(lambda: _epochs_logged(_detail(database, job.id)), "the first checkpoint")
    first.kill()

    checkpoint = settings.jobs_dir / job.id / "run" / LAST
    done_at_kill = torch.load(checkpoint, weights_only=False)["epoch"] + 1
    at_kill = _detail(database, job.id)
    assert at_kill.job.state == "running" and at_kill.job.current_step == "train"
    assert 1 <= done_at_kill < 5, "the worker must die mid-training"

    def lease_stale() -> bool:
        beat = _detail(database, job.id).job.heartbeat_at
        return beat is not None and (utcnow() - beat).total_seconds() > settings.stale_after_s

    wait(lease_stale, "the dead worker's lease to go stale", 60)
    start_worker(settings)  # recovers stalled jobs when it starts
    detail = wait(lambda: _finished(database, job.id), "the resumed job to finish")

    assert detail.job.state == "succeeded", _messages(detail)
    steps = {step.name: step for step in detail.steps}
    assert steps["train"].attempts == 2
    assert all(step.attempts == 1 for name, step in steps.items() if name != "train")
    train = steps["train"].output or {}
    assert train["resumed_from_epoch"] == done_at_kill
    assert train["epochs_trained"] == 5 - done_at_kill
    messages = _messages(detail)
    assert any("was lost" in m and "enqueued again" in m for m in messages), messages
    assert any(f"resumed from the checkpoint of epoch {done_at_kill}/5" in m for m in messages)
    # No epoch was trained twice: each logged once at most, all after the kill logged.
    logged = Counter(_epochs_logged(detail))
    assert max(logged.values()) == 1, logged
    assert set(range(done_at_kill + 1, 6)) <= set(logged)
    manifest = json.loads((settings.jobs_dir / job.id / "model" / "model.json").read_text())
    assert [h["epoch"] for h in manifest["extra"]["history"]] == [1, 2, 3, 4, 5]
    # Registered once.
    registry = ModelRegistry(settings, database)
    assert [v.version for v in registry.versions()] == [detail.job.model_version]


def test_a_cancelled_job_stops_and_its_worker_moves_on(
    pipeline_settings: CloudSettings,
    database: Database,
    start_worker: Callable[[CloudSettings], Any],
    wait: Callable[..., Any],
) -> None:
    settings = pipeline_settings
    start_worker(settings)
    job = _trigger(settings, database, **{"optim.epochs": 200, "optim.samples_per_epoch": 3200})
    # Progress reaches the job while training (the heartbeat writes it), and the running
    # step shows where it stands.
    running = wait(
        lambda: (d := _detail(database, job.id)).job.progress > progress_at("train", 0.003) and d,
        "training progress on the job",
    )
    train_now = running.steps[STEPS.index("train")]
    assert train_now.state == "running" and train_now.output is not None
    assert train_now.output["epochs"] == 200 and train_now.output["batches_per_epoch"] == 100

    asked = training.cancel(database, job.id, requested_by="bob")
    assert asked.cancel_requested and asked.state == "running"
    detail = wait(lambda: _finished(database, job.id), "the job to stop", 60)

    assert detail.job.state == "cancelled" and detail.job.worker is None
    states = {step.name: (step.state, step.attempts) for step in detail.steps}
    assert states["train"] == ("cancelled", 1)
    assert all(states[name] == ("cancelled", 0) for name in STEPS[STEPS.index("train") + 1 :])
    assert any("cancelled: the running step stopped" in m for m in _messages(detail))
    assert len(_epochs_logged(detail)) < 200
    # The worker stopped working on it: it runs no task any more.
    inspect = make_celery(settings).control.inspect(timeout=5)
    wait(
        lambda: all(not tasks for tasks in (inspect.active() or {"?": ["no reply"]}).values()),
        "the worker to be idle",
        60,
    )
    # Cancelling again changes nothing.
    assert training.cancel(database, job.id, requested_by="bob").state == "cancelled"


def test_beat_enqueues_a_lost_job_again_and_a_failed_data_check_ends_it(
    pipeline_settings: CloudSettings,
    database: Database,
    start_cloud: Callable[[CloudSettings, str], Any],
    wait: Callable[..., Any],
) -> None:
    settings = pipeline_settings.model_copy(
        update={"checks": DataChecks(min_per_class=1000)}  # the tiny data has 52 per class
    )
    worker = start_cloud(settings, "worker")
    # The worker's own recovery at start-up has run: what follows is beat's doing.
    wait(
        lambda: re.search(r"recover_stalled\[[^]]+\] succeeded", worker.output()),
        "the worker's recovery at start-up",
    )
    with database.session() as session:  # a job whose message never reached the broker
        lost = jobs.create_job(
            session,
            job_id=str(uuid.uuid4()),
            config_name="tiny",
            overrides={},
            reason="lost message",
            requested_by="alice",
            steps=STEPS,
            now=utcnow() - timedelta(seconds=60),
        )
    start_cloud(settings, "beat")
    detail = wait(lambda: _finished(database, lost.id), "the lost job to run")

    assert detail.job.state == "failed"
    assert detail.job.error is not None
    assert detail.job.error.startswith("data check failed: class_counts: ")
    assert "at least 1000 samples per class needed" in detail.job.error
    steps = {step.name: (step.state, step.attempts) for step in detail.steps}
    assert steps["collect"] == ("done", 1) and steps["validate"] == ("failed", 1)
    assert all(steps[name] == ("skipped", 0) for name in STEPS[STEPS.index("validate") + 1 :])
    checks = {c["name"]: c["passed"] for c in detail.steps[1].output["checks"]}  # type: ignore[index]
    assert checks == {"agreement": True, "class_counts": False, "freshness": True}
    assert worker.output().count("cloud.pipeline.recover_stalled[") >= 4  # two received, two done
