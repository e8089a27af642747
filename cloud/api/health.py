"""``/healthz``: open to load balancers, no token.

200 only when the cloud database answers and is at the migration this code expects, else 503:
an API that cannot read tokens or jobs should take no traffic.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from cloud.api.resources import NotStartedError, Resources
from cloud.api.schemas import HealthOut
from cloud.storage.db import head_revision
from wafercore.sql import current_revision_sync

logger = logging.getLogger(__name__)


def health_router(resources: Resources) -> APIRouter:
    """The open health route."""
    router = APIRouter(tags=["operations"])
    expected = head_revision()

    @router.get(
        "/healthz",
        response_model=HealthOut,
        responses={503: {"model": HealthOut, "description": "Not ready to serve."}},
    )
    def healthz() -> JSONResponse:
        """200 when the database is reachable and migrated to this code's head, else 503."""
        try:
            with resources.database().engine.connect() as connection:
                revision = current_revision_sync(connection)
        except (SQLAlchemyError, OSError, NotStartedError) as exc:
            logger.warning("health check: database unreachable: %s", exc)
            body = HealthOut(
                status="unavailable", database="unreachable", expected_revision=expected
            )
            return JSONResponse(body.model_dump(), status.HTTP_503_SERVICE_UNAVAILABLE)
        if revision != expected:
            body = HealthOut(
                status="unavailable",
                database="not migrated",
                revision=revision,
                expected_revision=expected,
            )
            return JSONResponse(body.model_dump(), status.HTTP_503_SERVICE_UNAVAILABLE)
        body = HealthOut(status="ok", database="ok", revision=revision, expected_revision=expected)
        return JSONResponse(body.model_dump())

    return router
