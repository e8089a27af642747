"""``/healthz`` and ``/metrics``: open to the load balancer and Prometheus, no token.

``/healthz`` is 200 only when the database answers and its schema is at the migration this code
expects; otherwise 503, so a server whose database is down or not migrated takes no traffic.
``/metrics`` serves the process's default Prometheus registry, with the review queue's depth
per state counted at scrape time.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.db import current_revision_sync, head_revision
from fab_server.services import review
from wafercore.web.health import HEALTH_RESPONSES, HealthOut, database_health

logger = logging.getLogger(__name__)

# A health check or scrape that waits longer than this on the database reports it unavailable.
DB_TIMEOUT_S = 5.0

REVIEW_QUEUE_DEPTH = Gauge(
    "fab_review_queue_depth",
    "Review items per state at scrape time (a lapsed claim counts as open).",
    ["state"],
)


async def _database_revision(sessions: async_sessionmaker[AsyncSession]) -> str | None:
    async with sessions() as session:
        connection = await session.connection()
        return await connection.run_sync(current_revision_sync)


def health_router(sessions: async_sessionmaker[AsyncSession]) -> APIRouter:
    """The open routes: health and metrics."""
    router = APIRouter(tags=["operations"])
    expected = head_revision()

    @router.get(
        "/healthz",
        response_model=HealthOut,
        responses=HEALTH_RESPONSES,
    )
    async def healthz() -> JSONResponse:
        """200 when the database is reachable and migrated to this code's head, else 503."""
        try:
            revision = await asyncio.wait_for(_database_revision(sessions), DB_TIMEOUT_S)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            logger.warning("health check: database unreachable: %s", exc)
            return database_health(None, expected, reachable=False)
        return database_health(revision, expected, reachable=True)

    @router.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        """Prometheus text exposition of the default registry."""
        try:
            depth = await asyncio.wait_for(review.queue_depth(sessions), DB_TIMEOUT_S)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            # No figure beats a stale one: the series vanish and absent() alerts can fire.
            logger.warning("metrics: review queue depth unavailable: %s", exc)
            REVIEW_QUEUE_DEPTH.clear()
        else:
            for state, count in depth.items():
                REVIEW_QUEUE_DEPTH.labels(state=state.value).set(count)
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router
