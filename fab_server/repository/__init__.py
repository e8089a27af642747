"""Data access: keyword-only functions on an ``AsyncSession`` that return domain objects.

`dialect_insert` and `is_postgres` (shared with the cloud, `wafercore.sql`) let the repositories
write one upsert for both supported databases.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from wafercore.sql import dialect_insert, is_postgres

__all__ = ["dialect_insert", "is_postgres", "records_json", "recordset_insert"]


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
