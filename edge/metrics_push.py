"""The node's monitoring windows, pushed to the fab server every ``metrics_interval_s``.

Each push closes the current `MetricsWindow` (`EdgeMetrics.window`) and sends it with the
outbox depth of that moment over ``FabService.PushMetrics``. A window the fab cannot take now
(fab down, timeout) is kept and sent before the next one, oldest first, so an outage leaves no
gap in the fab's series; the fab stores a window once per (node, window end), so a resend
after a lost response changes nothing. At most ``MAX_PENDING`` windows are kept (a day at the
default interval): after a longer outage the oldest are dropped, counted and logged. A window
the fab rejects as invalid is dropped at once: resending it cannot succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf.timestamp_pb2 import Timestamp  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, Counter, Gauge

from edge.metrics import EdgeMetrics, MetricsWindow
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from waferplatform.v1 import fab_pb2, fab_pb2_grpc  # type: ignore[import-not-found]

log = logging.getLogger(__name__)

MAX_PENDING = 1440
"""Windows kept while the fab is unreachable (24 h of 60 s windows)."""
PUSH_TIMEOUT_S = 10.0
"""Deadline of one PushMetrics call: a hung fab must not stall the next windows."""


@dataclass(frozen=True)
class PushMetricsSeries:
    """The pusher's Prometheus series (one set per registry)."""

    failures: Counter
    dropped: Counter
    pending: Gauge


_SERIES: weakref.WeakKeyDictionary[CollectorRegistry, PushMetricsSeries] = (
    weakref.WeakKeyDictionary()
)


def push_series(registry: CollectorRegistry) -> PushMetricsSeries:
    """The pusher series of ``registry``, created on first use."""
    if registry not in _SERIES:
        _SERIES[registry] = PushMetricsSeries(
            failures=Counter(
                "edge_metrics_push_failures",
                "PushMetrics calls that failed, by gRPC status.",
                ["code"],
                registry=registry,
            ),
            dropped=Counter(
                "edge_metrics_windows_dropped",
                "Monitoring windows never delivered: rejected by the fab, or the oldest of a "
                "backlog past its limit.",
                registry=registry,
            ),
            pending=Gauge(
                "edge_metrics_windows_pending",
                "Monitoring windows waiting for the fab.",
                registry=registry,
            ),
        )
    return _SERIES[registry]


def _timestamp(value: datetime) -> Any:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def window_to_proto(window: MetricsWindow, *, node_id: str) -> Any:
    """The contract's ``EdgeMetrics`` message of a window (GPU readings absent: none on CPU)."""
    return fab_pb2.EdgeMetrics(
        node_id=node_id,
        window_start=_timestamp(window.window_start),
        window_end=_timestamp(window.window_end),
        wafers_classified=window.wafers_classified,
        throughput_per_minute=window.throughput_per_minute,
        latency_p50_ms=window.latency_p50_ms,
        latency_p90_ms=window.latency_p90_ms,
        latency_p99_ms=window.latency_p99_ms,
        avg_recursion_steps=window.avg_recursion_steps,
        confidence_histogram=fab_pb2.ConfidenceHistogram(
            bucket_edges=window.confidence_edges, counts=window.confidence_counts
        ),
        review_rate=window.review_rate,
        model_version=window.model_version,
        outbox_depth=window.outbox_depth,
        class_counts=window.class_counts,
    )


class MetricsPusher:
    """Pushes the node's monitoring windows to the fab.

    Args:
        settings: ``node_id`` and ``metrics_interval_s``.
        metrics: the node's measurements; each push closes its current window. The pusher's
            own series are registered on ``metrics.registry``.
        outbox: read for the depth sent with each window.
        channel: a channel to the fab (`edge.fab_client.open_channel`).
        clock: the current time (UTC); tests inject one.
        max_pending: windows kept while the fab is unreachable.
    """

    def __init__(
        self,
        settings: EdgeSettings,
        metrics: EdgeMetrics,
        outbox: Outbox,
        channel: grpc.aio.Channel,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        max_pending: int = MAX_PENDING,
    ) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending: must be >= 1, got {max_pending}")
        self._node_id = settings.node_id
        self._interval_s = settings.metrics_interval_s
        self._metrics = metrics
        self._outbox = outbox
        self._stub = fab_pb2_grpc.FabServiceStub(channel)
        self._clock = clock
        self._pending: deque[Any] = deque()
        self._max_pending = max_pending
        self._series = push_series(metrics.registry)
        self._last_error = ""

    @property
    def pending(self) -> int:
        """Windows waiting for the fab."""
        return len(self._pending)

    async def run(self, stop: asyncio.Event) -> None:
        """Push a window every ``metrics_interval_s`` until ``stop`` is set.

        Pushes are scheduled on a fixed grid (start + n * interval), so a slow push does not
        shift the windows that follow. Never raises for a failed push.
        """
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self._interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=max(0.0, next_at - loop.time()))
            if stop.is_set():
                return
            # After a stall longer than an interval, skip the missed slots instead of bursting.
            while next_at <= loop.time():
                next_at += self._interval_s
            await self.push_once(self._clock())

    async def push_once(self, now: datetime) -> None:
        """Close the window at ``now`` and send it, after any windows still pending.

        Failures are logged and counted, never raised: undelivered windows wait for the
        next call.
        """
        window = self._metrics.window(now)
        if window.window_end <= window.window_start:
            # Only a clock stepped backwards gets here; the fab refuses such a window.
            log.warning(
                "metrics window %s..%s is empty or reversed (clock change?); not sent",
                window.window_start.isoformat(),
                window.window_end.isoformat(),
            )
            self._series.dropped.inc()
            return
        depth = await asyncio.to_thread(self._outbox.depth)
        window = replace(window, outbox_depth=depth)
        self._pending.append(window_to_proto(window, node_id=self._node_id))
        if len(self._pending) > self._max_pending:
            self._pending.popleft()
            self._series.dropped.inc()
            log.warning("fab unreachable for %d windows: oldest window dropped", self._max_pending)
        try:
            await self._send_pending()
        finally:
            self._series.pending.set(len(self._pending))

    async def _send_pending(self) -> None:
        while self._pending:
            message = self._pending[0]
            try:
                await self._stub.PushMetrics(message, timeout=PUSH_TIMEOUT_S)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                self._series.failures.labels(code.name).inc()
                error = f"{code.name}: {exc.details()}"
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    self._pending.popleft()
                    self._series.dropped.inc()
                    log.error("fab rejected a metrics window, dropped: %s", error)
                    continue
                # Logged once per distinct error: an outage is one line, not one a minute.
                level = logging.WARNING if error != self._last_error else logging.DEBUG
                log.log(level, "metrics push failed (%d windows pending): %s", self.pending, error)
                self._last_error = error
                return
            self._pending.popleft()
            self._last_error = ""
