"""The demo's closing loop: the demo fab syncs with the cloud, drift is measured, a canary decided.

The fab the demo filled (its SQLite database) is opened again with a sync configuration: a
demo engineer confirms the most uncertain wafers of its review queue, and one sync pass uploads
those verdicts (anonymised: keyed hashes, no maps) and the nodes' daily aggregates to CloudSync.
The cloud then computes a drift report (PSI of the predicted-class mix against the champion's);
past 0.25 it starts the retraining job itself. Once the job has registered a candidate, a canary
rollout puts it on one of the fab's two stations; the next sync pass turns the plan into the
fab's model assignments. With no canary reviews in the demo's short trial window the decision,
as beat makes it, is a rollback with its reason, and a last pass puts the station back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cloud.registry.registry import ModelRegistry
from cloud.services import drift as drift_service
from cloud.services import rollouts
from cloud.settings import CloudSettings
from cloud.storage.db import Database
from fab_server import domain
from fab_server.db import make_async_engine, session_factory
from fab_server.services import review
from fab_server.settings import FabSettings, SyncSettings
from fab_server.sync import agent

DEMO_FAB = "demo-fab"
DEMO_ENGINEER = "demo-engineer"
CONFIRMED_REVIEWS = 20
"""Wafers the demo engineer confirms before the first sync."""


@dataclass
class FabLink:
    """The demo fab's database with a sync configuration towards the demo cloud."""

    settings: FabSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]

    async def sync(self) -> dict[str, Any]:
        """One sync pass."""
        return await agent.run_once(self.sessions, self.settings)

    async def close(self) -> None:
        """Close the fab database."""
        await self.engine.dispose()


def open_fab(fab_db: Path, cloud: CloudSettings, fab_token: str) -> FabLink:
    """The demo fab (``fab_db``), configured to sync with ``cloud`` as `DEMO_FAB`."""
    settings = FabSettings(
        database_url=f"sqlite+aiosqlite:///{fab_db}",
        artifact_dir=fab_db.parent / "fab-artifacts",
        sync=SyncSettings(
            fab_id=DEMO_FAB,
            cloud_grpc_target=f"{cloud.sync_host}:{cloud.sync_port}",
            cloud_api_url=cloud.api_url,
            token=SecretStr(fab_token),
            hash_key_file=fab_db.parent / "sync-hash.key",
            trusted_keys_dir=cloud.work_dir / "keys",
        ),
    )
    engine = make_async_engine(settings.database_url)
    return FabLink(settings, engine, session_factory(engine))


async def confirm_reviews(link: FabLink, count: int = CONFIRMED_REVIEWS) -> int:
    """The demo engineer confirms the ``count`` most uncertain open wafers; how many."""
    items = await review.list_queue(link.sessions, limit=count)
    for item in items:
        if item.predicted_class is None:
            continue
        await review.resolve(
            link.sessions,
            item_id=item.id,
            resolution=domain.Resolution(domain.ReviewOutcome.CONFIRMED),
            user=DEMO_ENGINEER,
            override=True,
        )
    return len(items)


def sync_line(summary: dict[str, Any]) -> str:
    """One line about a sync pass."""
    labels, aggregates = summary["labels"], summary["aggregates"]
    deployments = summary["deployments"]
    return (
        f"sync {DEMO_FAB}: {labels['accepted']} reviewed labels (keyed hashes, no maps; re-sent "
        f"ones stored once) and {aggregates['accepted']} daily aggregates acknowledged; plan: "
        f"{deployments['assigned']} node assignments changed, "
        f"versions fetched and verified {deployments['registered'] or '-'}"
    )


async def drift_report(
    http: httpx.AsyncClient, root: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """POST /analytics/drift/compute (as an ML engineer), print it, save its plot."""
    response = await http.post("/analytics/drift/compute")
    response.raise_for_status()
    stored: dict[str, Any] = response.json()
    progress(f"drift report {stored['id']} (POST /analytics/drift/compute):")
    for line in drift_service.summary(stored["report"]):
        progress(f"  {line}")
    plot = await http.get("/analytics/drift.png")
    plot.raise_for_status()
    (root / "drift.png").write_bytes(plot.content)
    progress(f"  plot of each signal per day: {root / 'drift.png'}")
    return stored


async def sync_and_drift(
    link: FabLink, http: httpx.AsyncClient, root: Path, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Verdicts, a sync pass, then the drift report (which may start retraining)."""
    confirmed = await confirm_reviews(link)
    progress(f"{DEMO_ENGINEER} confirms the {confirmed} most uncertain wafers at the fab")
    progress(sync_line(await link.sync()))
    stored = await drift_report(http, root, progress)
    for job_id in stored["job_ids"]:
        progress(f"  PSI over the retrain threshold: the report started job {job_id}")
    if not stored["job_ids"]:
        progress("  no fab over the retrain threshold: an ML engineer retrains by hand")
    return stored


async def canary_decision(
    admin: httpx.AsyncClient,
    cloud: CloudSettings,
    link: FabLink,
    version: str,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Roll ``version`` out as a canary in the demo fab and let beat's rule decide it."""
    response = await admin.post(
        "/models/deploy",
        json={"version": version, "fab_id": DEMO_FAB, "reason": "demo: canary of the new model"},
    )
    response.raise_for_status()
    started = response.json()
    progress(
        f"rollout {started['id']}: {version} on {', '.join(started['canary_nodes'])} (canary), "
        f"{started['baseline_version']} on {', '.join(started['control_nodes'])} (control)"
    )
    progress(f"  {sync_line(await link.sync())}")
    # Beat decides every few minutes; the demo's trial window is seconds: decide once it ends.
    ends = datetime.fromisoformat(started["canary_ends_at"])
    await asyncio.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.1)
    await asyncio.to_thread(_decide, cloud)
    decided: dict[str, Any] = (await admin.get(f"/rollouts/{started['id']}")).json()
    decision = decided["decision"]
    progress(f"  decision: {decision['action']} ({decided['stage']}): {decision['reason']}")
    progress(f"  {sync_line(await link.sync())}")
    return decided


def _decide(cloud: CloudSettings) -> None:
    """What beat's rollout task does (`cloud.pipeline.celery_app`), once."""
    db = Database(cloud.db_url, cloud.db_schema)
    try:
        rollouts.evaluate_active(
            db, ModelRegistry(cloud, db), cloud.rollouts, now=datetime.now(UTC)
        )
    finally:
        db.dispose()
