"""Outbox to fab, exactly once in effect: a real fab server on PostgreSQL, real gRPC, real kills.

Every test ends by reading the fab's ``results`` table: each outbox id stored exactly once
(a sorted list with repeats compared to the ids), and the outbox empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from edge.fab_client import open_channel
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from edge.uplink import Uplink
from fab_server import app as fab_app
from fab_server.app import FabServer
from fab_server.certs import make_dev_certs
from fab_server.services import nodes
from fab_server.settings import FabSettings
from waferplatform.v1 import common_pb2

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
WaitUntil = Callable[..., Awaitable[None]]

# The edge process of the kill test: the real outbox and uplink, settings from EDGE_* only.
EDGE_PROCESS = """
import asyncio, signal
from edge.fab_client import open_channel
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from edge.uplink import Uplink

async def main() -> None:
    settings = EdgeSettings()
    outbox = Outbox(settings.outbox_path, max_bytes=settings.outbox_max_bytes,
                    sync=settings.outbox_sync)
    channel = open_channel(settings)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Uplink(settings, outbox, channel, idle_poll_s=0.05).run(stop)
    await channel.close()
    outbox.close()

asyncio.run(main())
"""


def _outbox(settings: EdgeSettings) -> Outbox:
    return Outbox(
        settings.outbox_path, max_bytes=settings.outbox_max_bytes, sync=settings.outbox_sync
    )


@contextlib.asynccontextmanager
async def _running(uplink: Uplink) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(uplink.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest_asyncio.fixture
async def fab(fab_settings: FabSettings) -> AsyncIterator[FabServer]:
    server = await FabServer(fab_settings).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_results_kept_while_the_fab_is_down_are_delivered_once_when_it_is_up(
    fab_settings: FabSettings,
    fab_tables: Any,
    free_port: int,
    results: Callable[..., list[bytes]],
    edge_settings: Callable[..., EdgeSettings],
    wait_until: WaitUntil,
) -> None:
    settings = edge_settings(free_port)
    outbox = _outbox(settings)
    channel = open_channel(settings)
    uplink = Uplink(settings, outbox, channel, idle_poll_s=0.05)
    server: FabServer | None = None
    try:
        ids = outbox.append_many(results(1500))
        async with _running(uplink):
            await wait_until(lambda: "UNAVAILABLE" in uplink.status.last_error, "a failed try")
            ids += outbox.append_many(results(500, start=1500))  # the station keeps working
            assert outbox.depth() == 2000 and fab_tables.count() == 0

            fab_up = fab_settings.model_copy(update={"grpc_port": free_port})
            server = await FabServer(fab_up).start()
            await wait_until(lambda: outbox.depth() == 0, "the outbox to drain")
            assert uplink.status.connected and uplink.status.last_error == ""
    finally:
        await channel.close()
        outbox.close()
        if server is not None:
            await server.stop()
    assert fab_tables.sequences() == ids
    assert fab_tables.maps() == len(ids)


def _edge_process(settings: EdgeSettings) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        EDGE_NODE_ID=settings.node_id,
        EDGE_FAB_ADDRESS=settings.fab_address or "",
        EDGE_WORK_DIR=str(settings.work_dir),
        EDGE_OUTBOX_SYNC=settings.outbox_sync,
        EDGE_UPLINK_BATCH=str(settings.uplink_batch),
        EDGE_UPLINK_BACKOFF_INITIAL_S=str(settings.uplink_backoff_initial_s),
        EDGE_UPLINK_BACKOFF_MAX_S=str(settings.uplink_backoff_max_s),
        # The token travels as in production: in the environment, not on the command line.
        EDGE_NODE_TOKEN=settings.node_token.get_secret_value() if settings.node_token else "",
    )
    return subprocess.Popen([sys.executable, "-c", EDGE_PROCESS], env=env, cwd=REPO)


def _outbox_ids(settings: EdgeSettings) -> list[int]:
    """The outbox's ids, read by another process (as an operator's sqlite3 would)."""
    with contextlib.closing(sqlite3.connect(settings.outbox_path)) as conn:
        return [int(r[0]) for r in conn.execute("SELECT id FROM outbox ORDER BY id")]


@pytest.mark.asyncio
async def test_an_edge_killed_mid_stream_loses_and_duplicates_nothing(
    fab: FabServer,
    fab_tables: Any,
    results: Callable[..., list[bytes]],
    edge_settings: Callable[..., EdgeSettings],
    wait_until: WaitUntil,
) -> None:
    total = 6000
    settings = edge_settings(fab.grpc_port, uplink_batch=100)
    outbox = _outbox(settings)
    ids = outbox.append_many(results(total))
    outbox.close()

    first = _edge_process(settings)
    try:
        await wait_until(lambda: fab_tables.count() >= total // 6, "a sixth of the results")
    finally:
        first.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 30)
    stored = fab_tables.sequences()
    left = _outbox_ids(settings)
    assert 0 < len(stored) < total, "killed after the drain: nothing was tested"
    assert left, "the kill came after the last ack"
    # At the kill: everything is at the fab or still in the outbox (some possibly both).
    assert sorted(set(stored) | set(left)) == ids

    second = _edge_process(settings)
    try:
        await wait_until(lambda: fab_tables.count() == total, "the restarted edge to finish")
        await wait_until(lambda: not _outbox_ids(settings), "the last ack")
    finally:
        second.send_signal(signal.SIGTERM)
        # Waited for off the loop: the fab serving the child's last stream runs on it.
        assert await asyncio.to_thread(second.wait, 30) == 0
    assert fab_tables.sequences() == ids


@pytest.mark.asyncio
async def test_the_uplink_reconnects_when_the_fab_restarts_mid_stream(
    fab_settings: FabSettings,
    fab_tables: Any,
    results: Callable[..., list[bytes]],
    edge_settings: Callable[..., EdgeSettings],
    wait_until: WaitUntil,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fab_app, "STOP_GRACE_S", 0.5)  # the open stream would hold stop 5 s
    server = await FabServer(fab_settings).start()
    port = server.grpc_port
    settings = edge_settings(port, uplink_batch=100)
    outbox = _outbox(settings)
    channel = open_channel(settings)
    registry = CollectorRegistry()
    uplink = Uplink(settings, outbox, channel, idle_poll_s=0.05, registry=registry)
    total = 8000
    try:
        ids = outbox.append_many(results(total))
        async with _running(uplink):
            await wait_until(lambda: fab_tables.count() > 0, "the first acked batch")
            await server.stop()
            assert fab_tables.count() < total, "the fab stopped after the drain: nothing tested"
            server = await FabServer(fab_settings.model_copy(update={"grpc_port": port})).start()
            await wait_until(lambda: outbox.depth() == 0, "the outbox to drain")
    finally:
        await channel.close()
        outbox.close()
        await server.stop()
    assert fab_tables.sequences() == ids
    failures = sum(
        s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == "edge_uplink_stream_failures_total"
    )
    assert failures >= 1


@pytest.mark.asyncio
async def test_the_uplink_delivers_over_mutual_tls_and_a_node_without_a_certificate_cannot(
    fab_settings: FabSettings,
    fab_tables: Any,
    tmp_path: Path,
    results: Callable[..., list[bytes]],
    edge_settings: Callable[..., EdgeSettings],
) -> None:
    node = edge_settings(1).node_id
    pki = make_dev_certs(tmp_path / "pki", clients=(node,))
    secure = fab_settings.model_copy(
        update={
            "tls_cert": pki.server.cert,
            "tls_key": pki.server.key,
            "tls_client_ca": pki.ca.cert,
        }
    )
    server = await FabServer(secure).start()
    try:
        client = pki.clients[node]
        assert server.sessions is not None
        # mTLS: the certificate is the node's credential (enrolled as `nodes add --certificate`).
        await nodes.add_certificate(
            server.sessions, node_id=node, cert_pem=client.cert.read_bytes()
        )
        settings = edge_settings(
            server.grpc_port,
            tls_ca=pki.ca.cert,
            tls_cert=client.cert,
            tls_key=client.key,
            node_token=None,  # the certificate alone says who the node is
        )
        no_cert = edge_settings(server.grpc_port, tls_ca=pki.ca.cert, work_dir=tmp_path / "other")
        for node_settings, expect_delivery in ((no_cert, False), (settings, True)):
            outbox = _outbox(node_settings)
            channel = open_channel(node_settings)
            try:
                ids = outbox.append_many(results(300))
                uplink = Uplink(node_settings, outbox, channel)
                if expect_delivery:
                    assert await uplink.drain_once() == 300
                    assert outbox.depth() == 0
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await uplink.drain_once()
                    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                    assert outbox.depth() == 300
            finally:
                await channel.close()
                outbox.close()
    finally:
        await server.stop()
    assert fab_tables.sequences() == ids


def _invalid_record() -> bytes:
    """A result the fab refuses: its probabilities sum to 0.5."""
    result = common_pb2.Classification(
        wafer_id="WF-BAD",
        lot_id="LOT-BAD",
        class_probabilities=[0.5] + [0.0] * 8,
        prediction=0,
        confidence=0.5,
        recursion_steps_used=1,
        inference_latency_ms=6.5,
        model_version="trm-v1.0.0",
    )
    result.classified_at.GetCurrentTime()
    return bytes(result.SerializeToString())


@pytest.mark.asyncio
async def test_a_result_the_fab_rejects_is_dead_lettered_and_does_not_block_the_rest(
    fab: FabServer,
    fab_tables: Any,
    results: Callable[..., list[bytes]],
    edge_settings: Callable[..., EdgeSettings],
) -> None:
    settings = edge_settings(fab.grpc_port, uplink_batch=50)
    outbox = _outbox(settings)
    channel = open_channel(settings)
    try:
        good = outbox.append_many(results(120))
        bad = outbox.append(_invalid_record())
        good += outbox.append_many(results(130, start=120))
        uplink = Uplink(settings, outbox, channel)
        assert await uplink.drain_once() == 251
        assert outbox.depth() == 0
    finally:
        await channel.close()
        outbox.close()
    assert fab_tables.sequences() == good
    [line] = uplink.dead_letter_path.read_text().splitlines()
    assert f'"sequence": {bad}' in line and "class_probabilities" in line
