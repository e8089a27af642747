"""The integration harness talks to the real PostgreSQL and Redis it is configured for."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import redis

pytestmark = pytest.mark.integration


def test_postgres_round_trip_in_rolled_back_transaction(harness) -> None:
    table = f"harness_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(harness.postgres_url, connect_timeout=5) as conn:
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text NOT NULL)")
            cur.executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(1, "center"), (2, "donut")])
            cur.execute(f"SELECT name FROM {table} ORDER BY id")
            assert [r[0] for r in cur.fetchall()] == ["center", "donut"]
            with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                cur.execute(f"INSERT INTO {table} VALUES (1, 'again')")
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s)", (table,))
            assert cur.fetchone() == (None,), "the rolled-back table must not exist"


def test_redis_round_trip(harness) -> None:
    client = redis.Redis.from_url(harness.redis_url, socket_timeout=5)
    key = f"harness:{uuid.uuid4().hex}"
    try:
        assert client.set(key, "edge-ring", ex=30)
        assert client.get(key) == b"edge-ring"
        assert 0 < client.ttl(key) <= 30
        assert client.incr(f"{key}:n") == 1
    finally:
        client.delete(key, f"{key}:n")
    assert client.exists(key) == 0
