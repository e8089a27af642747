"""SQL plumbing that the fab server and the cloud share: engines, SQLite pragmas, migrations.

Only the tiers that keep a database import this module (it needs SQLAlchemy and Alembic, which
the edge's install lacks). Each tier keeps its own tables and Alembic revisions; this is how
either is opened and migrated, the same on PostgreSQL and SQLite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session


def is_postgres(session: Session | AsyncSession) -> bool:
    """Whether the session talks to PostgreSQL (else SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(
    session: Session | AsyncSession, entity: Any
) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` into ``entity`` (an ORM class) with the database's ``ON CONFLICT`` clauses.

    Both supported databases have ``INSERT ... ON CONFLICT``; this picks the SQLAlchemy construct
    of the session's database so a repository writes one upsert for both.
    """
    return postgresql.insert(entity) if is_postgres(session) else sqlite.insert(entity)


def sync_url(url: str) -> str:
    """The synchronous driver's URL for an async one (Alembic runs synchronously)."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


def connect_args(url: str, schema: str | None) -> dict[str, Any]:
    """Driver arguments: PostgreSQL's search path set to ``schema``."""
    if schema and make_url(url).get_backend_name() == "postgresql":
        return {"options": f"-c search_path={schema}"}
    return {}


def sqlite_pragmas(engine: Engine) -> None:
    """WAL, foreign keys and a busy timeout on every SQLite connection of ``engine``."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite file."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def make_sync_engine(url: str, schema: str | None = None, **kwargs: Any) -> Engine:
    """A synchronous engine; SQLite gets WAL and foreign keys, PostgreSQL the schema's path."""
    ensure_sqlite_dir(url)
    engine = create_engine(sync_url(url), connect_args=connect_args(url, schema), **kwargs)
    if make_url(url).get_backend_name() == "sqlite":
        sqlite_pragmas(engine)
    return engine


def _alembic_config(migrations: Path, engine: Engine | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    config.attributes["connection"] = None
    config.attributes["engine"] = engine
    return config


def migrate(migrations: Path, url: str, schema: str | None = None, revision: str = "head") -> None:
    """Upgrade the database (and PostgreSQL schema, created if missing) to ``revision``."""
    engine = make_sync_engine(url, schema)
    try:
        if schema and engine.dialect.name == "postgresql":
            with engine.begin() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        with engine.begin() as conn:
            config = _alembic_config(migrations, engine)
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    finally:
        engine.dispose()


def head_revision(migrations: Path) -> str:
    """The newest migration in ``migrations``."""
    head = ScriptDirectory.from_config(_alembic_config(migrations, None)).get_current_head()
    assert head is not None
    return head


def current_revision_sync(connection: Any) -> str | None:
    """The revision the connected database is at (None: never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()
