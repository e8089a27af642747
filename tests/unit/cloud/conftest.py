"""Unit fixtures of the cloud tier: its database, migrated, on a SQLite file of the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud.storage.db import Database, migrate


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    """The cloud database at the head revision, on SQLite (the single-machine default)."""
    url = f"sqlite:///{tmp_path / 'cloud.db'}"
    migrate(url)
    database = Database(url)
    yield database
    database.dispose()
