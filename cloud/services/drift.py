"""Drift monitoring: compute the report from what the fabs synced, keep it, retrain on drift.

The reference is the champion's predicted-class mix on its evaluation set (the column sums of
its report's confusion matrix). `compute` builds the report (`cloud.analytics.drift`) over
every fab and node, stores it with the jobs it started: a fab whose PSI exceeds
``psi_retrain`` starts a retraining job (config ``retrain_config``) with the reason recorded,
unless a drift job is already queued or running. Beat runs it every ``drift.every_s``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from cloud.analytics.drift import build_drift_report, daily_series
from cloud.analytics.plots import drift_png
from cloud.errors import NotFound
from cloud.pipeline.dispatch import Dispatcher
from cloud.registry.registry import ModelRegistry
from cloud.services import training
from cloud.settings import CloudSettings
from cloud.storage import aggregates, drift_reports, jobs, labels
from cloud.storage.db import Database
from cloud.storage.drift_reports import StoredDriftReport
from wafercore.errors import InvalidInput

logger = logging.getLogger(__name__)

HISTORY_DAYS = 56
"""How far back the trends and plots look (eight weeks)."""
DRIFT_REASON = "drift:"
_ACTIVE = ("queued", "running")


def reference(registry: ModelRegistry) -> tuple[str | None, list[float]]:
    """The champion's version and predicted-class counts on its evaluation set.

    Raises:
        NotFound: no champion, or its report has no confusion matrix.
    """
    champion = registry.by_alias("champion")
    if champion is None:
        raise NotFound("model alias", "champion")
    report = registry.report(champion.version) or {}
    matrix = report.get("confusion_matrix")
    if not matrix:
        raise NotFound("confusion matrix in the report of", champion.version)
    return champion.version, np.asarray(matrix, dtype=float).sum(axis=0).tolist()


def compute(
    db: Database,
    registry: ModelRegistry,
    dispatch: Dispatcher,
    settings: CloudSettings,
    *,
    now: datetime,
    requested_by: str = "drift-monitor",
) -> StoredDriftReport:
    """Compute, store and act on a drift report (see the module notes)."""
    version, counts = reference(registry)
    since = (now - timedelta(days=HISTORY_DAYS)).date()
    with db.session() as session:
        days = aggregates.aggregates_since(session, since=since)
        reviewed = labels.reviewed_labels(
            session, since=now - timedelta(days=settings.drift.window_days)
        )
    report = build_drift_report(days, reviewed, counts, None, settings.drift, now=now)
    job_ids = []
    body = report.to_dict() | {"reference_version": version}
    if settings.drift.retrain and report.retrain and not _drift_job_active(db):
        reasons = ", ".join(f"fab {fab} PSI {psi:.3f}" for fab, psi in report.retrain)
        try:
            job = training.trigger(
                db,
                dispatch,
                settings,
                config_name=settings.drift.retrain_config,
                overrides={},
                reason=f"{DRIFT_REASON} {reasons} > {settings.drift.psi_retrain} "
                f"(reference {version})",
                requested_by=requested_by,
            )
            job_ids.append(job.id)
        except InvalidInput as err:  # a misconfigured retrain_config: keep the report, say so
            logger.error("drift: retraining not started: %s: %s", err.field, err.reason)
            body["retrain_error"] = f"drift.retrain_config: {err.field}: {err.reason}"
    with db.session() as session:
        return drift_reports.add_report(session, computed_at=now, report=body, job_ids=job_ids)


def _drift_job_active(db: Database) -> bool:
    with db.session() as session:
        for state in _ACTIVE:
            for job in jobs.list_jobs(session, state=state, limit=1000, offset=0):
                if job.reason.startswith(DRIFT_REASON):
                    return True
    return False


def latest(db: Database) -> StoredDriftReport:
    """The newest stored report. Raises NotFound when none was computed yet."""
    with db.session() as session:
        found = drift_reports.latest_report(session)
    if found is None:
        raise NotFound("drift report", "latest")
    return found


def plot(db: Database, registry: ModelRegistry, settings: CloudSettings, *, now: datetime) -> bytes:
    """PNG of each signal per fab per day over the last `HISTORY_DAYS` days."""
    _, counts = reference(registry)
    with db.session() as session:
        days = aggregates.aggregates_since(
            session, since=(now - timedelta(days=HISTORY_DAYS)).date()
        )
    return drift_png(daily_series(days, counts), settings.drift)


def summary(report: dict[str, Any]) -> list[str]:
    """One line per fab: PSI, band, wafers, halting trend (for the CLI and the demo)."""
    lines = []
    for fab in report.get("fabs", []):
        psi = fab.get("psi")
        shown = f"{psi:.3f} ({fab.get('band')})" if psi is not None else f"- ({fab.get('reason')})"
        lines.append(f"fab {fab['fab_id']}: PSI {shown}, {fab.get('wafers', 0)} wafers")
    return lines
