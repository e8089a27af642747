"""The node's measurements: rolling windows for the fab and Prometheus series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.metrics import CONFIDENCE_EDGES, LATENCY_SAMPLE, EdgeMetrics, MetricsWindow

T0 = datetime(2025, 8, 31, 10, 0, tzinfo=UTC)


def _metrics(depth: int = 0) -> EdgeMetrics:
    return EdgeMetrics(
        model_version=lambda: "trm-v1.0.0", outbox_depth=lambda: depth, start=T0, seed=0
    )


def _samples(metrics: EdgeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_window_summarises_what_was_observed() -> None:
    metrics = _metrics(depth=7)
    for i in range(100):
        metrics.observe(
            latency_ms=float(i + 1),
            steps=1 + i % 3,
            confidence=0.95 if i % 10 else 0.55,
            prediction=i % 2,
            flagged=i % 10 == 0,
        )
    window = metrics.window(T0 + timedelta(minutes=2))
    assert window == MetricsWindow(
        window_start=T0,
        window_end=T0 + timedelta(minutes=2),
        wafers_classified=100,
        throughput_per_minute=50.0,
        latency_p50_ms=pytest.approx(50.5),
        latency_p90_ms=pytest.approx(90.1),
        latency_p99_ms=pytest.approx(99.01),
        avg_recursion_steps=pytest.approx(1.99),
        confidence_edges=CONFIDENCE_EDGES,
        confidence_counts=(0, 0, 0, 0, 0, 10, 0, 0, 0, 90),
        review_rate=0.1,
        model_version="trm-v1.0.0",
        outbox_depth=7,
        class_counts=(50, 50, 0, 0, 0, 0, 0, 0, 0),
    )


def test_each_window_starts_where_the_last_ended_and_starts_empty() -> None:
    metrics = _metrics()
    metrics.observe(latency_ms=3.0, steps=1, confidence=0.9, prediction=4, flagged=False)
    first = metrics.window(T0 + timedelta(seconds=60))
    second = metrics.window(T0 + timedelta(seconds=90))
    assert first.wafers_classified == 1
    assert second.window_start == first.window_end
    assert second.wafers_classified == 0
    assert second.latency_p99_ms == 0.0 and second.avg_recursion_steps == 0.0
    assert second.review_rate == 0.0 and second.throughput_per_minute == 0.0
    assert sum(second.confidence_counts) == 0 and sum(second.class_counts) == 0


def test_confidence_buckets_include_their_lower_edge_and_the_last_includes_one() -> None:
    metrics = _metrics()
    for confidence in (0.0, 0.1, 0.5999, 0.6, 1.0):
        metrics.observe(latency_ms=1.0, steps=1, confidence=confidence, prediction=0, flagged=False)
    counts = metrics.window(T0 + timedelta(minutes=1)).confidence_counts
    assert counts == (1, 1, 0, 0, 0, 1, 1, 0, 0, 1)


def test_latency_memory_is_bounded_by_the_reservoir() -> None:
    metrics = _metrics()
    for i in range(LATENCY_SAMPLE + 5000):
        metrics.observe(
            latency_ms=float(i % 100), steps=1, confidence=0.9, prediction=0, flagged=False
        )
    assert len(metrics._latencies) == LATENCY_SAMPLE
    window = metrics.window(T0 + timedelta(minutes=1))
    assert window.wafers_classified == LATENCY_SAMPLE + 5000
    assert 45 <= window.latency_p50_ms <= 54  # a uniform sample keeps the distribution


def test_prometheus_series_count_classes_flags_rejections_and_the_outbox() -> None:
    metrics = _metrics(depth=3)
    metrics.observe(latency_ms=4.0, steps=2, confidence=0.9, prediction=4, flagged=False)
    metrics.observe(latency_ms=6.0, steps=3, confidence=0.4, prediction=4, flagged=True)
    metrics.rejected(422)
    metrics.outbox_refused(2)
    samples = _samples(metrics)
    assert samples[("edge_wafers_classified_total", (("prediction", "Edge-Ring"),))] == 2
    assert samples[("edge_wafers_classified_total", (("prediction", "Scratch"),))] == 0
    assert samples[("edge_wafers_flagged_total", ())] == 1
    assert samples[("edge_inference_latency_seconds_count", ())] == 2
    assert samples[("edge_inference_latency_seconds_sum", ())] == pytest.approx(0.010)
    assert samples[("edge_recursion_steps_sum", ())] == 5
    assert samples[("edge_requests_rejected_total", (("status", "422"),))] == 1
    assert samples[("edge_outbox_depth", ())] == 3
    assert samples[("edge_outbox_full", ())] == 1
    assert samples[("edge_outbox_refused_results_total", ())] == 2
    assert samples[("edge_model_info", (("version", "trm-v1.0.0"),))] == 1
    metrics.outbox_accepted()
    assert _samples(metrics)[("edge_outbox_full", ())] == 0


def test_two_nodes_in_one_process_do_not_share_series() -> None:
    first, second = _metrics(), _metrics()
    first.observe(latency_ms=1.0, steps=1, confidence=0.9, prediction=0, flagged=True)
    assert _samples(first)[("edge_wafers_flagged_total", ())] == 1
    assert _samples(second)[("edge_wafers_flagged_total", ())] == 0
