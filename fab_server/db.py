"""Database engines, sessions and migrations (Alembic) for PostgreSQL and SQLite alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from wafercore import sql
from wafercore.sql import current_revision_sync, make_sync_engine, sync_url

__all__ = [
    "current_revision_sync",
    "head_revision",
    "make_async_engine",
    "make_sync_engine",
    "migrate",
    "session_factory",
    "sync_url",
]

MIGRATIONS = Path(__file__).parent / "migrations"


def make_async_engine(url: str, schema: str | None = None) -> AsyncEngine:
    """The server's engine; SQLite gets WAL and foreign keys, PostgreSQL the schema's path."""
    sql.ensure_sqlite_dir(url)
    kwargs: dict[str, Any] = {"connect_args": sql.connect_args(url, schema)}
    if make_url(url).get_backend_name() == "postgresql":
        kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if make_url(url).get_backend_name() == "sqlite":
        sql.sqlite_pragmas(engine.sync_engine)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    """Sessions that keep loaded values after commit (the repository returns domain objects)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def migrate(url: str, schema: str | None = None, revision: str = "head") -> None:
    """Upgrade the fab's database (and PostgreSQL schema, created if missing) to ``revision``."""
    sql.migrate(MIGRATIONS, url, schema, revision)


def head_revision() -> str:
    """The newest migration in the code."""
    return sql.head_revision(MIGRATIONS)
