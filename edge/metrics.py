"""What the edge node measures: Prometheus series for scraping, rolling windows for the fab.

Every classified wafer is observed once. Prometheus gets cumulative counters and histograms
(``/metrics``); the fab gets one `MetricsWindow` per push interval (``PushMetrics``), with the
fields of the contract's ``EdgeMetrics`` message. Each `EdgeMetrics` has its own registry, so
two nodes (or tests) in one process do not share series. The node's other parts (uplink,
metrics push, OTA agent) register their series on `EdgeMetrics.registry` too, and the
process, platform and GC collectors are added to it, so ``/metrics`` shows the whole node.

Window latency percentiles come from a uniform sample of at most ``LATENCY_SAMPLE`` latencies
(reservoir sampling): memory stays bounded when no fab collects windows for days.
"""

from __future__ import annotations

import bisect
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wafercore.classes import CLASS_NAMES, NUM_CLASSES

CONFIDENCE_EDGES: tuple[float, ...] = tuple(i / 10 for i in range(11))
"""Bucket edges of the window's confidence histogram: 0, 0.1, ..., 1.0."""
LATENCY_SAMPLE = 65_536
"""Most latencies a window keeps for its percentiles."""

_LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.045, 0.05, 0.075, 0.1, 0.25, 1.0)
_STEP_BUCKETS = (1, 2, 3, 4, 6, 8, 16)


@dataclass(frozen=True)
class MetricsWindow:
    """One monitoring window, field for field the contract's ``EdgeMetrics`` (less node_id).

    Attributes:
        window_start: start (UTC, inclusive).
        window_end: end (UTC, exclusive).
        wafers_classified: wafers in the window.
        throughput_per_minute: wafers per minute over the window.
        latency_p50_ms: median inference latency (0 without wafers).
        latency_p90_ms: 90th percentile.
        latency_p99_ms: 99th percentile.
        avg_recursion_steps: mean supervision steps per wafer.
        confidence_edges: histogram bucket edges, n + 1 values.
        confidence_counts: wafers per bucket, n values (the last bucket includes 1.0).
        review_rate: fraction of the window's wafers flagged for review.
        model_version: model served at the end of the window.
        outbox_depth: results not yet acked by the fab, at the end of the window.
        class_counts: wafers per predicted class id (9 values).
    """

    window_start: datetime
    window_end: datetime
    wafers_classified: int
    throughput_per_minute: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    avg_recursion_steps: float
    confidence_edges: tuple[float, ...]
    confidence_counts: tuple[int, ...]
    review_rate: float
    model_version: str
    outbox_depth: int
    class_counts: tuple[int, ...]


class _ModelInfo(Collector):
    """``edge_model_info{version}``: read at scrape time, so OTA swaps show without a hook."""

    def __init__(self, version: Callable[[], str]) -> None:
        self._version = version

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "edge_model_info", "Model being served (value 1).", labels=["version"]
        )
        family.add_metric([self._version()], 1.0)
        yield family


class EdgeMetrics:
    """The node's measurements. Thread-safe: inference threads observe, the pusher reads.

    Args:
        model_version: returns the version being served (read at scrape and window time).
        outbox_depth: returns how many results wait for the fab's ack.
        start: start of the first window; now by default.
        seed: of the latency reservoir's sampler (tests fix it).

    Attributes:
        registry: this node's Prometheus registry, served on ``/metrics``.
    """

    def __init__(
        self,
        *,
        model_version: Callable[[], str] = lambda: "",
        outbox_depth: Callable[[], int] = lambda: 0,
        start: datetime | None = None,
        seed: int | None = None,
    ) -> None:
        self._model_version = model_version
        self._outbox_depth = outbox_depth
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._start = start or datetime.now(UTC)
        self._reset()
        self.registry = CollectorRegistry()
        reg = self.registry
        self._classified = Counter(
            "edge_wafers_classified",
            "Wafers classified, by predicted class.",
            ["prediction"],
            registry=reg,
        )
        for name in CLASS_NAMES:
            self._classified.labels(prediction=name)  # every class from the first scrape
        self._flagged = Counter("edge_wafers_flagged", "Wafers flagged for review.", registry=reg)
        self._latency = Histogram(
            "edge_inference_latency_seconds",
            "Preprocessing and inference time per wafer.",
            buckets=_LATENCY_BUCKETS_S,
            registry=reg,
        )
        self._request = Histogram(
            "edge_classify_duration_seconds",
            "Whole classification call: validation, inference and the outbox write.",
            buckets=_LATENCY_BUCKETS_S,
            registry=reg,
        )
        self._steps = Histogram(
            "edge_recursion_steps",
            "Supervision steps per wafer.",
            buckets=_STEP_BUCKETS,
            registry=reg,
        )
        self._confidence = Histogram(
            "edge_confidence",
            "Confidence of the predicted class.",
            buckets=CONFIDENCE_EDGES[1:],
            registry=reg,
        )
        self._rejected = Counter(
            "edge_requests_rejected",
            "Requests refused, by HTTP status.",
            ["status"],
            registry=reg,
        )
        self._outbox_full = Gauge(
            "edge_outbox_full", "1 while the outbox refuses results (at its cap).", registry=reg
        )
        self._outbox_refused = Counter(
            "edge_outbox_refused_results",
            "Results refused because the outbox was full.",
            registry=reg,
        )
        depth = Gauge(
            "edge_outbox_depth", "Results stored and not yet acked by the fab.", registry=reg
        )
        depth.set_function(lambda: float(self._outbox_depth()))
        reg.register(_ModelInfo(model_version))
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            reg.register(collector)

    def _reset(self) -> None:
        self._count = 0
        self._seen_latencies = 0
        self._latencies: list[float] = []
        self._steps_sum = 0
        self._flagged_count = 0
        self._confidence_counts = [0] * (len(CONFIDENCE_EDGES) - 1)
        self._class_counts = [0] * NUM_CLASSES

    def observe(
        self, *, latency_ms: float, steps: int, confidence: float, prediction: int, flagged: bool
    ) -> None:
        """Count one classified wafer."""
        bucket = min(
            max(bisect.bisect_right(CONFIDENCE_EDGES, confidence) - 1, 0),
            len(self._confidence_counts) - 1,
        )
        with self._lock:
            self._count += 1
            self._seen_latencies += 1
            if len(self._latencies) < LATENCY_SAMPLE:
                self._latencies.append(latency_ms)
            else:
                slot = self._rng.randrange(self._seen_latencies)
                if slot < LATENCY_SAMPLE:
                    self._latencies[slot] = latency_ms
            self._steps_sum += steps
            self._flagged_count += int(flagged)
            self._confidence_counts[bucket] += 1
            self._class_counts[prediction] += 1
        self._classified.labels(prediction=CLASS_NAMES[prediction]).inc()
        if flagged:
            self._flagged.inc()
        self._latency.observe(latency_ms / 1000)
        self._steps.observe(steps)
        self._confidence.observe(confidence)

    def observe_call(self, seconds: float) -> None:
        """Time of one whole classification call (one wafer, a batch or a G85 document)."""
        self._request.observe(seconds)

    def rejected(self, status: int) -> None:
        """Count a request refused with HTTP ``status`` (413, 422, 503)."""
        self._rejected.labels(status=str(status)).inc()

    def outbox_refused(self, results: int) -> None:
        """The outbox was full and refused ``results`` results: raise the alert gauge."""
        self._outbox_full.set(1)
        self._outbox_refused.inc(results)

    def outbox_accepted(self) -> None:
        """The outbox stored results again: clear the alert gauge."""
        self._outbox_full.set(0)

    def render(self) -> bytes:
        """The Prometheus text exposition of `registry`."""
        return generate_latest(self.registry)

    def window(self, now: datetime) -> MetricsWindow:
        """The window from the previous call (or the start) to ``now``; a new one begins."""
        with self._lock:
            start, count, latencies = self._start, self._count, self._latencies
            steps_sum, flagged = self._steps_sum, self._flagged_count
            confidence, classes = tuple(self._confidence_counts), tuple(self._class_counts)
            self._start = now
            self._reset()
        minutes = (now - start).total_seconds() / 60
        p50 = p90 = p99 = 0.0
        if latencies:
            p50, p90, p99 = (float(v) for v in np.percentile(latencies, [50, 90, 99]))
        return MetricsWindow(
            window_start=start,
            window_end=now,
            wafers_classified=count,
            throughput_per_minute=count / minutes if minutes > 0 else 0.0,
            latency_p50_ms=p50,
            latency_p90_ms=p90,
            latency_p99_ms=p99,
            avg_recursion_steps=steps_sum / count if count else 0.0,
            confidence_edges=CONFIDENCE_EDGES,
            confidence_counts=confidence,
            review_rate=flagged / count if count else 0.0,
            model_version=self._model_version(),
            outbox_depth=self._outbox_depth(),
            class_counts=classes,
        )
