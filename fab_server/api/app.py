"""The fab server's HTTP API (FastAPI): review queue, lots, alerts, health and metrics.

Served by the same process as the gRPC FabService, on the same database sessions.

Access: ``/healthz`` and ``/metrics`` are open (load balancer, Prometheus), as are FastAPI's
OpenAPI document and its ``/docs`` pages (they describe the API, hold no data). Everything under
``/api`` needs a bearer token: any role reads and works the review queue, lots and alerts; the
admin role is needed to acknowledge alerts and for ``/api/review/admin/*`` (release or resolve
an item someone else holds).

Errors: every error response is `wafercore.web.ErrorResponse` (``{"detail": [{"type", "loc",
"msg"}]}``), listed in each operation's OpenAPI responses. A malformed request is 422 naming the
field (pydantic's, or the service's InvalidArgument), NotFound is 404, Conflict 409, a body over
``http_max_body_bytes`` 413, a request whose headers or body arrive too slowly 408 (see
`wafercore.web.deadline_protocol`), and a database that does not answer 503. Nothing a client
sends produces any other 5xx.

``/docs`` and ``/redoc`` are served from the server's own files: a fab is often offline.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.api.alerts import alerts_router
from fab_server.api.auth import BearerGate, TokenAuth
from fab_server.api.health import health_router
from fab_server.api.lots import lots_router
from fab_server.api.review import review_router
from fab_server.api.wafers import wafers_router
from fab_server.errors import Conflict, NotFound
from fab_server.services.classify import Classifier
from fab_server.services.similar import SimilarityIndex
from fab_server.settings import FabSettings
from review_ui.app import mount_ui
from wafercore.web import BodyLimit, error_response, install_error_handlers, mount_docs

logger = logging.getLogger(__name__)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return error_response(status.HTTP_404_NOT_FOUND, str(exc), loc=["path"])


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return error_response(status.HTTP_409_CONFLICT, str(exc))


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the database is unavailable; retry shortly",
        kind="database_unavailable",
        headers={"Retry-After": "5"},
    )


def create_app(
    settings: FabSettings,
    sessions: async_sessionmaker[AsyncSession],
    classifier: Classifier | None = None,
) -> FastAPI:
    """The HTTP API on ``sessions``, authenticating with ``settings.api_tokens``.

    Args:
        settings: the fab server's settings (tokens, review lease).
        sessions: session factory of the fab database (shared with the gRPC server).
        classifier: the fab's model (shared with ClassifyBatch), for novelty heatmaps; by
            default ``settings.model_dir``, loaded on first use.

    Returns:
        The ASGI app; the caller serves it (uvicorn) and owns the engine behind ``sessions``.
    """
    auth = TokenAuth(settings.api_tokens)
    app = FastAPI(
        title="Fab server",
        summary="Review queue, lot summaries, alerts, health and metrics of one fab.",
        version="1",
        docs_url=None,
        redoc_url=None,
    )
    # Added last, so it runs first: the token is checked before anything counts the body.
    app.add_middleware(BodyLimit, max_body_bytes=settings.http_max_body_bytes)
    app.add_middleware(BearerGate, auth=auth)
    mount_docs(app)
    install_error_handlers(app)
    app.include_router(health_router(sessions))
    app.include_router(review_router(settings, sessions, auth))
    app.include_router(lots_router(sessions, auth))
    app.include_router(alerts_router(sessions, auth))
    classifier = classifier or Classifier(settings.model_dir)
    index = SimilarityIndex()
    app.include_router(wafers_router(sessions, auth, classifier, index))
    # The engineers' pages under /ui/: their own sign-in (session cookie), same services.
    mount_ui(app, settings, sessions, classifier, index)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    for unavailable in (OperationalError, InterfaceError, PoolTimeout):
        app.add_exception_handler(unavailable, _database_unavailable)
    return app
