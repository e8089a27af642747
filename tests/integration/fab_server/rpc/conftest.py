"""A real FabService: grpc.aio server on a free port, over a migrated PostgreSQL schema.

Callers authenticate as in production: ``fab.stub`` is the node ``edge-1`` (its token issued in
the fab's database), ``fab.engineer`` a person with an API token, ``await fab.node_stub(id)``
any other node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import psycopg
import pytest
import pytest_asyncio
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from edge.fab_client import bearer_interceptors
from fab_server.db import make_async_engine, session_factory
from fab_server.rpc.convert import to_timestamp
from fab_server.rpc.server import start_grpc_server
from fab_server.services import nodes
from fab_server.settings import FabSettings
from waferplatform.v1 import common_pb2, fab_pb2_grpc

PROBABILITIES = (0.02, 0.02, 0.02, 0.02, 0.84, 0.02, 0.02, 0.02, 0.02)
NODE = "edge-1"


@dataclass
class FabServer:
    """A running server and what tests need to talk to it."""

    settings: FabSettings
    sessions: async_sessionmaker[AsyncSession]
    server: Any
    port: int
    engineer_token: str
    tokens: dict[str, str] = field(default_factory=dict)
    """Node id -> the token `node_stub` issued it."""
    _channels: list[Any] = field(default_factory=list)
    stub: Any = None
    """The node ``edge-1`` (a FabServiceStub), with its own token."""
    engineer: Any = None
    """A person (a FabServiceStub): the engineer's API token."""

    def stub_with(self, token: str | None, port: int | None = None) -> Any:
        """A stub on a new plaintext channel whose calls carry ``token`` (None: nothing)."""
        interceptors = bearer_interceptors(token) if token is not None else None
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port or self.port}", interceptors=interceptors
        )
        self._channels.append(channel)
        return fab_pb2_grpc.FabServiceStub(channel)

    async def token_of(self, node_id: str) -> str:
        """The node's token, issued (as ``wafer-fab nodes add`` does) on first use."""
        if node_id not in self.tokens:
            self.tokens[node_id] = await nodes.add_token(self.sessions, node_id=node_id)
        return self.tokens[node_id]

    async def node_stub(self, node_id: str) -> Any:
        """A stub authenticated as ``node_id`` (enrolled on first use)."""
        return self.stub_with(await self.token_of(node_id))

    async def close(self) -> None:
        """Close every channel the stubs opened."""
        for channel in self._channels:
            await channel.close()


@pytest_asyncio.fixture
async def fab(fab_settings: FabSettings, engineer_token: str) -> AsyncIterator[FabServer]:
    """A started server (model loaded on first ClassifyBatch) and stubs on real channels."""
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    sessions = session_factory(engine)
    server, port = await start_grpc_server(fab_settings, sessions, None)
    served = FabServer(fab_settings, sessions, server, port, engineer_token)
    try:
        served.stub = await served.node_stub(NODE)
        served.engineer = served.stub_with(engineer_token)
        yield served
    finally:
        await served.close()
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
