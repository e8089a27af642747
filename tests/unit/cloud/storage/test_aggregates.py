"""Daily aggregates on a migrated SQLite cloud database: replacement on the natural key,
filters, the nodes each fab has reported."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta

import pytest

from cloud.storage import aggregates
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.db import Database

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
DAY = date(2026, 11, 1)


def aggregate(
    node: str = "node-a",
    day: date = DAY,
    version: str = "v1",
    fab: str = "fab-1",
    counts: tuple[int, ...] = (5, 1, 0, 0, 0, 0, 0, 0, 2),
    p99: float = 12.5,
) -> DailyAggregate:
    """One node's day: the counts, with flagged/reviewed figures derived from them."""
    return DailyAggregate(
        fab_id=fab,
        node_id=node,
        day=day,
        model_version=version,
        class_counts=counts,
        wafers_classified=sum(counts),
        flagged_count=2,
        reviewed_count=1,
        reviewed_correct_count=1,
        latency_p50_ms=3.0,
        latency_p90_ms=7.25,
        latency_p99_ms=p99,
        avg_recursion_steps=4.5,
        novelty_quantiles=tuple(0.1 + 0.01 * i for i in range(19)),
        novelty_scored=6,
    )


def test_an_aggregate_comes_back_as_uploaded(db: Database) -> None:
    stored = aggregate()
    with db.session() as session:
        aggregates.upsert_aggregates(session, aggregates=[stored], now=T0)
    with db.session() as session:
        assert aggregates.aggregates_since(session, since=DAY) == [stored]
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored.node_id = "other"  # type: ignore[misc]


def test_a_later_upload_of_the_same_key_replaces_the_earlier(db: Database) -> None:
    with db.session() as session:
        aggregates.upsert_aggregates(session, aggregates=[aggregate()], now=T0)
    later = aggregate(counts=(50, 10, 0, 0, 0, 0, 0, 0, 20), p99=31.0)
    with db.session() as session:
        aggregates.upsert_aggregates(session, aggregates=[later], now=T0 + timedelta(hours=2))
    with db.session() as session:
        assert aggregates.aggregates_since(session, since=DAY) == [later]
    # Another version of the same node and day is another row, not a replacement.
    other = aggregate(version="v2")
    with db.session() as session:
        aggregates.upsert_aggregates(session, aggregates=[other], now=T0)
    with db.session() as session:
        found = aggregates.aggregates_since(session, since=DAY)
    assert sorted(found, key=lambda a: a.model_version) == [later, other]


def test_aggregates_are_filtered_by_day_fab_and_version_oldest_first(db: Database) -> None:
    rows = [
        aggregate(node="node-b", day=DAY + timedelta(days=1)),
        aggregate(node="node-a", day=DAY),
        aggregate(node="node-a", day=DAY - timedelta(days=1)),
        aggregate(node="node-x", day=DAY, fab="fab-2"),
        aggregate(node="node-a", day=DAY + timedelta(days=1), version="v2"),
    ]
    with db.session() as session:
        aggregates.upsert_aggregates(session, aggregates=rows, now=T0)
    with db.session() as session:
        since = aggregates.aggregates_since(session, since=DAY)
        fab1 = aggregates.aggregates_since(session, since=DAY, fab_id="fab-1")
        v1 = aggregates.aggregates_since(session, since=DAY, model_versions=["v1"])
        none = aggregates.aggregates_since(session, since=DAY, model_versions=[])
    assert [(a.day, a.fab_id, a.node_id) for a in since] == [
        (DAY, "fab-1", "node-a"),
        (DAY, "fab-2", "node-x"),
        (DAY + timedelta(days=1), "fab-1", "node-a"),
        (DAY + timedelta(days=1), "fab-1", "node-b"),
    ]
    assert rows[2] not in since
    assert {a.fab_id for a in fab1} == {"fab-1"} and len(fab1) == 3
    assert {a.model_version for a in v1} == {"v1"} and len(v1) == 3
    assert none == []


def test_the_nodes_of_each_fab_are_those_it_reported(db: Database) -> None:
    with db.session() as session:
        assert aggregates.fab_nodes(session, fab_id="fab-1") == []
        assert aggregates.fabs(session) == []
        aggregates.upsert_aggregates(
            session,
            aggregates=[
                aggregate(node="node-b"),
                aggregate(node="node-a"),
                aggregate(node="node-a", version="v2"),
                aggregate(node="node-z", fab="fab-2"),
            ],
            now=T0,
        )
    with db.session() as session:
        # Uploading a node again (another day) keeps it once.
        aggregates.upsert_aggregates(
            session, aggregates=[aggregate(node="node-a", day=DAY + timedelta(days=1))], now=T0
        )
    with db.session() as session:
        assert aggregates.fab_nodes(session, fab_id="fab-1") == ["node-a", "node-b"]
        assert aggregates.fab_nodes(session, fab_id="fab-2") == ["node-z"]
        assert aggregates.fab_nodes(session, fab_id="fab-3") == []
        assert aggregates.fabs(session) == ["fab-1", "fab-2"]


def test_an_empty_upload_stores_nothing(db: Database) -> None:
    with db.session() as session:
        aggregates.upsert_aggregates(session, aggregates=[], now=T0)
    with db.session() as session:
        assert aggregates.aggregates_since(session, since=date(2000, 1, 1)) == []
        assert aggregates.fabs(session) == []
