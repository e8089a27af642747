"""Integration fixtures: a fab server's settings on its own migrated PostgreSQL schema per test.

Shared by the fab server's and the edge node's integration tests (edge nodes need a real fab).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fab_server.db import migrate
from fab_server.settings import FabSettings


def _async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def pg_schema(harness: Any) -> Iterator[str]:
    """A fresh, migrated schema in the real test database, dropped afterwards."""
    schema = f"fab_{uuid.uuid4().hex[:12]}"
    migrate(_async_url(harness.postgres_url), schema=schema)
    yield schema
    with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def fab_settings(harness: Any, pg_schema: str, tmp_path: Path) -> FabSettings:
    """Settings of a fab server on its own PostgreSQL schema, ports picked by the OS."""
    return FabSettings(
        database_url=_async_url(harness.postgres_url),
        db_schema=pg_schema,
        grpc_port=0,
        http_port=0,
        artifact_dir=tmp_path / "artifacts",
    )
