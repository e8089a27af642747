"""The CloudSync gRPC server on PostgreSQL and the real `mlflow server`: fab tokens, idempotent
uploads, item validation, and a deployment plan whose artifacts verify against the cloud's key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
import pytest_asyncio

from cloud.registry.importer import import_model_folder
from cloud.registry.registry import ModelRegistry
from cloud.services.tokens import add_token
from cloud.settings import CloudSettings
from cloud.storage import aggregates, labels
from cloud.storage.db import Database
from cloud.sync.server import start_sync_server
from wafercore.signature import verify_digest
from waferplatform.v1 import cloud_pb2, cloud_pb2_grpc  # type: ignore[import-not-found]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio]

SOURCE_MODEL = Path(__file__).resolve().parents[4] / "models" / "cnn-v1.1.0"
VERSION = "cnn-v9.1.0"
NOW = datetime.now(UTC).replace(microsecond=0)


def keyed(value: str) -> str:
    """A keyed hash as a fab makes it."""
    return hmac.new(b"fab-secret", value.encode(), hashlib.sha256).hexdigest()


def label(wafer: str, *, reviewer: str = "ana", true: int = 3, pred: int = 3) -> Any:
    message = cloud_pb2.ReviewedLabel(
        wafer_key=keyed(wafer),
        lot_key=keyed("LOT-1"),
        reviewer_key=keyed(reviewer),
        true_label=true,
        predicted_label=pred,
        model_version="cnn-v1.1.0",
        confidence=0.9,
        review_reason=4,
    )
    message.reviewed_at.FromDatetime(NOW)
    return message


def aggregate(node: str, *, wafers: int = 10, version: str = "cnn-v1.1.0") -> Any:
    counts = [wafers] + [0] * 8
    return cloud_pb2.DailyAggregate(
        node_id=node,
        date=NOW.date().isoformat(),
        model_version=version,
        class_counts=counts,
        wafers_classified=wafers,
        flagged_count=1,
        latency_p50_ms=3.0,
        latency_p90_ms=5.0,
        latency_p99_ms=9.0,
        avg_recursion_steps=1.2,
    )


@pytest.fixture
def db(cloud_settings: CloudSettings) -> Iterator[Database]:
    database = Database(cloud_settings.db_url, cloud_settings.db_schema)
    yield database
    database.dispose()


@pytest.fixture
def registry(cloud_settings: CloudSettings, db: Database, tmp_path: Path) -> ModelRegistry:
    """A registry whose champion is a copy of the source model as ``VERSION``."""
    registry = ModelRegistry(cloud_settings, db)
    folder = tmp_path / VERSION
    shutil.copytree(SOURCE_MODEL, folder)
    manifest = json.loads((folder / "model.json").read_text())
    manifest["version"] = VERSION
    (folder / "model.json").write_text(json.dumps(manifest))
    import_model_folder(registry, cloud_settings, folder, actor="t", reason="r", golden=16)
    registry.set_alias(VERSION, "champion", actor="t", reason="r")
    return registry


@pytest_asyncio.fixture
async def stub(
    cloud_settings: CloudSettings, db: Database, registry: ModelRegistry
) -> AsyncIterator[Any]:
    server, port = await start_sync_server(cloud_settings, db, registry)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield cloud_pb2_grpc.CloudSyncStub(channel)
    finally:
        await channel.close()
        await server.stop(1)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def test_a_call_needs_a_fab_token_for_its_own_fab(stub: Any, db: Database) -> None:
    fab = await asyncio.to_thread(add_token, db, user="fab-1", role="fab")
    person = await asyncio.to_thread(add_token, db, user="ana", role="admin")
    request = cloud_pb2.GetDeploymentsRequest(fab_id="fab-1")
    for metadata, code in [
        ([], grpc.StatusCode.UNAUTHENTICATED),
        (bearer("not-a-token"), grpc.StatusCode.UNAUTHENTICATED),
        ([("authorization", f"Basic {fab}")], grpc.StatusCode.UNAUTHENTICATED),
        (bearer(person), grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetDeployments(request, metadata=metadata)
        assert refused.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await stub.GetDeployments(
            cloud_pb2.GetDeploymentsRequest(fab_id="fab-2"), metadata=bearer(fab)
        )
    assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "fab-2" in other.value.details()


async def test_a_retried_upload_is_stored_once_and_gets_its_first_ack(
    stub: Any, db: Database
) -> None:
    token = await asyncio.to_thread(add_token, db, user="fab-1", role="fab")
    first = cloud_pb2.UploadLabelsRequest(
        fab_id="fab-1", idempotency_key="batch-1", labels=[label("W1"), label("W2")]
    )
    ack = await stub.UploadLabels(first, metadata=bearer(token))
    assert (ack.idempotency_key, ack.accepted, ack.rejected) == ("batch-1", 2, 0)
    again = await stub.UploadLabels(first, metadata=bearer(token))
    assert (again.accepted, again.rejected) == (2, 0)
    # The same label again under another key (a fab's overlap window) is stored once too.
    overlap = cloud_pb2.UploadLabelsRequest(
        fab_id="fab-1", idempotency_key="batch-2", labels=[label("W2"), label("W3")]
    )
    assert (await stub.UploadLabels(overlap, metadata=bearer(token))).accepted == 2
    with db.session() as session:
        stored = labels.reviewed_labels(session)
    assert sorted(s.wafer_key for s in stored) == sorted(keyed(w) for w in ("W1", "W2", "W3"))
    assert {(s.fab_id, s.review_reason, s.predicted_label) for s in stored} == {
        ("fab-1", 4, "Edge-Loc")
    }


async def test_bad_items_are_refused_and_counted_a_bad_envelope_is_invalid_argument(
    stub: Any, db: Database
) -> None:
    token = await asyncio.to_thread(add_token, db, user="fab-1", role="fab")
    raw = label("W1")
    raw.wafer_key = "WAFER-0001"  # a raw id must never be stored
    bad_class = label("W2", true=42)
    request = cloud_pb2.UploadLabelsRequest(
        fab_id="fab-1", idempotency_key="k", labels=[raw, bad_class, label("W3")]
    )
    ack = await stub.UploadLabels(request, metadata=bearer(token))
    assert (ack.accepted, ack.rejected) == (1, 2)
    with db.session() as session:
        assert [s.wafer_key for s in labels.reviewed_labels(session)] == [keyed("W3")]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.UploadLabels(
            cloud_pb2.UploadLabelsRequest(fab_id="fab-1", idempotency_key=""),
            metadata=bearer(token),
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("idempotency_key:")

    broken = aggregate("node-a")
    broken.wafers_classified = 99  # not the sum of class_counts
    agg_ack = await stub.UploadAggregates(
        cloud_pb2.UploadAggregatesRequest(
            fab_id="fab-1", idempotency_key="a1", aggregates=[broken, aggregate("node-b")]
        ),
        metadata=bearer(token),
    )
    assert (agg_ack.accepted, agg_ack.rejected) == (1, 1)


async def test_a_later_aggregate_of_the_same_day_replaces_the_earlier(
    stub: Any, db: Database
) -> None:
    token = await asyncio.to_thread(add_token, db, user="fab-1", role="fab")
    for key, wafers in (("a1", 10), ("a2", 25)):
        await stub.UploadAggregates(
            cloud_pb2.UploadAggregatesRequest(
                fab_id="fab-1", idempotency_key=key, aggregates=[aggregate("node-a", wafers=wafers)]
            ),
            metadata=bearer(token),
        )
    with db.session() as session:
        stored = aggregates.aggregates_since(session, since=date(2000, 1, 1))
        assert aggregates.fab_nodes(session, fab_id="fab-1") == ["node-a"]
    assert [(a.node_id, a.wafers_classified) for a in stored] == [("node-a", 25)]


async def test_the_plan_puts_every_known_node_on_the_champion_with_a_verifiable_signature(
    stub: Any, db: Database, cloud_settings: CloudSettings
) -> None:
    token = await asyncio.to_thread(add_token, db, user="fab-1", role="fab")
    empty = await stub.GetDeployments(
        cloud_pb2.GetDeploymentsRequest(fab_id="fab-1"), metadata=bearer(token)
    )
    assert list(empty.deployments) == []
    await stub.UploadAggregates(
        cloud_pb2.UploadAggregatesRequest(
            fab_id="fab-1",
            idempotency_key="a",
            aggregates=[aggregate("node-a"), aggregate("node-b")],
        ),
        metadata=bearer(token),
    )
    plan = await stub.GetDeployments(
        cloud_pb2.GetDeploymentsRequest(fab_id="fab-1"), metadata=bearer(token)
    )
    assert plan.fab_id == "fab-1"
    assert [(d.node_id, d.model_version, d.stage, d.rollout_id) for d in plan.deployments] == [
        ("node-a", VERSION, 2, ""),
        ("node-b", VERSION, 2, ""),
    ]
    entry = plan.deployments[0]
    assert entry.size_bytes > 0
    keys = cloud_settings.work_dir / "keys"
    verify_digest(bytes.fromhex(entry.sha256), entry.signature, entry.signing_key_id, keys)
