"""Benchmark: StreamResults into PostgreSQL against a raw COPY, and GetLotSummary p99 at scale.

Goals (issue 4): at least 20,000 results/s sustained over gRPC with 4 concurrent streams, at
least 0.3x a raw COPY of the same rows in the same run, and GetLotSummary p99 <= 50 ms with
10M stored results. The server runs in its own process, as in production, and does all a real
batch does (results, lots, the node's ack, review-queue entries for the ~10% low-confidence
results); the COPY writes the result rows only. Every call is authenticated as in production
(each node with the token the fab issued it, GetLotSummary with an engineer's API token), so
the lookups are part of the measured time. Every table lives in a scratch schema that is
dropped at the end.

    .venv/bin/python bench/fab_ingest.py                              # under a minute
    .venv/bin/python bench/fab_ingest.py --rows 1000000,10000000      # adds 10M (minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import grpc
import numpy as np
import psycopg
from sqlalchemy.engine import make_url

from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.rpc.convert import to_timestamp
from fab_server.rpc.server import start_grpc_server
from fab_server.services import nodes
from fab_server.settings import ApiToken, FabSettings
from waferplatform.v1 import common_pb2, fab_pb2, fab_pb2_grpc

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
ENGINEER_TOKEN = secrets.token_urlsafe(24)
"""This run's API token of the person who reads lot summaries."""
T0 = datetime(2026, 3, 1, tzinfo=UTC)
RESULT_COLUMNS = (
    "node_id, sequence, wafer_id, lot_id, model_version, prediction, probabilities, confidence,"
    " steps, latency_ms, novelty, flagged, review_reason, die_yield, classified_at, received_at"
)


@dataclass(frozen=True)
class Row:
    """One synthetic result, the same for the gRPC run and the COPY run."""

    node_id: str
    sequence: int
    lot_id: str
    prediction: int
    probabilities: tuple[float, ...]
    confidence: float
    steps: int
    classified_at: datetime


def _rows(node_id: str, count: int, lot_size: int, rng: random.Random) -> list[Row]:
    """A node's results: lots of ``lot_size``, about 10% below the review threshold."""
    rows = []
    for s in range(1, count + 1):
        prediction = rng.choice((0, 0, 0, 0, 1, 3, 4, 5, 7, 8))
        confident = rng.random() > 0.1
        top = 0.92 if confident else 0.44
        probabilities = [(1 - top) / 8] * 9
        probabilities[prediction] = top
        rows.append(
            Row(
                node_id=node_id,
                sequence=s,
                lot_id=f"{node_id}-LOT-{s // lot_size}",
                prediction=prediction,
                probabilities=tuple(probabilities),
                confidence=top,
                steps=1 if confident else 4,
                classified_at=T0 + timedelta(milliseconds=100 * s),
            )
        )
    return rows


def _batches(rows: Sequence[Row], size: int) -> list[fab_pb2.ResultBatch]:
    batches = []
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        batches.append(
            fab_pb2.ResultBatch(
                node_id=part[0].node_id,
                batch_id=f"{part[0].node_id}-{start}",
                results=[
                    common_pb2.Classification(
                        wafer_id=f"{r.node_id}-W{r.sequence}",
                        lot_id=r.lot_id,
                        node_id=r.node_id,
                        sequence=r.sequence,
                        class_probabilities=r.probabilities,
                        prediction=r.prediction,
                        confidence=r.confidence,
                        recursion_steps_used=r.steps,
                        inference_latency_ms=9.5,
                        model_version="trm-v1.0.0",
                        classified_at=to_timestamp(r.classified_at),
                    )
                    for r in part
                ],
            )
        )
    return batches


# --- the server, in its own process --------------------------------------------------------------


def _serve(settings: FabSettings, port_out: Connection, stop: Event) -> None:
    asyncio.run(_serve_async(settings, port_out, stop))


async def _serve_async(settings: FabSettings, port_out: Connection, stop: Event) -> None:
    engine = make_async_engine(settings.database_url, settings.db_schema)
    server, port = await start_grpc_server(settings, session_factory(engine), None)
    port_out.send(port)
    await asyncio.to_thread(stop.wait)
    await server.stop(grace=1.0)
    await engine.dispose()


class ServerProcess:
    """A fab gRPC server on one schema, in a child process (spawned: gRPC does not fork)."""

    def __init__(self, url: str, schema: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        receive, send = context.Pipe(duplex=False)
        settings = FabSettings(
            database_url=url,
            db_schema=schema,
            grpc_port=0,
            api_tokens=[ApiToken(token=ENGINEER_TOKEN, user="bench", role="engineer")],
        )
        self._process = context.Process(target=_serve, args=(settings, send, self._stop))
        self._process.start()
        if not receive.poll(60):
            self._process.kill()
            raise RuntimeError("the fab server did not start within 60 s")
        self.port: int = receive.recv()

    def close(self) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()


# --- measurements ------------------------------------------------------------------------------


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _enrol(url: str, schema: str, node_ids: Sequence[str]) -> dict[str, str]:
    """A token for each node, issued in the fab's database as `wafer-fab nodes add` does."""
    engine = make_async_engine(url, schema)
    try:
        sessions = session_factory(engine)
        return {n: await nodes.add_token(sessions, node_id=n) for n in node_ids}
    finally:
        await engine.dispose()


async def _stream(
    stub: fab_pb2_grpc.FabServiceStub, batches: list[fab_pb2.ResultBatch], token: str
) -> int:
    """Send a node's outbox pipelined, as the edge uplink does; return the last ack."""
    call = stub.StreamResults(metadata=_bearer(token))

    async def write() -> None:
        for batch in batches:
            await call.write(batch)
        await call.done_writing()

    writer = asyncio.create_task(write())
    acked = 0
    while (ack := await call.read()) is not grpc.aio.EOF:
        acked = ack.acked_sequence
    await writer
    return acked


async def _grpc_ingest(
    port: int, outboxes: list[list[fab_pb2.ResultBatch]], tokens: dict[str, str]
) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fab_pb2_grpc.FabServiceStub(channel)
        started = time.perf_counter()
        acked = await asyncio.gather(
            *(_stream(stub, outbox, tokens[outbox[0].node_id]) for outbox in outboxes)
        )
        elapsed = time.perf_counter() - started
    expected = [outbox[-1].results[-1].sequence for outbox in outboxes]
    if acked != expected:
        raise RuntimeError(f"acks {acked} do not cover the outboxes {expected}")
    return elapsed


async def _copy_one(dsn: str, schema: str, rows: Sequence[Row]) -> None:
    now = datetime.now(UTC)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(f'SET search_path TO "{schema}"')
        async with conn.cursor() as cursor:
            statement = f"COPY results ({RESULT_COLUMNS}) FROM STDIN"
            async with cursor.copy(statement) as copy:
                for r in rows:
                    await copy.write_row(
                        (
                            r.node_id,
                            r.sequence,
                            f"{r.node_id}-W{r.sequence}",
                            r.lot_id,
                            "trm-v1.0.0",
                            r.prediction,
                            json.dumps(r.probabilities),
                            r.confidence,
                            r.steps,
                            9.5,
                            None,
                            False,
                            0,
                            None,
                            r.classified_at,
                            now,
                        )
                    )
        await conn.commit()


async def _raw_copy(dsn: str, schema: str, per_node: list[list[Row]]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(_copy_one(dsn, schema, rows) for rows in per_node))
    return time.perf_counter() - started


def _fill(dsn: str, schema: str, rows: int, lot_size: int) -> float:
    """``rows`` results in lots of ``lot_size`` by generate_series; secondary indexes rebuilt."""
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET maintenance_work_mem = '512MB'")
        # Indexes not backing a constraint are dropped and rebuilt: one sort beats 10M inserts.
        indexes = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes i WHERE schemaname = %s "
            "AND tablename = 'results' AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
            "WHERE c.conname = i.indexname)",
            (schema,),
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        conn.execute(
            f"INSERT INTO results ({RESULT_COLUMNS}) "
            "SELECT 'bench-node-' || (g %% 8), g, 'W' || g, 'LOT-' || (g / %(lot)s), 'trm-v1.0.0',"
            " (g * 7) %% 9, '[0.6,0.05,0.05,0.05,0.05,0.05,0.05,0.05,0.05]',"
            " 0.6 + (g %% 40) / 100.0, 1 + g %% 4, 9.5, NULL, g %% 13 = 0, 0,"
            " CASE WHEN g %% 3 = 0 THEN 0.9 END,"
            " %(t0)s + make_interval(secs => g), now() "
            "FROM generate_series(0, %(rows)s - 1) AS g",
            {"lot": lot_size, "rows": rows, "t0": T0},
        )
        for _, definition in indexes:
            conn.execute(definition)
        conn.execute(
            "INSERT INTO lots (lot_id, first_seen, last_seen, excursion, excursion_reason) "
            "SELECT 'LOT-' || l, %(t0)s + make_interval(secs => l * %(lot)s),"
            " %(t0)s + make_interval(secs => l * %(lot)s + %(lot)s - 1), false, '' "
            "FROM generate_series(0, (%(rows)s - 1) / %(lot)s) AS l",
            {"lot": lot_size, "rows": rows, "t0": T0},
        )
        conn.execute("VACUUM ANALYZE results")
        conn.execute("ANALYZE lots")
    return time.perf_counter() - started


async def _summary_latencies(port: int, lots: int, queries: int) -> np.ndarray:
    rng = random.Random(7)
    times = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = fab_pb2_grpc.FabServiceStub(channel)
        for i in range(queries + 20):
            request = fab_pb2.GetLotSummaryRequest(lot_id=f"LOT-{rng.randrange(lots)}")
            started = time.perf_counter()
            await stub.GetLotSummary(request, metadata=_bearer(ENGINEER_TOKEN))
            if i >= 20:  # the first calls warm the connection pool and caches
                times.append((time.perf_counter() - started) * 1000)
    return np.array(times)


def _drop(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _table_row(*cells: object, widths: Sequence[int] = (16, 8, 7, 10, 9, 11)) -> str:
    """One line of a table: the first cell left-aligned, the others right-aligned."""
    first, *rest = (str(c) for c in cells)
    aligned = (c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
    return first.ljust(widths[0]) + "".join(aligned)


def _ingest(args: argparse.Namespace, url: str, dsn: str, run: str) -> None:
    """Results/s over gRPC (server in its own process) and by raw COPY, same rows, same run."""
    rng = random.Random(42)
    per_node = [_rows(f"edge-{i}", args.results, args.lot_size, rng) for i in range(args.streams)]
    outboxes = [_batches(rows, args.batch) for rows in per_node]
    total = args.streams * args.results
    grpc_schema, copy_schema = f"bench_{run}_grpc", f"bench_{run}_copy"
    try:
        migrate(url, grpc_schema)
        migrate(url, copy_schema)
        tokens = asyncio.run(_enrol(url, grpc_schema, [o[0].node_id for o in outboxes]))
        server = ServerProcess(url, grpc_schema)
        try:
            grpc_s = asyncio.run(_grpc_ingest(server.port, outboxes, tokens))
        finally:
            server.close()
        copy_s = asyncio.run(_raw_copy(dsn, copy_schema, per_node))
    finally:
        _drop(dsn, grpc_schema)
        _drop(dsn, copy_schema)
    grpc_rate, copy_rate = total / grpc_s, total / copy_s
    print(_table_row("ingest", "streams", "batch", "results", "seconds", "results/s"))
    for name, batch, seconds, rate in (
        ("gRPC stream", args.batch, grpc_s, grpc_rate),
        ("raw COPY", "-", copy_s, copy_rate),
    ):
        print(_table_row(name, args.streams, batch, f"{total:,}", f"{seconds:.2f}", f"{rate:,.0f}"))
    met = "met" if grpc_rate >= 20_000 else "NOT met"
    print(f"ratio           gRPC / COPY = {grpc_rate / copy_rate:.2f} (goal >= 0.30)")
    print(f"goal            >= 20,000 results/s over gRPC: {met}")


def _lot_summaries(args: argparse.Namespace, url: str, dsn: str, run: str) -> None:
    """GetLotSummary latency over gRPC with the results table filled to each size."""
    widths = (16, 12, 8, 8, 8, 8)
    print()
    print(
        _table_row("GetLotSummary", "stored", "fill s", "p50 ms", "p99 ms", "max ms", widths=widths)
    )
    for rows in (int(r) for r in args.rows.split(",") if r):
        schema = f"bench_{run}_lots_{rows}"
        try:
            migrate(url, schema)
            fill_s = _fill(dsn, schema, rows, args.lot_size)
            server = ServerProcess(url, schema)
            try:
                lots = -(-rows // args.lot_size)
                times = asyncio.run(_summary_latencies(server.port, lots, args.queries))
            finally:
                server.close()
        finally:
            _drop(dsn, schema)
        p50, p99 = np.percentile(times, [50, 99])
        cells = (f"{rows:,}", f"{fill_s:.1f}", f"{p50:.2f}", f"{p99:.2f}", f"{times.max():.2f}")
        print(_table_row(f"lots of {args.lot_size}", *cells, widths=widths))
    print("goal            p99 <= 50 ms at 10,000,000 stored results")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configured = FabSettings().database_url
    default_url = configured if configured.startswith("postgresql") else LOCAL_POSTGRES
    parser.add_argument("--database-url", default=default_url, help="SQLAlchemy URL (psycopg)")
    parser.add_argument("--streams", type=int, default=4, help="concurrent nodes streaming")
    parser.add_argument("--results", type=int, default=50_000, help="results per stream")
    parser.add_argument(
        "--batch",
        type=int,
        default=2000,
        help="results per ResultBatch (the edge uplink's default)",
    )
    parser.add_argument(
        "--rows", default="1000000", help="stored results for GetLotSummary, comma-separated"
    )
    parser.add_argument("--lot-size", type=int, default=25, help="wafers per lot")
    parser.add_argument("--queries", type=int, default=1000, help="GetLotSummary calls timed")
    args = parser.parse_args()

    url = args.database_url
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    run = uuid.uuid4().hex[:8]
    print(f"database        {make_url(url).render_as_string(hide_password=True)}")
    load = os.getloadavg()[0]
    print(f"load average    {load:.1f} on {os.cpu_count()} CPUs (other work lowers the rates)")
    _ingest(args, url, dsn, run)
    _lot_summaries(args, url, dsn, run)


if __name__ == "__main__":
    main()
