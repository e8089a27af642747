"""The metrics pusher against a scripted in-process FabService, with real metrics and outbox."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from edge.fab_client import open_channel
from edge.metrics import EdgeMetrics
from edge.metrics_push import MetricsPusher
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from waferplatform.v1 import fab_pb2, fab_pb2_grpc

NODE = "edge-03"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
TIMEOUT_S = 10.0


class MetricsSink(fab_pb2_grpc.FabServiceServicer):
    """PushMetrics only: records what it stores; fails the next calls on demand."""

    def __init__(self) -> None:
        self.stored: list[fab_pb2.EdgeMetrics] = []
        self.failures: list[grpc.StatusCode] = []  # status of each next call, then OK
        self.changed = asyncio.Condition()

    async def PushMetrics(  # noqa: N802 (gRPC method name)
        self, request: fab_pb2.EdgeMetrics, context: Any
    ) -> fab_pb2.PushMetricsResponse:
        if self.failures:
            await context.abort(self.failures.pop(0), "scripted failure")
        self.stored.append(request)
        async with self.changed:
            self.changed.notify_all()
        return fab_pb2.PushMetricsResponse()


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[tuple[MetricsSink, int]]:
    servicer = MetricsSink()
    server = grpc.aio.server()
    fab_pb2_grpc.add_FabServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, port
    finally:
        await server.stop(grace=None)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.db", max_bytes=1 << 20, sync="normal")
    yield box
    box.close()


@pytest.fixture
def settings(tmp_path: Path, sink: tuple[MetricsSink, int]) -> EdgeSettings:
    return EdgeSettings(
        node_id=NODE,
        fab_address=f"127.0.0.1:{sink[1]}",
        work_dir=tmp_path,
        metrics_interval_s=0.05,
    )


@pytest_asyncio.fixture
async def channel(settings: EdgeSettings) -> AsyncIterator[grpc.aio.Channel]:
    ch = open_channel(settings)
    yield ch
    await ch.close()


def _metrics() -> EdgeMetrics:
    return EdgeMetrics(model_version=lambda: "trm-v1.0.0", start=T0, seed=1)


def _classify(metrics: EdgeMetrics, *latencies_ms: float) -> None:
    for i, latency in enumerate(latencies_ms):
        metrics.observe(
            latency_ms=latency, steps=1 + i % 2, confidence=0.95, prediction=i % 3, flagged=i == 0
        )


@pytest.mark.asyncio
async def test_a_push_sends_the_window_with_the_outbox_depth(
    sink: tuple[MetricsSink, int], settings: EdgeSettings, outbox: Outbox, channel: Any
) -> None:
    fab, _ = sink
    metrics = _metrics()
    _classify(metrics, 10.0, 20.0, 30.0, 40.0)
    outbox.append_many([b"a", b"b", b"c"])
    pusher = MetricsPusher(settings, metrics, outbox, channel)

    await pusher.push_once(T0 + MINUTE)

    [window] = fab.stored
    assert window.node_id == NODE and window.model_version == "trm-v1.0.0"
    assert window.window_start.ToDatetime(UTC) == T0
    assert window.window_end.ToDatetime(UTC) == T0 + MINUTE
    assert window.wafers_classified == 4 and window.throughput_per_minute == pytest.approx(4.0)
    assert window.latency_p50_ms == pytest.approx(25.0)
    assert window.latency_p50_ms <= window.latency_p90_ms <= window.latency_p99_ms <= 40.0
    assert window.avg_recursion_steps == pytest.approx(1.5)
    assert window.review_rate == pytest.approx(0.25)
    assert list(window.class_counts) == [2, 1, 1, 0, 0, 0, 0, 0, 0]
    assert len(window.confidence_histogram.bucket_edges) == 11
    assert list(window.confidence_histogram.counts)[-1] == 4
    assert window.outbox_depth == 3
    assert pusher.pending == 0


@pytest.mark.asyncio
async def test_windows_the_fab_missed_are_sent_first_at_the_next_push(
    sink: tuple[MetricsSink, int], settings: EdgeSettings, outbox: Outbox, channel: Any
) -> None:
    fab, _ = sink
    fab.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE]
    metrics = _metrics()
    pusher = MetricsPusher(settings, metrics, outbox, channel)

    _classify(metrics, 5.0)
    await pusher.push_once(T0 + MINUTE)  # fails: kept
    _classify(metrics, 5.0, 6.0)
    await pusher.push_once(T0 + 2 * MINUTE)  # fails on the first window: both kept
    assert fab.stored == [] and pusher.pending == 2
    _classify(metrics, 5.0, 6.0, 7.0)
    await pusher.push_once(T0 + 3 * MINUTE)

    assert [w.wafers_classified for w in fab.stored] == [1, 2, 3]  # oldest first, no gap
    ends = [w.window_end.ToDatetime(UTC) for w in fab.stored]
    starts = [w.window_start.ToDatetime(UTC) for w in fab.stored]
    assert starts[1:] == ends[:-1]
    assert pusher.pending == 0
    failed = metrics.registry.get_sample_value(
        "edge_metrics_push_failures_total", {"code": "UNAVAILABLE"}
    )
    assert failed == 2


@pytest.mark.asyncio
async def test_a_window_the_fab_rejects_is_dropped_not_retried(
    sink: tuple[MetricsSink, int], settings: EdgeSettings, outbox: Outbox, channel: Any
) -> None:
    fab, _ = sink
    fab.failures = [grpc.StatusCode.INVALID_ARGUMENT]
    metrics = _metrics()
    pusher = MetricsPusher(settings, metrics, outbox, channel)

    await pusher.push_once(T0 + MINUTE)
    assert pusher.pending == 0
    _classify(metrics, 5.0)
    await pusher.push_once(T0 + 2 * MINUTE)

    assert [w.wafers_classified for w in fab.stored] == [1]
    assert metrics.registry.get_sample_value("edge_metrics_windows_dropped_total") == 1


@pytest.mark.asyncio
async def test_the_backlog_keeps_only_the_newest_windows(
    sink: tuple[MetricsSink, int], settings: EdgeSettings, outbox: Outbox, channel: Any
) -> None:
    fab, _ = sink
    fab.failures = [grpc.StatusCode.UNAVAILABLE] * 5
    metrics = _metrics()
    pusher = MetricsPusher(settings, metrics, outbox, channel, max_pending=3)

    for minute in range(1, 6):
        _classify(metrics, *[1.0] * minute)
        await pusher.push_once(T0 + minute * MINUTE)
    assert pusher.pending == 3
    await pusher.push_once(T0 + 6 * MINUTE)  # a 4th window: the oldest kept one goes

    assert [w.wafers_classified for w in fab.stored] == [4, 5, 0]
    assert metrics.registry.get_sample_value("edge_metrics_windows_dropped_total") == 3


@pytest.mark.asyncio
async def test_a_window_from_a_clock_stepped_back_is_not_sent(
    sink: tuple[MetricsSink, int], settings: EdgeSettings, outbox: Outbox, channel: Any
) -> None:
    fab, _ = sink
    pusher = MetricsPusher(settings, _metrics(), outbox, channel)
    await pusher.push_once(T0 - MINUTE)
    assert fab.stored == [] and pusher.pending == 0


@pytest.mark.asyncio
async def test_run_pushes_every_interval_until_stopped(
    sink: tuple[MetricsSink, int], settings: EdgeSettings, outbox: Outbox, channel: Any
) -> None:
    fab, _ = sink
    ticks = iter(T0 + n * MINUTE for n in range(1, 1000))
    pusher = MetricsPusher(settings, _metrics(), outbox, channel, clock=lambda: next(ticks))
    stop = asyncio.Event()
    task = asyncio.create_task(pusher.run(stop))
    async with fab.changed:
        await asyncio.wait_for(fab.changed.wait_for(lambda: len(fab.stored) >= 3), TIMEOUT_S)
    stop.set()
    await asyncio.wait_for(task, TIMEOUT_S)
    ends = [w.window_end.ToDatetime(UTC) for w in fab.stored]
    assert ends[:3] == [T0 + MINUTE, T0 + 2 * MINUTE, T0 + 3 * MINUTE]
