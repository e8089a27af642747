"""The cloud's REST API (FastAPI): retraining jobs, registered models, their artifacts,
aliases and deployments.

Access: ``/healthz`` is open, as are the OpenAPI document and its ``/docs`` and ``/redoc``
pages. Every other route needs a bearer token (`wafer-cloud tokens add`) whose role is at
least the route's: viewer reads, ml-engineer starts and cancels jobs and moves ``candidate``,
admin moves ``champion`` and ``previous`` and deploys (see `cloud.api.auth`).

Errors: every error response is `wafercore.web.ErrorResponse` (``{"detail": [{"type", "loc",
"msg"}]}``). A malformed request is 422 naming the field (pydantic's, or the services'
`wafercore.errors.InvalidInput`), `cloud.errors.NotFound` 404, `cloud.errors.Conflict` 409,
a body over `MAX_BODY_BYTES` 413,
a request that arrives too slowly 408 (`wafercore.web.deadline_protocol`), and a database,
broker or registry that does not answer 503.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.concurrency import run_in_threadpool

from cloud.api.analytics import analytics_router
from cloud.api.auth import BearerGate, TokenAuth, unavailable_response
from cloud.api.health import health_router
from cloud.api.models import models_router
from cloud.api.resources import Resources
from cloud.api.rollouts import rollouts_router
from cloud.api.training import training_router
from cloud.errors import Conflict, NotFound
from cloud.settings import CloudSettings
from cloud.sync.server import start_sync_server
from wafercore.web import BodyLimit, error_response, install_error_handlers, mount_docs

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
"""Largest request body: a trigger's overrides or a deployment's node list, never a file."""
HEADER_TIMEOUT_S = 10.0
"""A request's headers must arrive within this long (`wafercore.web.deadline_protocol`)."""
BODY_TIMEOUT_S = 30.0
"""A request's body must arrive within this long of its headers."""


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return error_response(status.HTTP_404_NOT_FOUND, str(exc), loc=["path"])


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return error_response(status.HTTP_409_CONFLICT, str(exc))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("%s %s: backend unavailable: %s", request.method, request.url.path, exc)
    return unavailable_response()


async def _registry_failed(request: Request, exc: Exception) -> JSONResponse:
    # MLflow's client wraps every failure in one exception type: a server it cannot reach
    # (the requests error it was raised from) is a 503; anything else is a fault here.
    from requests.exceptions import RequestException

    if isinstance(exc.__cause__ or exc.__context__, RequestException):
        return await _unavailable(request, exc)
    logger.error("%s %s: registry error", request.method, request.url.path, exc_info=exc)
    return error_response(status.HTTP_500_INTERNAL_SERVER_ERROR, "internal server error")


def _registry_error() -> type[Exception]:
    """What MLflow's client raises (imported here: MLflow is slow to import)."""
    from mlflow.exceptions import MlflowException

    return MlflowException


def _unavailable_errors() -> tuple[type[Exception], ...]:
    """What a backend that does not answer raises: the database, Redis, the MLflow server."""
    from kombu.exceptions import OperationalError as BrokerUnavailable
    from redis.exceptions import ConnectionError as RedisUnavailable
    from requests.exceptions import ConnectionError as HttpUnavailable

    return (
        OperationalError,
        InterfaceError,
        PoolTimeout,
        BrokerUnavailable,
        RedisUnavailable,
        HttpUnavailable,
    )


def create_app(settings: CloudSettings) -> FastAPI:
    """The cloud API; its database, registry and dispatcher are opened when it starts.

    Starting it (its lifespan: uvicorn, or ``with TestClient(app)``) migrates the cloud
    database to the head, connects to the registry and the broker and, unless
    ``settings.sync_enabled`` is off, starts the CloudSync gRPC server on the same database
    (its port in ``app.state.sync_port``); stopping closes them.

    Args:
        settings: the cloud tier's settings.

    Returns:
        The ASGI app.
    """
    resources = Resources(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(resources.open)
        sync_server = None
        try:
            if settings.sync_enabled:  # CloudSync (gRPC) beside the API, on the same resources
                sync_server, app.state.sync_port = await start_sync_server(
                    settings, resources.database(), resources.model_registry()
                )
            yield
        finally:
            if sync_server is not None:
                await sync_server.stop(5)
            await run_in_threadpool(resources.close)

    auth = TokenAuth(resources)
    app = FastAPI(
        title="Wafer cloud",
        summary="Retraining jobs, the model registry, signed artifacts and deployments.",
        version="1",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.resources = resources
    # Added last, so it runs first: the token is checked before anything counts the body.
    app.add_middleware(BodyLimit, max_body_bytes=MAX_BODY_BYTES)
    unavailable = _unavailable_errors()
    app.add_middleware(BearerGate, auth=auth, unavailable=unavailable)
    mount_docs(app)
    install_error_handlers(app)
    app.include_router(health_router(resources))
    app.include_router(training_router(resources, auth))
    app.include_router(models_router(resources, auth))
    app.include_router(rollouts_router(resources, auth))
    app.include_router(analytics_router(resources, auth))
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(Conflict, _conflict)
    for error in unavailable:
        app.add_exception_handler(error, _unavailable)
    app.add_exception_handler(_registry_error(), _registry_failed)
    return app
