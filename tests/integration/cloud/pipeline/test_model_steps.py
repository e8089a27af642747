"""The promotion gate on a real worker: a candidate that fails it is rejected, with the failed
check named, and the registered champion (evaluated on the same wafers) stays champion."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from cloud.pipeline.dispatch import make_dispatcher
from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry
from cloud.services import training
from cloud.settings import CloudSettings, GateSettings
from cloud.storage import jobs
from cloud.storage.db import Database
from wafercore.shipped import DEFAULT_MODEL_VERSION, shipped_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_job_failing_the_gate_is_rejected_and_the_champion_stays(
    pipeline_settings: CloudSettings,
    database: Database,
    start_worker: Callable[[CloudSettings], Any],
    wait: Callable[..., Any],
) -> None:
    settings = pipeline_settings.model_copy(
        update={"gate": GateSettings(min_accuracy=0.999, min_class_f1=0.0)}
    )
    registry = ModelRegistry(settings, database)
    champion = import_model_folder(
        registry,
        settings,
        shipped_model_dir(DEFAULT_MODEL_VERSION),
        actor="test",
        reason="the champion to beat",
        alias="champion",
    )
    start_worker(settings)
    job = training.trigger(
        database,
        make_dispatcher(settings),
        settings,
        config_name="tiny",
        overrides={},
        reason="integration test",
        requested_by="alice",
    )

    def finished() -> jobs.JobDetail | None:
        detail = training.get_job(database, job.id, log_limit=1000)
        return detail if detail.job.state in jobs.FINISHED else None

    detail = wait(finished, "the job to finish")
    messages = [line.message for line in detail.logs]
    assert detail.job.state == "rejected", messages
    assert detail.job.error is None
    verdict = detail.job.verdict
    assert verdict is not None and not verdict["passed"]
    assert "accuracy" in verdict["failed"]
    accuracy = next(c for c in verdict["checks"] if c["name"] == "accuracy")
    assert accuracy["threshold"] == 0.999 and "< 0.999" in accuracy["detail"]
    # The champion was evaluated on the same held-out wafers and named in the verdict.
    assert verdict["champion"]["version"] == champion.version
    versus = verdict["checks"][0]
    assert versus["name"] == "macro_f1_vs_champion" and champion.version in versus["detail"]
    steps = {step.name: step for step in detail.steps}
    assert steps["sign"].state == "skipped"
    register = steps["register"].output or {}
    assert register["registered"] is False and "accuracy" in register["failed_checks"]
    assert any("rejected: gate failed: " in m and "accuracy" in m for m in messages)
    # Nothing moved in the registry: the champion stays, no candidate, no new version.
    assert registry.by_alias("champion").version == champion.version  # type: ignore[union-attr]
    assert registry.by_alias("candidate") is None
    assert detail.job.model_version is not None
    assert registry.find(detail.job.model_version) is None
    assert [v.version for v in registry.versions()] == [champion.version]
