"""The cloud database's engine, sessions and migrations (SQLite by default, PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from wafercore import sql

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str, schema: str | None = None) -> Engine:
    """An engine on the cloud database; PostgreSQL pools pre-ping (workers live for days)."""
    if make_url(url).get_backend_name() == "postgresql":
        return sql.make_sync_engine(url, schema, pool_size=5, max_overflow=5, pool_pre_ping=True)
    return sql.make_sync_engine(url, schema)


def migrate(url: str, schema: str | None = None) -> None:
    """Upgrade the cloud database (and PostgreSQL schema, created if missing) to the head."""
    sql.migrate(MIGRATIONS, url, schema)


def head_revision() -> str:
    """The newest migration in the code."""
    return sql.head_revision(MIGRATIONS)


class Database:
    """An engine and its sessions; one per process, built from the settings."""

    def __init__(self, url: str, schema: str | None = None) -> None:
        """Open (not migrate) the database at ``url``."""
        self.engine = make_engine(url, schema)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self._sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
