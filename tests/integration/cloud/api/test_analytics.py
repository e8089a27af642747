"""``/analytics/drift`` through the real API (PostgreSQL, the session's `mlflow server`, the
local Redis): 404 before any report, an ml-engineer computes one (a shifted fab starts a
retraining job), viewers read it and its PNG plot."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest

from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry
from cloud.services import training
from cloud.settings import CloudSettings
from cloud.storage import aggregates
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.db import Database
from wafercore.shipped import shipped_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHAMPION = "cnn-v1.0.0"
Headers = Callable[..., dict[str, str]]


def report_mix(db: Database, fab: str, shares: list[float], wafers: int = 600) -> None:
    """Today's aggregate of two nodes of ``fab`` predicting classes in ``shares``."""
    counts = np.floor(np.asarray(shares) / sum(shares) * wafers).astype(int)
    counts[int(np.argmax(counts))] += wafers - int(counts.sum())
    now = datetime.now(UTC)
    rows = [
        DailyAggregate(
            fab_id=fab,
            node_id=node,
            day=now.date(),
            model_version=CHAMPION,
            class_counts=tuple(int(c) for c in counts),
            wafers_classified=wafers,
            flagged_count=10,
            reviewed_count=5,
            reviewed_correct_count=4,
            latency_p50_ms=3.0,
            latency_p90_ms=6.0,
            latency_p99_ms=12.0,
            avg_recursion_steps=3.0,
        )
        for node in ("node-a", "node-b")
    ]
    with db.session() as session:
        aggregates.upsert_aggregates(session, aggregates=rows, now=now)


def register_champion(settings: CloudSettings, db: Database) -> None:
    import_model_folder(
        ModelRegistry(settings, db),
        settings,
        shipped_model_dir(CHAMPION),
        actor="cli:importer",
        reason="imported for the test",
        alias="champion",
        golden=16,
    )


def test_drift_is_404_until_computed_then_the_report_and_its_plot_are_served(
    api: httpx.Client, headers: Headers, cloud_settings: CloudSettings, cloud_db: Database
) -> None:
    viewer, engineer = headers("viewer"), headers("ml-engineer", "eng-bo")
    none = api.get("/analytics/drift", headers=viewer)
    assert none.status_code == 404 and none.json()["detail"][0]["type"] == "not_found"
    # No champion, no reference: nothing to compute against.
    assert api.post("/analytics/drift/compute", headers=engineer).status_code == 404

    register_champion(cloud_settings, cloud_db)
    report_mix(cloud_db, "fab-1", [1.0] * 9)  # uniform: far from the champion's mix
    reference = json.loads((shipped_model_dir(CHAMPION) / "report.json").read_text())
    report_mix(cloud_db, "fab-2", np.asarray(reference["confusion_matrix"]).sum(axis=0).tolist())

    assert api.post("/analytics/drift/compute", headers=viewer).status_code == 403
    computed = api.post("/analytics/drift/compute", headers=engineer)
    assert computed.status_code == 201, computed.text
    body = computed.json()
    fabs = {f["fab_id"]: f for f in body["report"]["fabs"]}
    assert fabs["fab-1"]["psi"] > 0.25 and fabs["fab-1"]["band"] == "retrain"
    assert fabs["fab-2"]["band"] == "stable"
    assert body["report"]["reference_version"] == CHAMPION
    (job_id,) = body["job_ids"]
    job = training.get_job(cloud_db, job_id, log_limit=0).job
    assert job.requested_by == "eng-bo" and job.reason.startswith("drift:")
    assert "fab fab-1" in job.reason

    latest = api.get("/analytics/drift", headers=viewer)
    assert latest.status_code == 200 and latest.json() == body
    again = api.post("/analytics/drift/compute", headers=engineer).json()
    assert again["id"] != body["id"] and again["job_ids"] == []  # the job is still queued
    assert api.get("/analytics/drift", headers=viewer).json()["id"] == again["id"]

    png = api.get("/analytics/drift.png", headers=viewer)
    assert png.status_code == 200, png.text
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
