"""Edge integration fixtures: a real fab server on its own migrated PostgreSQL schema.

``pg_schema``, ``fab_settings``, ``enrol`` and ``wait_until`` come from
``tests/integration/conftest.py``. These read the fab's tables directly, as an auditor would,
build outbox records as the edge's classify service writes them, and give the test's node
(`NODE`) a token the fab issued, as ``wafer-fab nodes add`` does.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from pydantic import SecretStr

from edge.settings import EdgeSettings
from waferplatform.v1 import common_pb2

NODE = "edge-it-01"


class FabTables:
    """Reads the fab's tables with plain SQL (what the fab really stored).

    One connection for the test: the fab under test shares the event loop with the polling,
    so each check must cost well under a millisecond.
    """

    def __init__(self, url: str, schema: str) -> None:
        self._conn = psycopg.connect(url, autocommit=True)
        self._conn.execute(f'SET search_path TO "{schema}"')

    def close(self) -> None:
        self._conn.close()

    def _rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def sequences(self, node_id: str = NODE) -> list[int]:
        """Every stored sequence of the node, in order, repeats included."""
        rows = self._rows("SELECT sequence FROM results WHERE node_id = %s ORDER BY 1", node_id)
        return [int(r[0]) for r in rows]

    def count(self, node_id: str = NODE) -> int:
        """Results stored for the node."""
        return int(self._rows("SELECT count(*) FROM results WHERE node_id = %s", node_id)[0][0])

    def tested_at(self, node_id: str = NODE) -> list[tuple[str, datetime | None]]:
        """(wafer_id, the station's test time) of the node's results, by sequence."""
        rows = self._rows(
            "SELECT wafer_id, tested_at FROM results WHERE node_id = %s ORDER BY sequence", node_id
        )
        return [(str(w), t) for w, t in rows]

    def maps(self, node_id: str = NODE) -> int:
        """Wafer maps stored for the node's results."""
        return int(self._rows("SELECT count(*) FROM wafer_maps WHERE node_id = %s", node_id)[0][0])

    def metrics(self, node_id: str = NODE) -> list[dict[str, Any]]:
        """The node's stored monitoring windows, oldest first."""
        cursor = self._conn.execute(
            "SELECT * FROM edge_metrics WHERE node_id = %s ORDER BY window_end", (node_id,)
        )
        names = [c.name for c in cursor.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


@pytest.fixture
def fab_tables(harness: Any, pg_schema: str) -> Iterator[FabTables]:
    """The fab's tables in this test's schema."""
    tables = FabTables(harness.postgres_url, pg_schema)
    yield tables
    tables.close()


@pytest.fixture
def free_port() -> int:
    """A TCP port nothing listens on (for a fab that starts later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _record(index: int) -> bytes:
    """A result as the classify service appends it: a map, no node_id and no sequence."""
    prediction = index % 9
    probabilities = [0.02] * 9
    probabilities[prediction] = 0.84
    result = common_pb2.Classification(
        wafer_id=f"WF-{index:06d}",
        lot_id=f"LOT-{index // 25:04d}",
        class_probabilities=probabilities,
        prediction=prediction,
        confidence=0.84,
        recursion_steps_used=1 + index % 3,
        inference_latency_ms=6.5,
        model_version="trm-v1.0.0",
        wafer_map=common_pb2.WaferMap(rows=26, cols=26, values=bytes([0, 1, 0, 2]) * 169),
    )
    result.classified_at.GetCurrentTime()
    return bytes(result.SerializeToString())


@pytest.fixture
def results() -> Callable[..., list[bytes]]:
    """``results(n, start=0)``: n valid outbox records (wafers start .. start + n - 1)."""
    return lambda count, start=0: [_record(i) for i in range(start, start + count)]


@pytest_asyncio.fixture
async def node_token(enrol: Callable[[str], Awaitable[str]]) -> str:
    """The token the fab of this test issued to `NODE`."""
    return await enrol(NODE)


@pytest.fixture
def edge_settings(tmp_path: Path, node_token: str) -> Callable[..., EdgeSettings]:
    """``edge_settings(port, **overrides)``: the node `NODE` of this test talking to
    127.0.0.1:port with its token."""

    def make(port: int, **overrides: Any) -> EdgeSettings:
        values: dict[str, Any] = {
            "node_id": NODE,
            "fab_address": f"127.0.0.1:{port}",
            "node_token": SecretStr(node_token),
            "work_dir": tmp_path / "edge",
            "outbox_sync": "normal",
            "uplink_batch": 200,
            "uplink_backoff_initial_s": 0.05,
            "uplink_backoff_max_s": 0.5,
        }
        values.update(overrides)
        return EdgeSettings(**values)

    return make
