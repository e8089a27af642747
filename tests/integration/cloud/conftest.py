"""Integration fixtures of the cloud tier: a real `mlflow server` (one per session), the cloud
database on its own migrated PostgreSQL schema per test, and settings that point at both.

Each test gets its own registered model name and Celery queue, so tests sharing the server
and the Redis broker never see each other's versions or tasks.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cloud.registry.server import start_server, wait_healthy
from cloud.settings import CloudSettings
from cloud.storage.db import migrate

MLFLOW_START_S = 180.0
"""`mlflow server` takes ~15 s to start on an idle machine; far more on a loaded 2-core one."""


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of a real `mlflow server` (SQLite store, local artifact root), for the session."""
    work = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    process = start_server(CloudSettings(work_dir=work), "127.0.0.1", port)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(uri, MLFLOW_START_S, process)
        yield uri
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except Exception:
            process.kill()
            process.wait()


@pytest.fixture
def cloud_schema(harness: Any) -> Iterator[str]:
    """A fresh, migrated cloud schema in the real test database, dropped afterwards."""
    schema = f"cloud_{uuid.uuid4().hex[:12]}"
    migrate(_psycopg_url(harness.postgres_url), schema=schema)
    yield schema
    with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def cloud_settings(
    harness: Any, cloud_schema: str, mlflow_uri: str, tmp_path: Path
) -> CloudSettings:
    """Settings of a cloud tier on PostgreSQL, the session's MLflow server and the local Redis,
    with a registered model and a Celery queue of its own."""
    tag = uuid.uuid4().hex[:8]
    return CloudSettings(
        work_dir=tmp_path / "cloud",
        database_url=_psycopg_url(harness.postgres_url),
        db_schema=cloud_schema,
        mlflow_tracking_uri=mlflow_uri,
        registered_model=f"wafer-classifier-{tag}",
        broker_url=harness.redis_url,
        result_backend=harness.redis_url,
        task_queue=f"wafer-cloud-test-{tag}",
        api_port=0,
        sync_port=0,
    )
