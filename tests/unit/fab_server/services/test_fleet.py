"""Models and nodes on SQLite: versions, newest metrics window and assignment per node."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.repository import distribution as distribution_repo
from fab_server.services import fleet, metrics

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
Sessions = async_sessionmaker[AsyncSession]


def _window(node_id: str, minute: int, p99: float) -> domain.EdgeMetricsRecord:
    return domain.EdgeMetricsRecord(
        node_id=node_id,
        window_start=NOW + timedelta(minutes=minute),
        window_end=NOW + timedelta(minutes=minute + 1),
        wafers_classified=60,
        throughput_per_minute=60.0 + minute,
        latency_p50_ms=2.0,
        latency_p90_ms=3.0,
        latency_p99_ms=p99,
        avg_recursion_steps=1.0,
        review_rate=0.05,
        model_version="cnn-v2.0.0",
        outbox_depth=0,
    )


@pytest.mark.asyncio
async def test_overview_joins_versions_newest_metrics_and_assignments(sessions: Sessions) -> None:
    async with sessions.begin() as session:
        for node_id, installed in (("edge-1", "cnn-v2.0.0"), ("edge-2", "trm-v1.1.0")):
            await distribution_repo.record_node_versions(
                session, node_id=node_id, installed_version=installed, previous_version="", now=NOW
            )
        for node_id, version in (("*", "cnn-v2.0.0"), ("edge-2", "trm-v1.1.0")):
            await distribution_repo.upsert_assignment(
                session,
                assignment=domain.Assignment(node_id=node_id, version=version, updated_at=NOW),
            )
    received = NOW + timedelta(minutes=10)
    for minute, p99 in ((0, 9.0), (2, 4.5), (1, 7.0)):
        await metrics.push_metrics(sessions, record=_window("edge-1", minute, p99), now=received)
    # A node that only pushed metrics is listed too.
    await metrics.push_metrics(sessions, record=_window("edge-3", 0, 3.0), now=received)

    overview = await fleet.fleet_overview(sessions)
    assert overview.default is not None and overview.default.version == "cnn-v2.0.0"
    nodes = {n.node_id: n for n in overview.nodes}
    assert list(nodes) == ["edge-1", "edge-2", "edge-3"]
    one, two, three = nodes["edge-1"], nodes["edge-2"], nodes["edge-3"]
    assert one.metrics is not None and one.metrics.latency_p99_ms == 4.5  # newest window
    assert one.metrics.throughput_per_minute == 62.0
    assert one.metrics_received_at == received
    assert (one.installed_version, one.last_seen) == ("cnn-v2.0.0", NOW)
    assert one.assignment is not None and one.default_assignment
    assert two.metrics is None and two.metrics_received_at is None
    assert two.assignment is not None and two.assignment.version == "trm-v1.1.0"
    assert not two.default_assignment
    assert (three.installed_version, three.last_seen) == ("", None)


@pytest.mark.asyncio
async def test_empty_fleet(sessions: Sessions) -> None:
    overview = await fleet.fleet_overview(sessions)
    assert (overview.nodes, overview.default) == ([], None)
