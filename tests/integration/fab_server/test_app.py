"""The whole fab server process: gRPC, HTTP and the alert loop on one real PostgreSQL schema."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import grpc
import httpx
import pytest

from fab_server.app import FabServer, NotMigrated
from fab_server.settings import FabSettings
from waferplatform.v1 import fab_pb2, fab_pb2_grpc

pytestmark = pytest.mark.integration


@pytest.mark.asyncio
async def test_server_serves_grpc_and_http_then_stops(
    fab_settings: FabSettings, engineer_token: str
) -> None:
    server = await FabServer(fab_settings).start()
    try:
        assert server.grpc_port > 0 and server.http_port > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
            health = await http.get("/healthz")
            assert health.status_code == 200, health.text
            assert (await http.get("/api/alerts")).status_code == 401
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = fab_pb2_grpc.FabServiceStub(channel)
            request = fab_pb2.GetLotSummaryRequest(lot_id="LOT-NONE")
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await stub.GetLotSummary(request)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as err:
                engineer = (("authorization", f"Bearer {engineer_token}"),)
                await stub.GetLotSummary(request, metadata=engineer)
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await server.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
            await http.get("/healthz")


@pytest.mark.asyncio
async def test_http_responses_are_not_held_back_by_nagle(fab_settings: FabSettings) -> None:
    """Without TCP_NODELAY on the listening socket every response waited ~40 ms."""
    server = await FabServer(fab_settings).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}") as http:
            await http.get("/metrics")
            elapsed = []
            for _ in range(25):
                started = time.perf_counter()
                await http.get("/metrics")
                elapsed.append(time.perf_counter() - started)
        assert statistics.median(elapsed) < 0.030
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_server_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    settings = FabSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", grpc_port=0, http_port=0
    )
    with pytest.raises(NotMigrated, match="wafer-fab migrate"):
        await FabServer(settings).start()
