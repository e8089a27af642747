"""A real FabService: grpc.aio server on a free port, over a migrated PostgreSQL schema."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.db import make_async_engine, session_factory
from fab_server.rpc.convert import to_timestamp
from fab_server.rpc.server import start_grpc_server
from fab_server.settings import FabSettings
from waferplatform.v1 import common_pb2, fab_pb2_grpc

PROBABILITIES = (0.02, 0.02, 0.02, 0.02, 0.84, 0.02, 0.02, 0.02, 0.02)


@dataclass
class FabServer:
    """A running server and what tests need to talk to it."""

    settings: FabSettings
    sessions: async_sessionmaker[AsyncSession]
    server: Any
    port: int
    stub: fab_pb2_grpc.FabServiceStub


@pytest_asyncio.fixture
async def fab(fab_settings: FabSettings) -> AsyncIterator[FabServer]:
    """A started server (model loaded on first ClassifyBatch) and a stub on a real channel."""
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    sessions = session_factory(engine)
    server, port = await start_grpc_server(fab_settings, sessions, None)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield FabServer(
                fab_settings, sessions, server, port, fab_pb2_grpc.FabServiceStub(channel)
            )
    finally:
        await server.stop(grace=None)
        await engine.dispose()


@pytest.fixture
def sql(harness: Any, pg_schema: str) -> Iterator[Callable[[str], list[tuple[Any, ...]]]]:
    """Runs a query in the test's schema (a plain connection, not the server's)."""
    with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{pg_schema}"')

        def run(query: str) -> list[tuple[Any, ...]]:
            return conn.execute(query).fetchall()

        yield run


def classification(
    node_id: str, sequence: int, *, lot_id: str = "LOT-1", **fields: Any
) -> common_pb2.Classification:
    """A valid result of ``node_id`` (Edge-Ring, confident); ``fields`` override."""
    message = common_pb2.Classification(
        wafer_id=f"{node_id}-W{sequence}",
        lot_id=lot_id,
        node_id=node_id,
        sequence=sequence,
        class_probabilities=PROBABILITIES,
        prediction=common_pb2.DEFECT_CLASS_EDGE_RING,
        confidence=0.84,
        recursion_steps_used=2,
        inference_latency_ms=9.5,
        model_version="trm-v1.0.0",
        classified_at=to_timestamp(datetime.now(UTC)),
    )
    for name, value in fields.items():
        if isinstance(value, Message):  # wafer_map, classified_at
            getattr(message, name).CopyFrom(value)
        else:
            setattr(message, name, value)
    return message


@pytest.fixture
def make_result() -> Callable[..., common_pb2.Classification]:
    """`classification`, for tests (conftest helpers are reached through fixtures)."""
    return classification
