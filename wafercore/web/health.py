"""The readiness answer of every API with a database: reachable, and migrated to the code's head.

The fab server and the cloud serve the same ``/healthz`` body, so one probe config fits both.
"""

from __future__ import annotations

from typing import Literal

from fastapi import status
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class HealthOut(BaseModel):
    """Whether the server can serve: database reachable and schema at the code's migration."""

    status: Literal["ok", "unavailable"]
    database: Literal["ok", "unreachable", "not migrated"]
    revision: str | None = None
    expected_revision: str


HEALTH_RESPONSES: dict[int | str, dict[str, object]] = {
    503: {"model": HealthOut, "description": "Not ready to serve."}
}
"""The ``responses`` of a ``/healthz`` route, for its OpenAPI document."""


def database_health(revision: str | None, expected: str, *, reachable: bool) -> JSONResponse:
    """200 when the database answered at ``expected``; else 503 saying what is wrong.

    Args:
        revision: the database's Alembic revision (None: never migrated or unreachable).
        expected: the newest revision in the code.
        reachable: whether the database answered at all.
    """
    if not reachable:
        body = HealthOut(status="unavailable", database="unreachable", expected_revision=expected)
    elif revision != expected:
        body = HealthOut(
            status="unavailable",
            database="not migrated",
            revision=revision,
            expected_revision=expected,
        )
    else:
        body = HealthOut(status="ok", database="ok", revision=revision, expected_revision=expected)
    code = status.HTTP_200_OK if body.status == "ok" else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body.model_dump(), code)
