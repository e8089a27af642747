"""PushMetrics storage on SQLite: validation names the field; a window is stored once."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.services import metrics
from wafercore.errors import InvalidInput

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


def _window(minute: int = 0, **changes: Any) -> domain.EdgeMetricsRecord:
    base = domain.EdgeMetricsRecord(
        node_id="edge-1",
        window_start=START + timedelta(minutes=minute),
        window_end=START + timedelta(minutes=minute + 1),
        wafers_classified=120,
        throughput_per_minute=120.0,
        latency_p50_ms=8.0,
        latency_p90_ms=15.0,
        latency_p99_ms=31.0,
        avg_recursion_steps=2.4,
        review_rate=0.08,
        model_version="trm-v1.0.0",
        outbox_depth=0,
        confidence_edges=(0.0, 0.5, 1.0),
        confidence_counts=(10, 110),
        class_counts=(100, 2, 2, 4, 4, 2, 2, 2, 2),
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.asyncio
async def test_a_window_is_stored_once(sessions: Sessions) -> None:
    assert await metrics.push_metrics(sessions, record=_window(0)) is True
    assert await metrics.push_metrics(sessions, record=_window(0)) is False  # redelivery
    assert await metrics.push_metrics(sessions, record=_window(1)) is True
    stored = await metrics.node_metrics(sessions, node_id="edge-1")
    assert [w.window_end for w in stored] == [_window(1).window_end, _window(0).window_end]
    assert stored[1] == _window(0)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"node_id": ""}, "node_id"),
        ({"window_end": START}, "window_end"),
        ({"latency_p99_ms": -1.0}, "latency_p99_ms"),
        ({"latency_p99_ms": float("nan")}, "latency_p99_ms"),
        ({"latency_p50_ms": 20.0}, "latency_p90_ms"),
        ({"review_rate": 1.5}, "review_rate"),
        ({"confidence_counts": (1, 2, 3)}, "confidence_histogram.bucket_edges"),
        ({"confidence_edges": (0.0, 0.7, 0.5)}, "confidence_histogram.bucket_edges[2]"),
        ({"class_counts": (1, 2)}, "class_counts"),
        ({"wafers_classified": 2**64 - 1}, "wafers_classified"),
    ],
)
def test_an_invalid_window_names_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        metrics.validate_metrics(_window(**changes))
    assert caught.value.field == field
