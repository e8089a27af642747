"""The fab's sync agent against the cloud's real CloudSync server, both on PostgreSQL.

Every byte the fab sends goes through a recording TCP relay: the test proves that no raw wafer
id, lot id, reviewer, node-local path, hash key or map crosses when the policy forbids it, and
that maps cross when it allows. The relay also plays the unreachable cloud: labels uploaded
across an outage arrive exactly once. (The cloud's model registry is replaced by a stand-in
holding no champion: these tests need no MLflow, and the plan is then empty.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.services import tokens
from cloud.settings import CloudSettings
from cloud.storage import aggregates as cloud_aggregates
from cloud.storage import labels as cloud_labels
from cloud.storage.db import Database
from cloud.storage.db import migrate as migrate_cloud
from cloud.sync.server import start_sync_server
from fab_server import domain
from fab_server.app import FabServer
from fab_server.db import make_async_engine, session_factory
from fab_server.services import ingest, review
from fab_server.settings import FabSettings, SyncSettings
from fab_server.sync import agent
from fab_server.sync.client import CloudRefused, CloudUnavailable

pytestmark = pytest.mark.integration

Sessions = async_sessionmaker[AsyncSession]
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
MAP = domain.StoredMap(rows=8, cols=8, values=bytes((i * 7 + i // 8) % 3 for i in range(64)))


class NoChampion:
    """The cloud registry's stand-in: no version holds an alias."""

    def by_alias(self, alias: str) -> None:
        del alias


class Relay:
    """A TCP relay to the cloud that records every byte the fab sends."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sent = bytearray()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pump(reader, up_writer, record=True), self._pump(up_reader, writer, record=False)
        )

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, record: bool
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                if record:
                    self.sent += data
                sink.write(data)
                await sink.drain()
        sink.close()

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones: the cloud is unreachable."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()


@dataclasses.dataclass
class Cloud:
    db: Database
    token: str
    port: int


@pytest.fixture
def cloud_db(harness: Any) -> Iterator[Database]:
    """The cloud's database on its own migrated PostgreSQL schema."""
    url = harness.postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    schema = f"cloud_{uuid.uuid4().hex[:12]}"
    migrate_cloud(url, schema=schema)
    db = Database(url, schema)
    yield db
    db.dispose()
    with psycopg.connect(harness.postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest_asyncio.fixture
async def cloud(cloud_db: Database, tmp_path: Path) -> AsyncIterator[Cloud]:
    """The cloud's CloudSync server on its database, and a fab token of ``fab-1``."""
    settings = CloudSettings(work_dir=tmp_path / "cloud", sync_port=0)
    token = tokens.add_token(cloud_db, user="fab-1", role="fab")
    server, port = await start_sync_server(settings, cloud_db, NoChampion())  # type: ignore[arg-type]
    yield Cloud(cloud_db, token, port)
    await server.stop(None)


@pytest_asyncio.fixture
async def fab_sessions(fab_settings: FabSettings) -> AsyncIterator[Sessions]:
    """Sessions on the fab's PostgreSQL schema."""
    engine = make_async_engine(fab_settings.database_url, fab_settings.db_schema)
    yield session_factory(engine)
    await engine.dispose()


def _settings(
    base: FabSettings, cloud: Cloud, port: int, tmp_path: Path, **sync: Any
) -> FabSettings:
    values: dict[str, Any] = {
        "fab_id": "fab-1",
        "token": SecretStr(cloud.token),
        "cloud_grpc_target": f"127.0.0.1:{port}",
        "hash_key_file": tmp_path / "fab" / "sync-hash.key",
        "trusted_keys_dir": tmp_path / "fab" / "trusted-keys",
        "batch_size": 2,
        "timeout_s": 10.0,
        **sync,
    }
    return base.model_copy(update={"sync": SyncSettings(**values)})


def _result(sequence: int, lot: str) -> domain.Result:
    return domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"WAFER-RAW-{sequence:05d}",
        lot_id=lot,
        model_version="trm-v1.0.0",
        prediction=3,
        probabilities=(0.3, 0.1, 0.1, 0.3, 0.04, 0.04, 0.04, 0.04, 0.04),
        confidence=0.3,
        steps=2,
        latency_ms=10.0 + sequence,
        flagged=False,
        classified_at=START + timedelta(seconds=sequence),
        wafer_map=MAP,
    )


async def _reviewed(sessions: Sessions, settings: FabSettings, sequences: range, lot: str) -> None:
    """Store results and resolve each: confirmed, relabelled or unusable in turn."""
    results = [_result(s, lot) for s in sequences]
    await ingest.ingest_batch(
        sessions, node_id="edge-1", results=results, settings=settings, now=START
    )
    items = {i.sequence: i for i in await review.list_queue(sessions, limit=500)}
    for sequence in sequences:
        outcome = list(domain.ReviewOutcome)[sequence % 3]
        label = 5 if outcome is domain.ReviewOutcome.RELABELLED else None
        await review.resolve(
            sessions,
            item_id=items[sequence].id,
            resolution=domain.Resolution(outcome=outcome, true_label=label),
            user="eng-secret-reviewer",
            override=True,
        )


def _cloud_labels(cloud: Cloud) -> list[cloud_labels.ReviewedLabel]:
    with cloud.db.session() as session:
        return cloud_labels.reviewed_labels(session, fab_id="fab-1")


@pytest.mark.asyncio
async def test_a_full_sync_sends_nothing_the_policy_forbids(
    cloud: Cloud, fab_settings: FabSettings, fab_sessions: Sessions, tmp_path: Path
) -> None:
    relay = await Relay(cloud.port).start()
    settings = _settings(fab_settings, cloud, relay.port, tmp_path)
    await _reviewed(fab_sessions, settings, range(1, 10), "LOT-RAW-ITAR-1")
    summary = await agent.run_once(fab_sessions, settings)
    await relay.stop()
    assert summary["ok"], summary
    assert summary["labels"]["sent"] == summary["labels"]["accepted"] == 6
    stored = _cloud_labels(cloud)
    assert len(stored) == 6 and not any(label.has_map for label in stored)
    assert {label.review_reason for label in stored} == {domain.ReviewReason.LOW_CONFIDENCE}
    assert {label.model_version for label in stored} == {"trm-v1.0.0"}
    with cloud.db.session() as session:
        (aggregate,) = cloud_aggregates.aggregates_since(
            session, since=START.date(), fab_id="fab-1"
        )
        nodes = cloud_aggregates.fab_nodes(session, fab_id="fab-1")
    assert (aggregate.node_id, aggregate.wafers_classified, aggregate.flagged_count) == (
        "edge-1",
        9,
        9,
    )
    assert (aggregate.reviewed_count, aggregate.reviewed_correct_count) == (6, 3)
    assert nodes == ["edge-1"]
    wire = bytes(relay.sent)
    assert b"fab-1" in wire and b"edge-1" in wire  # the relay saw the traffic
    key = settings.sync.hash_key_file.read_bytes()
    forbidden = [
        *(f"WAFER-RAW-{s:05d}".encode() for s in range(1, 10)),
        b"LOT-RAW-ITAR-1",
        b"eng-secret-reviewer",
        str(settings.artifact_dir).encode(),
        str(settings.sync.hash_key_file).encode(),
        str(tmp_path).encode(),
        key,
        key.hex().encode(),
        MAP.values,
    ]
    leaked = [item for item in forbidden if item in wire]
    assert not leaked


@pytest.mark.asyncio
async def test_maps_cross_when_the_policy_allows_them(
    cloud: Cloud, fab_settings: FabSettings, fab_sessions: Sessions, tmp_path: Path
) -> None:
    relay = await Relay(cloud.port).start()
    settings = _settings(fab_settings, cloud, relay.port, tmp_path, maps_leave_premises=True)
    await _reviewed(fab_sessions, settings, range(1, 4), "LOT-RAW-ITAR-2")
    await agent.run_once(fab_sessions, settings)
    await relay.stop()
    stored = _cloud_labels(cloud)
    assert len(stored) == 2 and all(label.has_map for label in stored)
    assert {(label.rows, label.cols, label.map_bytes) for label in stored} == {(8, 8, MAP.values)}
    assert MAP.values in bytes(relay.sent)
    assert b"LOT-RAW-ITAR-2" not in bytes(relay.sent)


@pytest.mark.asyncio
async def test_an_outage_loses_and_duplicates_nothing(
    cloud: Cloud, fab_settings: FabSettings, fab_sessions: Sessions, tmp_path: Path
) -> None:
    relay = await Relay(cloud.port).start()
    settings = _settings(fab_settings, cloud, relay.port, tmp_path)
    await _reviewed(fab_sessions, settings, range(1, 7), "LOT-A")
    first = await agent.run_once(fab_sessions, settings)
    assert first["labels"]["watermark"] > 0
    await relay.stop()
    await _reviewed(fab_sessions, settings, range(7, 13), "LOT-B")
    with pytest.raises(CloudUnavailable):
        await agent.run_once(fab_sessions, settings)
    status = await agent.sync_status(fab_sessions)
    assert status["labels"]["label_id"] == first["labels"]["watermark"]
    assert status["last_run"]["ok"] is False
    relay = await Relay(cloud.port).start()
    back = _settings(fab_settings, cloud, relay.port, tmp_path)
    resumed = await agent.run_once(fab_sessions, back)
    again = await agent.run_once(fab_sessions, back)  # the overlap re-sends; the cloud keeps one
    await relay.stop()
    # Every label is sent again within the overlap window; the cloud stores each once.
    assert resumed["labels"]["sent"] == again["labels"]["sent"] == 8
    stored = _cloud_labels(cloud)
    assert len(stored) == 8
    assert len({(label.wafer_key, label.reviewed_at) for label in stored}) == 8


@pytest.mark.asyncio
async def test_a_fab_cannot_speak_for_another(
    cloud: Cloud, fab_settings: FabSettings, fab_sessions: Sessions, tmp_path: Path
) -> None:
    settings = _settings(fab_settings, cloud, cloud.port, tmp_path, fab_id="fab-2")
    with pytest.raises(CloudRefused, match="PERMISSION_DENIED"):
        await agent.run_once(fab_sessions, settings)
    assert (await agent.sync_status(fab_sessions))["labels"] is None


@pytest.mark.asyncio
async def test_the_fab_server_runs_the_sync_loop_when_enabled(
    cloud: Cloud,
    fab_settings: FabSettings,
    fab_sessions: Sessions,
    tmp_path: Path,
    wait_until: Any,
) -> None:
    settings = _settings(fab_settings, cloud, cloud.port, tmp_path, enabled=True)
    await _reviewed(fab_sessions, settings, range(1, 4), "LOT-LOOP")
    server = await FabServer(settings).start()
    try:
        await wait_until(lambda: len(_cloud_labels(cloud)) == 2, "the loop's first pass")
        for _ in range(500):  # the pass records itself once the plan is applied
            last = (await agent.sync_status(fab_sessions))["last_run"]
            if last is not None:
                break
            await asyncio.sleep(0.05)
    finally:
        await server.stop()
    assert last is not None and last["ok"] is True
