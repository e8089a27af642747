"""Results, their maps, lots and nodes' ack state: the write path of ``StreamResults``.

Every write is one statement per batch, never one round trip per row. On PostgreSQL a batch
travels as ONE JSON parameter that ``json_to_recordset`` turns back into typed rows inside
the server: serialising it is one C-accelerated ``json.dumps``, where per-column arrays or
per-row parameters cost tens of microseconds per row in the driver. Other databases get
SQLAlchemy's multi-row ``INSERT``. Conflicts on ``(node_id, sequence)`` are skipped, which is
what makes redelivery idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, func, select, text, true
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from fab_server import domain
from fab_server.models import (
    EdgeNodeRow,
    LotRow,
    ResultConflictRow,
    ResultRow,
    WaferMapRow,
    utc,
)
from fab_server.repository import dialect_insert, is_postgres, records_json, recordset_insert
from wafercore.classes import NUM_CLASSES

# Column -> PostgreSQL type of the JSON records of the fast path.
_RESULT_RECORD: tuple[tuple[str, str], ...] = (
    ("node_id", "text"),
    ("sequence", "int8"),
    ("wafer_id", "text"),
    ("lot_id", "text"),
    ("model_version", "text"),
    ("prediction", "int2"),
    ("probabilities", "json"),
    ("confidence", "float8"),
    ("steps", "int2"),
    ("latency_ms", "float8"),
    ("novelty", "float8"),
    ("flagged", "bool"),
    ("review_reason", "int2"),
    ("die_yield", "float8"),
    ("classified_at", "timestamptz"),
    ("tested_at", "timestamptz"),
)
_MAP_RECORD: tuple[tuple[str, str], ...] = (
    ("node_id", "text"),
    ("sequence", "int8"),
    ("rows", "int4"),
    ("cols", "int4"),
    ("values", "bytea"),
)


_PG_INSERT_RESULTS = text(
    recordset_insert(
        ResultRow.__tablename__,
        _RESULT_RECORD,
        conflict=("node_id", "sequence"),
        returning="sequence",
        scalars=[("received_at", "timestamptz")],
    )
)
_PG_INSERT_MAPS = text(
    recordset_insert(
        WaferMapRow.__tablename__,
        _MAP_RECORD,
        conflict=("node_id", "sequence"),
        returning="sequence",
    )
)


def _result_row(result: domain.Result, die_yield: float | None) -> dict[str, Any]:
    return {
        "node_id": result.node_id,
        "sequence": result.sequence,
        "wafer_id": result.wafer_id,
        "lot_id": result.lot_id,
        "model_version": result.model_version,
        "prediction": result.prediction,
        "probabilities": list(result.probabilities),
        "confidence": result.confidence,
        "steps": result.steps,
        "latency_ms": result.latency_ms,
        "novelty": result.novelty,
        "flagged": result.flagged,
        "review_reason": int(result.review_reason),
        "die_yield": die_yield,
        "classified_at": result.classified_at,
        "tested_at": result.tested_at,
    }


async def insert_results(
    session: AsyncSession,
    *,
    results: Sequence[domain.Result],
    die_yields: Sequence[float | None],
    received_at: datetime,
) -> set[int]:
    """Store results that are not stored yet, in one statement.

    Args:
        session: the open transaction.
        results: valid results of ONE node, each with its node_id set.
        die_yields: per result, passing / (passing + failing) dies of its map, or None.
        received_at: when the fab server received them.

    Returns:
        The sequences stored by this call; the others were already stored (duplicates).
    """
    if not results:
        return set()
    rows = [_result_row(r, y) for r, y in zip(results, die_yields, strict=True)]
    if is_postgres(session):
        stored = await session.execute(
            _PG_INSERT_RESULTS, {"records": records_json(rows), "received_at": received_at}
        )
    else:
        for row in rows:
            row["received_at"] = received_at
        stmt = (
            sqlite_insert(ResultRow)
            .on_conflict_do_nothing(index_elements=["node_id", "sequence"])
            .returning(ResultRow.sequence)
        )
        stored = await session.execute(stmt, rows)
    return {int(seq) for seq in stored.scalars()}


async def results_by_sequence(
    session: AsyncSession, *, node_id: str, sequences: Sequence[int]
) -> dict[int, domain.Result]:
    """The stored results of one node among ``sequences`` (without maps), by sequence."""
    if not sequences:
        return {}
    rows = await session.scalars(
        select(ResultRow).where(ResultRow.node_id == node_id, ResultRow.sequence.in_(sequences))
    )
    return {row.sequence: row.to_domain() for row in rows}


async def newest_of_wafer(session: AsyncSession, *, wafer_id: str) -> tuple[str, int] | None:
    """(node_id, sequence) of the wafer's most recently received result, or None."""
    row = await session.execute(
        select(ResultRow.node_id, ResultRow.sequence)
        .where(ResultRow.wafer_id == wafer_id)
        .order_by(ResultRow.id.desc())
        .limit(1)
    )
    found = row.one_or_none()
    return None if found is None else (found[0], int(found[1]))


async def insert_conflicts(
    session: AsyncSession,
    *,
    conflicts: Sequence[tuple[domain.Result, str, Sequence[str], dict[str, Any]]],
    received_at: datetime,
) -> None:
    """Keep refused results for inspection: (result, stored wafer id, fields differing, JSON)."""
    session.add_all(
        ResultConflictRow(
            node_id=result.node_id,
            sequence=result.sequence,
            wafer_id=result.wafer_id,
            stored_wafer_id=stored_wafer_id,
            differences=list(fields),
            incoming=incoming,
            received_at=received_at,
        )
        for result, stored_wafer_id, fields, incoming in conflicts
    )
    await session.flush()


async def conflicts(
    session: AsyncSession, *, node_id: str | None = None, limit: int = 100
) -> list[domain.ResultConflict]:
    """The latest refused results, newest first (of one node, or of all)."""
    stmt = select(ResultConflictRow).order_by(ResultConflictRow.id.desc()).limit(limit)
    if node_id is not None:
        stmt = stmt.where(ResultConflictRow.node_id == node_id)
    return [row.to_domain() for row in await session.scalars(stmt)]


async def insert_maps(session: AsyncSession, *, results: Sequence[domain.Result]) -> None:
    """Store the maps of results that carry one (skipping maps already stored)."""
    postgres = is_postgres(session)
    rows: list[dict[str, Any]] = [
        {
            "node_id": r.node_id,
            "sequence": r.sequence,
            "rows": r.wafer_map.rows,
            "cols": r.wafer_map.cols,
            # JSON has no bytes: bytea's hex input format.
            "values": "\\x" + r.wafer_map.values.hex() if postgres else r.wafer_map.values,
        }
        for r in results
        if r.wafer_map is not None
    ]
    if not rows:
        return
    if postgres:
        await session.execute(_PG_INSERT_MAPS, {"records": records_json(rows)})
    else:
        stmt = sqlite_insert(WaferMapRow).on_conflict_do_nothing(
            index_elements=["node_id", "sequence"]
        )
        await session.execute(stmt, rows)


async def upsert_lots(
    session: AsyncSession, *, spans: Mapping[str, tuple[datetime, datetime]]
) -> None:
    """Create lots or widen their first/last seen times to cover ``spans`` (lot -> first, last).

    Lots are written in sorted order so that concurrent batches touching the same lots lock
    their rows in the same order and cannot deadlock.
    """
    if not spans:
        return
    rows = [
        {"lot_id": lot, "first_seen": first, "last_seen": last, "excursion": False}
        for lot, (first, last) in sorted(spans.items())
    ]
    stmt = dialect_insert(session, LotRow).values(rows)
    # PostgreSQL's two-argument min/max are least/greatest; SQLite's are min/max.
    least, greatest = (func.least, func.greatest) if is_postgres(session) else (func.min, func.max)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["lot_id"],
            set_={
                "first_seen": least(LotRow.first_seen, stmt.excluded.first_seen),
                "last_seen": greatest(LotRow.last_seen, stmt.excluded.last_seen),
            },
        )
    )


async def advance_node(
    session: AsyncSession, *, node_id: str, stored_up_to: int, now: datetime
) -> int:
    """Record that ``node_id`` has every sequence up to ``stored_up_to`` stored; see it now.

    Returns:
        The node's acked sequence afterwards: it never decreases.
    """
    stmt = dialect_insert(session, EdgeNodeRow).values(
        node_id=node_id,
        first_seen=now,
        last_seen=now,
        acked_sequence=stored_up_to,
        installed_version="",
        previous_version="",
    )
    greatest = func.greatest if is_postgres(session) else func.max
    upsert = stmt.on_conflict_do_update(
        index_elements=["node_id"],
        set_={
            "acked_sequence": greatest(EdgeNodeRow.acked_sequence, stmt.excluded.acked_sequence),
            "last_seen": stmt.excluded.last_seen,
        },
    ).returning(EdgeNodeRow.acked_sequence)
    return int((await session.execute(upsert)).scalar_one())


async def node_acked_sequence(session: AsyncSession, *, node_id: str) -> int:
    """The highest sequence of ``node_id`` acked so far; 0 for a node never seen."""
    acked = await session.scalar(
        select(EdgeNodeRow.acked_sequence).where(EdgeNodeRow.node_id == node_id)
    )
    return int(acked or 0)


def _count_where(
    condition: ColumnElement[bool] | InstrumentedAttribute[bool],
) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


async def lot_summary(session: AsyncSession, *, lot_id: str) -> domain.LotSummary | None:
    """Counts per class, mean die yield and flagged count of a lot, with its excursion state.

    One statement: the aggregate reads the lot's results through ``ix_results_lot_id`` and is
    joined to the lot's row, so its cost grows with the lot, not with the table.

    Returns:
        None when the lot is unknown.
    """
    aggregate = (
        select(
            *(_count_where(ResultRow.prediction == k).label(f"c{k}") for k in range(NUM_CLASSES)),
            func.count().label("total"),
            func.avg(ResultRow.die_yield).label("die_yield"),
            _count_where(ResultRow.flagged).label("flagged"),
        )
        .where(ResultRow.lot_id == lot_id)
        .subquery()
    )
    stmt = (
        select(
            LotRow.first_seen,
            LotRow.last_seen,
            LotRow.excursion,
            LotRow.excursion_reason,
            aggregate,
        )
        .join(aggregate, true())
        .where(LotRow.lot_id == lot_id)
    )
    row = (await session.execute(stmt)).mappings().one_or_none()
    if row is None:
        return None
    counts = tuple(int(row[f"c{k}"]) for k in range(NUM_CLASSES))
    patterns = counts[1:]
    dominant = 1 + patterns.index(max(patterns)) if max(patterns) > 0 else 0
    return domain.LotSummary(
        lot_id=lot_id,
        class_counts=counts,
        total_wafers=int(row["total"]),
        die_yield=None if row["die_yield"] is None else float(row["die_yield"]),
        flagged_count=int(row["flagged"]),
        dominant_pattern=dominant,
        excursion=bool(row["excursion"]),
        excursion_reason=row["excursion_reason"],
        first_seen=utc(row["first_seen"]),
        last_seen=utc(row["last_seen"]),
    )
