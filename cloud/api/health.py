"""``/healthz``: open to load balancers, no token.

200 only when the cloud database answers and is at the migration this code expects, else 503:
an API that cannot read tokens or jobs should take no traffic.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from cloud.api.resources import NotStartedError, Resources
from cloud.storage.db import head_revision
from wafercore.sql import current_revision_sync
from wafercore.web.health import HEALTH_RESPONSES, HealthOut, database_health

logger = logging.getLogger(__name__)


def health_router(resources: Resources) -> APIRouter:
    """The open health route."""
    router = APIRouter(tags=["operations"])
    expected = head_revision()

    @router.get(
        "/healthz",
        response_model=HealthOut,
        responses=HEALTH_RESPONSES,
    )
    def healthz() -> JSONResponse:
        """200 when the database is reachable and migrated to this code's head, else 503."""
        try:
            with resources.database().engine.connect() as connection:
                revision = current_revision_sync(connection)
        except (SQLAlchemyError, OSError, NotStartedError) as exc:
            logger.warning("health check: database unreachable: %s", exc)
            return database_health(None, expected, reachable=False)
        return database_health(revision, expected, reachable=True)

    return router
