"""Lot summaries on real PostgreSQL: one statement, read through the lot index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from fab_server.db import make_async_engine, session_factory
from fab_server.services import lots
from fab_server.settings import FabSettings

pytestmark = pytest.mark.integration

ROWS = 40_000
LOT_SIZE = 25


@pytest_asyncio.fixture
async def engine(fab_settings: FabSettings) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    yield engine
    await engine.dispose()


def _fill(harness: Any, schema: str) -> None:
    """ROWS results in lots of 25 (LOT-0 .. LOT-1599), every 10th with a die yield."""
    with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute(
            "INSERT INTO results (node_id, sequence, wafer_id, lot_id, model_version, prediction,"
            " probabilities, confidence, steps, latency_ms, flagged, review_reason, die_yield,"
            " classified_at, received_at) "
            "SELECT 'edge-1', g, 'W' || g, 'LOT-' || (g / %(lot)s), 'trm-v1.0.0', g %% 9,"
            " '[0.2,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]', 0.9, 1, 3.0, g %% 7 = 0, 0,"
            " CASE WHEN g %% 10 = 0 THEN 0.5 + (g %% 3) * 0.25 END,"
            " now() - make_interval(secs => %(rows)s - g), now() "
            "FROM generate_series(0, %(rows)s - 1) AS g",
            {"lot": LOT_SIZE, "rows": ROWS},
        )
        conn.execute(
            "INSERT INTO lots (lot_id, first_seen, last_seen, excursion, excursion_reason) "
            "SELECT lot_id, min(classified_at), max(classified_at), false, '' "
            "FROM results GROUP BY lot_id"
        )
        conn.execute("ANALYZE")


@pytest.mark.asyncio
async def test_summary_matches_the_rows_and_reads_only_the_lot_through_its_index(
    engine: AsyncEngine, harness: Any, pg_schema: str
) -> None:
    _fill(harness, pg_schema)
    statements: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    summary = await lots.lot_summary(session_factory(engine), lot_id="LOT-40")
    event.remove(engine.sync_engine, "before_cursor_execute", capture)

    members = range(40 * LOT_SIZE, 41 * LOT_SIZE)
    assert summary.total_wafers == LOT_SIZE
    assert list(summary.class_counts) == [sum(1 for g in members if g % 9 == k) for k in range(9)]
    assert summary.flagged_count == sum(1 for g in members if g % 7 == 0)
    known = [0.5 + (g % 3) * 0.25 for g in members if g % 10 == 0]
    assert summary.die_yield == pytest.approx(sum(known) / len(known))

    assert len(statements) == 1  # one round trip
    statement, parameters = statements[0]
    async with engine.connect() as conn:
        plan = await conn.exec_driver_sql("EXPLAIN " + statement, parameters)
        plan_text = "\n".join(row[0] for row in plan)
        await conn.execute(text("SELECT 1"))
    assert "ix_results_lot_id" in plan_text
    assert "Seq Scan on results" not in plan_text
