"""A plain description of the live database schema, to compare against a committed snapshot."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, inspect


def describe(connection: Connection, schema: str | None = None) -> dict[str, Any]:
    """Tables with their columns (type, nullable), primary key, unique constraints and indexes."""
    insp = inspect(connection)
    tables: dict[str, Any] = {}
    for name in sorted(insp.get_table_names(schema=schema)):
        if name == "alembic_version":
            continue
        tables[name] = {
            "columns": {
                c["name"]: {"type": repr(c["type"]), "nullable": bool(c["nullable"])}
                for c in insp.get_columns(name, schema=schema)
            },
            "primary_key": insp.get_pk_constraint(name, schema=schema)["constrained_columns"],
            "unique": sorted(
                [list(u["column_names"]) for u in insp.get_unique_constraints(name, schema=schema)]
            ),
            "indexes": sorted(
                [
                    {"name": i["name"], "columns": list(i["column_names"]), "unique": i["unique"]}
                    for i in insp.get_indexes(name, schema=schema)
                    if not i.get("duplicates_constraint")  # PostgreSQL lists UNIQUE twice
                ],
                key=lambda i: str(i["name"]),
            ),
        }
    return tables
