"""Fixtures of the cloud API's tests: the API served by uvicorn in a thread on the test's
settings (its lifespan opens the database, the registry on the session's `mlflow server` and
the dispatcher on the local Redis), and bearer tokens issued in its database."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

import httpx
import pytest

from cloud.api.server import ApiServer
from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry
from cloud.services.tokens import add_token
from cloud.settings import CloudSettings
from cloud.storage import aggregates
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.db import Database
from wafercore.shipped import shipped_model_dir

SERVER_START_S = 120.0
"""Starting or stopping the API (migration check, registry client) on a loaded machine."""
REQUEST_TIMEOUT_S = 120.0
"""One request; the first artifact download goes through the MLflow server."""


@pytest.fixture
def cloud_db(cloud_settings: CloudSettings) -> Iterator[Database]:
    """The test's cloud database (migrated by ``cloud_schema``)."""
    db = Database(cloud_settings.db_url, cloud_settings.db_schema)
    yield db
    db.dispose()


@pytest.fixture
def issue(cloud_db: Database) -> Callable[..., str]:
    """``issue(role, user=None)``: a new bearer token with ``role``, as `tokens add` makes."""

    def make(role: str, user: str | None = None) -> str:
        return add_token(cloud_db, user=user or f"{role}-user", role=role)

    return make


@pytest.fixture
def headers(issue: Callable[..., str]) -> Callable[..., dict[str, str]]:
    """``headers(role, user=None)``: an Authorization header with a new token of ``role``."""

    def make(role: str, user: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {issue(role, user)}"}

    return make


@pytest.fixture
def serve_api() -> Iterator[Callable[[CloudSettings], str]]:
    """``serve_api(settings)``: the base URL of the API on ``settings``, served by uvicorn on
    its own event loop in a thread until the test ends."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cloud-api", daemon=True)
    thread.start()
    servers: list[ApiServer] = []

    def serve(settings: CloudSettings) -> str:
        server = ApiServer(settings)
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(SERVER_START_S)
        servers.append(server)
        return f"http://127.0.0.1:{server.port}"

    try:
        yield serve
    finally:
        for server in servers:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(SERVER_START_S)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SERVER_START_S)
        loop.close()


@pytest.fixture
def api_url(cloud_settings: CloudSettings, serve_api: Callable[[CloudSettings], str]) -> str:
    """The base URL of the API on the test's settings."""
    return serve_api(cloud_settings)


@pytest.fixture
def api(api_url: str) -> Iterator[httpx.Client]:
    """An HTTP client of the served API."""
    with httpx.Client(base_url=api_url, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


@pytest.fixture
def two_versions(cloud_settings: CloudSettings, cloud_db: Database) -> ModelRegistry:
    """A registry holding ``cnn-v1.0.0`` as champion and ``cnn-v1.1.0`` beside it."""
    registry = ModelRegistry(cloud_settings, cloud_db)
    for version, alias in (("cnn-v1.0.0", "champion"), ("cnn-v1.1.0", None)):
        import_model_folder(
            registry,
            cloud_settings,
            shipped_model_dir(version),
            actor="cli:importer",
            reason="imported for the test",
            alias=alias,
            golden=16,
        )
    return registry


@pytest.fixture
def report_day(cloud_db: Database) -> Callable[..., None]:
    """``report_day(fab, nodes, class_counts, flagged=, reviewed=, correct=)``: today's
    aggregates of ``nodes`` running the champion, as ``fab`` uploads them."""

    def report(
        fab: str,
        nodes: Sequence[str],
        class_counts: Sequence[int],
        *,
        flagged: int,
        reviewed: int,
        correct: int,
    ) -> None:
        now = datetime.now(UTC)
        rows = [
            DailyAggregate(
                fab_id=fab,
                node_id=node,
                day=now.date(),
                model_version="cnn-v1.0.0",
                class_counts=tuple(class_counts),
                wafers_classified=sum(class_counts),
                flagged_count=flagged,
                reviewed_count=reviewed,
                reviewed_correct_count=correct,
                latency_p50_ms=3.0,
                latency_p90_ms=6.0,
                latency_p99_ms=12.0,
                avg_recursion_steps=3.0,
            )
            for node in nodes
        ]
        with cloud_db.session() as session:
            aggregates.upsert_aggregates(session, aggregates=rows, now=now)

    return report
