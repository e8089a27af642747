"""Integration fixtures: a fab server's settings on its own migrated PostgreSQL schema per test.

Shared by the fab server's and the edge node's integration tests (edge nodes need a real fab).
Every gRPC call to a real fab is authenticated, as in production: the settings carry an
engineer's API token (`ENGINEER_TOKEN`), and `enrol` issues node tokens as
``wafer-fab nodes add`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import pytest_asyncio

from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.services import nodes
from fab_server.settings import ApiToken, FabSettings

ENGINEER_TOKEN = "engineer-token-of-the-tests-0001"
ENGINEER = "eng-ana"
WAIT_S = 30.0


def _async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def pg_schema(harness: Any) -> Iterator[str]:
    """A fresh, migrated schema in the real test database, dropped afterwards."""
    schema = f"fab_{uuid.uuid4().hex[:12]}"
    migrate(_async_url(harness.postgres_url), schema=schema)
    yield schema
    with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def fab_settings(harness: Any, pg_schema: str, tmp_path: Path) -> FabSettings:
    """Settings of a fab server on its own PostgreSQL schema, ports picked by the OS."""
    return FabSettings(
        database_url=_async_url(harness.postgres_url),
        db_schema=pg_schema,
        grpc_port=0,
        http_port=0,
        artifact_dir=tmp_path / "artifacts",
        api_tokens=[ApiToken(token=ENGINEER_TOKEN, user=ENGINEER, role="engineer")],
    )


@pytest.fixture
def engineer_token() -> str:
    """The API token of the engineer ``eng-ana`` in ``fab_settings`` (a person, not a node)."""
    return ENGINEER_TOKEN


@pytest_asyncio.fixture
async def enrol(fab_settings: FabSettings) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """``await enrol(node_id)``: a new token of the node, issued in the fab's database."""
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    sessions = session_factory(engine)

    async def issue(node_id: str) -> str:
        return await nodes.add_token(sessions, node_id=node_id)

    yield issue
    await engine.dispose()


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[None]]:
    """``await wait_until(condition, what)``: poll a condition on state owned by another
    process, a database or a server's bookkeeping that runs after the client has its answer
    (nothing to await there), failing after ``WAIT_S``. Never a fixed sleep: on a loaded
    machine any fixed time is too short."""

    async def wait(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if loop.time() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
            await asyncio.sleep(0.02)

    return wait


CLOSED_WITHIN_S = 20.0
"""A stalled HTTP connection must be closed well before this (the tester saw 45 s and more)."""
SERVER_START_S = 120.0
"""Loading a model and starting, or stopping, a server on a loaded 2-core machine."""
FUZZ_RUN_S = 300.0
"""One schemathesis run; it takes well under a minute."""


@pytest.fixture
def until_closed() -> Callable[[int, bytes], Awaitable[tuple[float, bytes]]]:
    """``await until_closed(port, payload)``: send raw bytes to a local HTTP server, then read
    until it closes the connection: (seconds it took, what came back)."""

    async def run(port: int, payload: bytes) -> tuple[float, bytes]:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        try:
            writer.write(payload)
            await writer.drain()
            received = await asyncio.wait_for(reader.read(), CLOSED_WITHIN_S)
        finally:
            writer.close()
        return loop.time() - started, received

    return run


T = TypeVar("T")


@contextlib.contextmanager
def _serving_in_thread(
    start: Callable[[], Coroutine[Any, Any, T]], stop: Callable[[T], Coroutine[Any, Any, None]]
) -> Iterator[T]:
    """A server started on its own event loop in a thread, while the test blocks."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="server", daemon=True)
    thread.start()
    try:
        server = asyncio.run_coroutine_threadsafe(start(), loop).result(SERVER_START_S)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(stop(server), loop).result(SERVER_START_S)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SERVER_START_S)
        loop.close()


@pytest.fixture
def schemathesis_run(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``schemathesis_run(config, start, stop, port_of)``: serve in a thread, run schemathesis's
    CLI (as a developer reproduces a failure: ``schemathesis --config-file F run URL``) against
    the served ``/openapi.json`` with the TOML ``config``, and return the finished process.

    The CLI, not the pytest plugin: the plugin cannot load a schema from a fixture under
    pytest 9.2 (it reads ``Node._nodeid``, which pytest no longer has).
    """

    def run(
        config: str,
        start: Callable[[], Coroutine[Any, Any, T]],
        stop: Callable[[T], Coroutine[Any, Any, None]],
        port_of: Callable[[T], int],
    ) -> subprocess.CompletedProcess[str]:
        config_file = tmp_path / "schemathesis.toml"
        config_file.write_text(config)
        with _serving_in_thread(start, stop) as server:
            return subprocess.run(
                [
                    *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config_file)),
                    *("run", f"http://127.0.0.1:{port_of(server)}/openapi.json"),
                ],
                capture_output=True,
                text=True,
                timeout=FUZZ_RUN_S,
                cwd=tmp_path,
            )

    return run
