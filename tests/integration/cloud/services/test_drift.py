"""Drift monitoring through the service on PostgreSQL and the real `mlflow server`: the
champion's reference mix, a shifted mix that crosses PSI 0.25 and starts ONE retraining job,
a stable mix that starts none, the stored report and its plot.

The fab's daily aggregates are written straight through the storage repository; the job is
only created (a recording dispatcher stands in for the broker: nothing runs it).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.errors import NotFound
from cloud.pipeline.context import STEPS
from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry
from cloud.services import drift, training
from cloud.settings import CloudSettings, DriftSettings
from cloud.storage import aggregates
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.db import Database
from wafercore.shipped import shipped_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAMPION = "cnn-v1.0.0"
NOW = datetime(2026, 11, 9, 6, 0, tzinfo=UTC)
REFERENCE = (
    np.asarray(
        json.loads((shipped_model_dir(CHAMPION) / "report.json").read_text())["confusion_matrix"]
    )
    .sum(axis=0)
    .tolist()
)
"""The champion's predicted-class counts on its evaluation set (its matrix's column sums)."""


@dataclass
class RecordingDispatcher:
    """A `cloud.pipeline.dispatch.Dispatcher` that only remembers what it was asked."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def enqueue(self, job_id: str, step: str, *, countdown: float | None = None) -> None:
        self.calls.append((job_id, step))


@dataclass
class World:
    db: Database
    registry: ModelRegistry
    settings: CloudSettings
    dispatch: RecordingDispatcher

    def report(self, fab: str, mix: list[float], wafers: int, days: int = 3) -> None:
        """``days`` days of two nodes of ``fab`` whose predicted classes follow ``mix``."""
        shares = np.asarray(mix, dtype=float) / sum(mix)
        counts = np.floor(shares * wafers).astype(int)
        counts[int(np.argmax(counts))] += wafers - int(counts.sum())
        rows = [
            DailyAggregate(
                fab_id=fab,
                node_id=node,
                day=(NOW - timedelta(days=back)).date(),
                model_version=CHAMPION,
                class_counts=tuple(int(c) for c in counts),
                wafers_classified=wafers,
                flagged_count=wafers // 20,
                reviewed_count=wafers // 40,
                reviewed_correct_count=wafers // 50,
                latency_p50_ms=4.0,
                latency_p90_ms=8.0,
                latency_p99_ms=15.0,
                avg_recursion_steps=3.0 + 0.1 * back,
            )
            for back in range(days)
            for node in ("node-a", "node-b")
        ]
        with self.db.session() as session:
            aggregates.upsert_aggregates(session, aggregates=rows, now=NOW)

    def compute(self, now: datetime = NOW) -> drift.StoredDriftReport:
        return drift.compute(self.db, self.registry, self.dispatch, self.settings, now=now)


@pytest.fixture
def world(cloud_settings: CloudSettings) -> Iterator[World]:
    """The champion registered; drift jobs of the tiny config, PSI from 200 wafers."""
    settings = cloud_settings.model_copy(
        update={"drift": DriftSettings(retrain_config="tiny", min_wafers=200)}
    )
    db = Database(settings.db_url, settings.db_schema)
    registry = ModelRegistry(settings, db)
    import_model_folder(
        registry,
        settings,
        shipped_model_dir(CHAMPION),
        actor="cli:importer",
        reason="imported for the test",
        alias="champion",
        golden=16,
    )
    yield World(db, registry, settings, RecordingDispatcher())
    db.dispose()


def fab_entry(report: dict[str, object], fab: str) -> dict[str, object]:
    (entry,) = [f for f in report["fabs"] if f["fab_id"] == fab]  # type: ignore[attr-defined]
    return entry  # type: ignore[no-any-return]


def test_the_reference_is_the_champions_predicted_class_mix(world: World) -> None:
    version, counts = drift.reference(world.registry)
    assert version == CHAMPION
    assert counts == pytest.approx(REFERENCE)
    with pytest.raises(NotFound, match="drift report"):
        drift.latest(world.db)


def test_a_shifted_mix_crosses_the_retrain_threshold_and_starts_one_job(world: World) -> None:
    world.report("fab-1", [1.0] * 9, wafers=400)  # uniform, far from the champion's mix
    world.report("fab-2", REFERENCE, wafers=400)  # as the reference: stable
    stored = world.compute()

    shifted, stable = fab_entry(stored.report, "fab-1"), fab_entry(stored.report, "fab-2")
    assert shifted["psi"] > 0.25 and shifted["band"] == "retrain"  # type: ignore[operator]
    assert stable["psi"] < 0.1 and stable["band"] == "stable"  # type: ignore[operator]
    assert shifted["wafers"] == 400 * 2 * 3
    assert [r["fab_id"] for r in stored.report["retrain"]] == ["fab-1"]
    assert stored.report["reference_version"] == CHAMPION
    assert {(n["fab_id"], n["node_id"]) for n in stored.report["nodes"]} == {
        (fab, node) for fab in ("fab-1", "fab-2") for node in ("node-a", "node-b")
    }
    assert stored.computed_at == NOW

    (job_id,) = stored.job_ids
    job = training.get_job(world.db, job_id, log_limit=0).job
    assert (job.state, job.config_name, job.requested_by) == ("queued", "tiny", "drift-monitor")
    assert job.reason.startswith("drift:") and "fab fab-1 PSI" in job.reason
    assert "fab-2" not in job.reason and CHAMPION in job.reason
    assert world.dispatch.calls == [(job_id, STEPS[0])]
    assert drift.latest(world.db) == stored
    lines = drift.summary(stored.report)
    assert any(line.startswith("fab fab-1: PSI") and "retrain" in line for line in lines)

    # While that job is queued, another report over the same drift starts none.
    again = world.compute(NOW + timedelta(hours=1))
    assert again.job_ids == () and [r["fab_id"] for r in again.report["retrain"]] == ["fab-1"]
    assert len(training.list_jobs(world.db)) == 1 and len(world.dispatch.calls) == 1
    assert drift.latest(world.db) == again

    # Once it is over (cancelled here), persisting drift starts a new one.
    training.cancel(world.db, job_id, requested_by="eng-bo")
    third = world.compute(NOW + timedelta(hours=2))
    assert len(third.job_ids) == 1 and third.job_ids[0] != job_id
    assert len(training.list_jobs(world.db)) == 2


def test_a_report_whose_retraining_cannot_start_is_kept_and_says_why(world: World) -> None:
    world.settings = world.settings.model_copy(
        update={"drift": DriftSettings(retrain_config="no-such-config", min_wafers=200)}
    )
    world.report("fab-1", [1.0] * 9, wafers=400)
    stored = world.compute()
    assert stored.job_ids == () and training.list_jobs(world.db) == []
    assert stored.report["retrain_error"].startswith("drift.retrain_config: config_name:")
    assert drift.latest(world.db) == stored


def test_a_stable_mix_starts_no_job(world: World) -> None:
    world.report("fab-1", REFERENCE, wafers=500)
    stored = world.compute()
    entry = fab_entry(stored.report, "fab-1")
    assert entry["psi"] == pytest.approx(0.0, abs=0.01) and entry["band"] == "stable"
    assert stored.report["retrain"] == [] and stored.job_ids == ()
    assert training.list_jobs(world.db) == [] and world.dispatch.calls == []


def test_too_few_wafers_give_no_psi_and_no_job(world: World) -> None:
    world.report("fab-1", [1.0] * 9, wafers=20, days=2)  # 80 wafers < min_wafers
    stored = world.compute()
    entry = fab_entry(stored.report, "fab-1")
    assert entry["psi"] is None and "min_wafers" in str(entry["reason"])
    assert stored.job_ids == () and world.dispatch.calls == []


def test_the_plot_is_a_png(world: World) -> None:
    world.report("fab-1", [1.0] * 9, wafers=400)
    world.report("fab-2", REFERENCE, wafers=400)
    png = drift.plot(world.db, world.registry, world.settings, now=NOW)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
    empty = drift.plot(world.db, world.registry, world.settings, now=NOW + timedelta(days=365))
    assert empty.startswith(b"\x89PNG")


def test_beats_drift_task_computes_and_stores_a_report(world: World) -> None:
    from cloud.pipeline.celery_app import make_celery
    from cloud.pipeline.dispatch import DRIFT_TASK

    today = datetime.now(UTC)
    rows = [
        DailyAggregate(
            fab_id="fab-1",
            node_id="node-a",
            day=today.date(),
            model_version=CHAMPION,
            class_counts=tuple(int(c) for c in REFERENCE),
            wafers_classified=int(sum(REFERENCE)),
            flagged_count=0,
            reviewed_count=0,
            reviewed_correct_count=0,
            latency_p50_ms=4.0,
            latency_p90_ms=8.0,
            latency_p99_ms=15.0,
            avg_recursion_steps=3.0,
        )
    ]
    with world.db.session() as session:
        aggregates.upsert_aggregates(session, aggregates=rows, now=today)
    app = make_celery(world.settings)
    schedule = app.conf.beat_schedule
    assert schedule["compute-drift"]["task"] == DRIFT_TASK
    assert schedule["compute-drift"]["schedule"] == world.settings.drift.every_s
    report_id = app.tasks[DRIFT_TASK]()  # run here, as a worker would
    stored = drift.latest(world.db)
    assert stored.id == report_id and stored.job_ids == ()
    assert fab_entry(stored.report, "fab-1")["band"] == "stable"
