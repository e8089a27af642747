"""Unit fixtures of the fab server: its database, migrated, on a SQLite file of the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.db import make_async_engine, migrate, session_factory


@pytest_asyncio.fixture
async def sessions(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on the fab database at the head revision, on SQLite (the one-machine default)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}"
    migrate(url)
    engine = make_async_engine(url)
    yield session_factory(engine)
    await engine.dispose()
