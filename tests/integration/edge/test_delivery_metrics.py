"""Monitoring windows from the edge's real metrics land in the fab's ``edge_metrics`` table."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge.fab_client import open_channel
from edge.metrics import EdgeMetrics
from edge.metrics_push import MetricsPusher
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from fab_server.app import FabServer
from fab_server.settings import FabSettings

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _classify(metrics: EdgeMetrics, count: int) -> None:
    for i in range(count):
        metrics.observe(latency_ms=8.0 + i, steps=1, confidence=0.9, prediction=4, flagged=i == 0)


@pytest.mark.asyncio
async def test_windows_reach_the_fab_and_one_missed_while_it_was_down_follows(
    fab_settings: FabSettings,
    fab_tables: Any,
    free_port: int,
    edge_settings: Callable[..., EdgeSettings],
) -> None:
    settings = edge_settings(free_port)
    outbox = Outbox(settings.outbox_path, max_bytes=settings.outbox_max_bytes, sync="normal")
    outbox.append_many([b"waiting", b"for the fab"])
    metrics = EdgeMetrics(model_version=lambda: "trm-v1.0.0", start=T0, seed=7)
    channel = open_channel(settings)
    pusher = MetricsPusher(settings, metrics, outbox, channel)
    server: FabServer | None = None
    try:
        _classify(metrics, 4)
        await pusher.push_once(T0 + MINUTE)  # the fab is down: kept
        assert pusher.pending == 1

        server = await FabServer(fab_settings.model_copy(update={"grpc_port": free_port})).start()
        # A push while the channel waits out its reconnect backoff fails fast (and would be
        # retried a minute later); this test wants the delivery, so it waits for the channel.
        await asyncio.wait_for(channel.channel_ready(), 30)
        _classify(metrics, 2)
        await pusher.push_once(T0 + 2 * MINUTE)
        assert pusher.pending == 0
    finally:
        await channel.close()
        outbox.close()
        if server is not None:
            await server.stop()

    first, second = fab_tables.metrics()
    assert (first["window_start"], first["window_end"]) == (T0, T0 + MINUTE)
    assert (second["window_start"], second["window_end"]) == (T0 + MINUTE, T0 + 2 * MINUTE)
    assert [first["wafers_classified"], second["wafers_classified"]] == [4, 2]
    assert first["latency_p50_ms"] == pytest.approx(9.5)
    assert first["review_rate"] == pytest.approx(0.25)
    assert first["class_counts"] == [0, 0, 0, 0, 4, 0, 0, 0, 0]
    assert first["confidence_counts"][9] == 4 and len(first["confidence_edges"]) == 11
    assert first["model_version"] == "trm-v1.0.0"
    assert first["outbox_depth"] == second["outbox_depth"] == 2
