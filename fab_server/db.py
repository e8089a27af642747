"""Database engines, sessions and migrations (Alembic) for PostgreSQL and SQLite alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

MIGRATIONS = Path(__file__).parent / "migrations"


def sync_url(url: str) -> str:
    """The synchronous driver's URL for an async one (Alembic runs synchronously)."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


def _connect_args(url: str, schema: str | None) -> dict[str, Any]:
    if schema and make_url(url).get_backend_name() == "postgresql":
        return {"options": f"-c search_path={schema}"}
    return {}


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def _ensure_sqlite_dir(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def make_async_engine(url: str, schema: str | None = None) -> AsyncEngine:
    """The server's engine; SQLite gets WAL and foreign keys, PostgreSQL the schema's path."""
    _ensure_sqlite_dir(url)
    kwargs: dict[str, Any] = {"connect_args": _connect_args(url, schema)}
    if make_url(url).get_backend_name() == "postgresql":
        kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if make_url(url).get_backend_name() == "sqlite":
        _sqlite_pragmas(engine.sync_engine)
    return engine


def make_sync_engine(url: str, schema: str | None = None) -> Engine:
    """A synchronous engine on the same database (migrations, CLI tools)."""
    _ensure_sqlite_dir(url)
    engine = create_engine(sync_url(url), connect_args=_connect_args(url, schema))
    if make_url(url).get_backend_name() == "sqlite":
        _sqlite_pragmas(engine)
    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[Any]:
    """Sessions that keep loaded values after commit (the repository returns domain objects)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = None
    config.attributes["engine"] = engine
    return config


def migrate(url: str, schema: str | None = None, revision: str = "head") -> None:
    """Upgrade the database (and PostgreSQL schema, created if missing) to ``revision``."""
    engine = make_sync_engine(url, schema)
    try:
        if schema and engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        with engine.begin() as conn:
            config = _alembic_config(engine)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest migration in the code."""
    head = ScriptDirectory.from_config(_alembic_config(None)).get_current_head()  # type: ignore[arg-type]
    assert head is not None
    return head


def current_revision_sync(connection: Any) -> str | None:
    """The revision the connected database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()
