"""Data access: keyword-only functions on an ``AsyncSession`` that return domain objects.

Both supported databases (PostgreSQL, SQLite) have ``INSERT ... ON CONFLICT``; `dialect_insert`
picks the SQLAlchemy construct of the session's database so the repositories write one upsert
for both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def is_postgres(session: AsyncSession) -> bool:
    """Whether the session talks to PostgreSQL (else SQLite)."""
    return session.get_bind().dialect.name == "postgresql"


def dialect_insert(session: AsyncSession, entity: Any) -> postgresql.Insert | sqlite.Insert:
    """``INSERT`` into ``entity`` (an ORM class) with the database's ``ON CONFLICT`` clauses."""
    return postgresql.insert(entity) if is_postgres(session) else sqlite.insert(entity)


def recordset_insert(
    table: str,
    record: Sequence[tuple[str, str]],
    *,
    conflict: Sequence[str],
    returning: str,
    scalars: Sequence[tuple[str, str]] = (),
) -> str:
    """PostgreSQL: ``INSERT ... SELECT FROM json_to_recordset(:records) ON CONFLICT DO NOTHING``.

    One parameter carries every row as JSON: the statement text is the same for any batch size
    (no per-row placeholders to parse), which makes bulk writes several times cheaper in Python.

    Args:
        table: the table.
        record: (column, PostgreSQL type) of what each JSON object carries.
        conflict: the unique columns whose duplicates are skipped.
        returning: the column returned for each inserted row.
        scalars: (column, type) bound once for all rows (``:name``).
    """
    # Quoted: ``values`` and ``rows`` are SQL keywords.
    names = ", ".join(f'"{name}"' for name, _ in record)
    definition = ", ".join(f'"{name}" {kind}' for name, kind in record)
    columns = ", ".join([names, *(name for name, _ in scalars)])
    selected = ", ".join(["u.*", *(f"CAST(:{name} AS {kind})" for name, kind in scalars)])
    return (
        f"INSERT INTO {table} ({columns}) SELECT {selected} "
        f"FROM json_to_recordset(CAST(:records AS json)) AS u({definition}) "
        f"ON CONFLICT ({', '.join(conflict)}) DO NOTHING RETURNING {returning}"
    )


def records_json(rows: Sequence[dict[str, Any]]) -> str:
    """The ``:records`` parameter of a `recordset_insert` (datetimes as ISO 8601)."""
    return json.dumps(rows, separators=(",", ":"), default=_iso)


def _iso(value: Any) -> str:
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
