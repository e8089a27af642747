"""Migrations build the same schema on PostgreSQL as the committed snapshot, and SQLite too."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from fab_server.db import current_revision_sync, head_revision, make_sync_engine, migrate
from fab_server.schema import describe
from fab_server.settings import FabSettings

pytestmark = pytest.mark.integration

SNAPSHOT = Path(__file__).parent / "schema_snapshot.json"


def test_postgres_schema_matches_the_committed_snapshot(fab_settings: FabSettings) -> None:
    engine = make_sync_engine(fab_settings.database_url, fab_settings.db_schema)
    with engine.connect() as conn:
        live = describe(conn, fab_settings.db_schema)
        assert current_revision_sync(conn) == head_revision()
    engine.dispose()
    if os.environ.get("UPDATE_SCHEMA_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(live, indent=1, sort_keys=True) + "\n")
    assert live == json.loads(SNAPSHOT.read_text()), (
        "the migrated schema differs from schema_snapshot.json: write a migration, then "
        "refresh the snapshot with UPDATE_SCHEMA_SNAPSHOT=1"
    )


def test_migrations_are_idempotent_and_run_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}"
    migrate(url)
    migrate(url)  # a second run at head changes nothing
    engine = make_sync_engine(url)
    with engine.connect() as conn:
        assert current_revision_sync(conn) == head_revision()
        tables: dict[str, Any] = describe(conn)
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()
    snapshot = json.loads(SNAPSHOT.read_text())
    assert sorted(tables) == sorted(snapshot)
    for name, table in snapshot.items():
        assert sorted(tables[name]["columns"]) == sorted(table["columns"]), name
        assert sorted(i["name"] for i in tables[name]["indexes"]) == sorted(
            i["name"] for i in table["indexes"]
        ), name
