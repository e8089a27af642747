"""Data access: keyword-only functions on an ``AsyncSession`` that return domain objects.

Both supported databases (PostgreSQL, SQLite) have ``INSERT ... ON CONFLICT``; `dialect_insert`
picks the SQLAlchemy construct of the session's database so the repositories write one upsert
for both.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def is_postgres(session: AsyncSession) -> bool:
    """Whether the session talks to PostgreSQL (else SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: AsyncSession, entity: Any) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` into ``entity`` (an ORM class) with the database's ``ON CONFLICT`` clauses."""
    return postgresql.insert(entity) if is_postgres(session) else sqlite.insert(entity)
