"""The sync agent against the tests' recording CloudSync peer (`cloud_peer`) on SQLite:
uploads, watermarks and their resumption, lost acks, and applying deployment plans."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import cli, domain
from fab_server.services import distribution
from fab_server.settings import FabSettings
from fab_server.sync import agent, storage
from fab_server.sync.client import CloudClient, CloudRefused, CloudUnavailable, SyncError
from fab_server.sync.policy import keyed_hash
from fab_server.sync.records import LabelRecord

from .cloud_peer import ArtifactShop, RecordingCloudPeer, plan, serve
from .conftest import NOW, make_result

Sessions = async_sessionmaker[AsyncSession]
Store = Callable[..., Awaitable[domain.IngestOutcome]]
Verdict = Callable[..., Awaitable[domain.ReviewItem]]
LATER = NOW + timedelta(hours=1)  # past the overlap window of the verdicts given at NOW
BASELINE, CANDIDATE = "trm-v1.0.0", "trm-v1.1.0"
CANARY, PRODUCTION = 1, 2


class Cloud:
    """The peer, its port, the artifact shop, and a client factory for the fab's settings."""

    def __init__(self, peer: RecordingCloudPeer, port: int, shop: ArtifactShop) -> None:
        self.peer, self.port, self.shop = peer, port, shop

    def settings(self, base: FabSettings, **sync: Any) -> FabSettings:
        """``base`` pointed at this cloud."""
        changed = base.sync.model_copy(
            update={"cloud_grpc_target": f"127.0.0.1:{self.port}", "timeout_s": 5.0, **sync}
        )
        return base.model_copy(update={"sync": changed})

    def client(self, settings: FabSettings) -> CloudClient:
        """A CloudClient whose HTTP goes to the shop."""
        return CloudClient(settings.sync, http_transport=httpx.MockTransport(self.shop.handler))


@pytest_asyncio.fixture
async def cloud(fab_settings: FabSettings) -> AsyncIterator[Cloud]:
    """The recording peer, serving on loopback."""
    assert fab_settings.sync.token is not None
    peer = RecordingCloudPeer(token=fab_settings.sync.token.get_secret_value(), fab_id="fab-1")
    server, port = await serve(peer)
    shop = ArtifactShop(key_id="cloud-test")
    shop.pin(fab_settings.sync.trusted_keys_dir)
    yield Cloud(peer, port, shop)
    await server.stop(None)


async def _run(sessions: Sessions, cloud: Cloud, settings: FabSettings, **kw: Any) -> Any:
    async with cloud.client(settings) as client:
        return await agent.run_once(sessions, settings, client=client, **kw)


async def _five_labels(store: Store, verdict: Verdict) -> None:
    await store([make_result(s) for s in range(1, 7)])
    for sequence in range(1, 6):
        await verdict("edge-1", sequence, domain.ReviewOutcome.CONFIRMED)
    await verdict("edge-1", 6, domain.ReviewOutcome.UNUSABLE)


@pytest.mark.asyncio
async def test_a_pass_uploads_in_batches_and_a_second_sends_nothing_new(
    sessions: Sessions, cloud: Cloud, fab_settings: FabSettings, store: Store, verdict: Verdict
) -> None:
    settings = cloud.settings(fab_settings)
    await _five_labels(store, verdict)
    summary = await _run(sessions, cloud, settings, now=LATER)
    assert summary["ok"] and summary["fab_id"] == "fab-1"
    assert summary["labels"] == {
        "sent": 5,
        "accepted": 5,
        "rejected": 0,
        "batches": 3,
        "watermark": 5,
    }
    assert summary["aggregates"]["sent"] == 1 and summary["deployments"]["nodes"] == 0
    assert len(cloud.peer.labels) == 5
    (aggregate,) = cloud.peer.aggregates.values()
    assert (aggregate.node_id, aggregate.wafers_classified, aggregate.flagged_count) == (
        "edge-1",
        6,
        6,
    )
    assert (aggregate.reviewed_count, aggregate.reviewed_correct_count) == (5, 5)
    wire = b"".join(r.SerializeToString() for r in cloud.peer.requests)
    assert b"WAFER-0001" not in wire and b"LOT-SECRET-7" not in wire and b"eng-alice" not in wire
    assert keyed_hash(b"k" * 32, "WAFER-0001").encode() in wire
    # Nothing new, the verdicts are out of the overlap window: no label is sent again.
    again = await _run(sessions, cloud, settings, now=LATER + timedelta(minutes=5))
    assert again["labels"]["sent"] == 0 and again["aggregates"]["sent"] == 1
    status = await agent.sync_status(sessions)
    assert status["labels"]["label_id"] == 5
    assert status["last_run"]["ok"] is True


@pytest.mark.asyncio
async def test_the_overlap_window_re_sends_recent_labels_and_the_cloud_keeps_one(
    sessions: Sessions, cloud: Cloud, fab_settings: FabSettings, store: Store, verdict: Verdict
) -> None:
    settings = cloud.settings(fab_settings)
    await _five_labels(store, verdict)
    await _run(sessions, cloud, settings, now=NOW + timedelta(seconds=30))
    again = await _run(sessions, cloud, settings, now=NOW + timedelta(seconds=60))
    assert again["labels"]["sent"] == 5 and again["labels"]["accepted"] == 5  # first acks
    assert len(cloud.peer.labels) == 5


@pytest.mark.asyncio
async def test_maps_cross_only_when_the_policy_allows(
    sessions: Sessions, cloud: Cloud, fab_settings: FabSettings, store: Store, verdict: Verdict
) -> None:
    await _five_labels(store, verdict)
    await _run(sessions, cloud, cloud.settings(fab_settings), now=LATER)
    assert not any(lab.HasField("wafer_map") for lab in cloud.peer.labels.values())
    cloud.peer.labels.clear()
    await storage_reset(sessions)
    allowed = cloud.settings(fab_settings, maps_leave_premises=True)
    await _run(sessions, cloud, allowed, now=LATER)
    assert all(lab.HasField("wafer_map") for lab in cloud.peer.labels.values())
    assert len(cloud.peer.labels) == 5


async def storage_reset(sessions: Sessions) -> None:
    """Forget the label watermark (as a fresh fab would)."""
    async with sessions() as session, session.begin():
        await storage.set_state(session, name=agent.LABELS_STATE, value={"label_id": 0}, now=NOW)


@pytest.mark.asyncio
async def test_a_lost_ack_is_resent_with_the_same_key_and_stored_once(
    sessions: Sessions, cloud: Cloud, fab_settings: FabSettings, store: Store, verdict: Verdict
) -> None:
    settings = cloud.settings(fab_settings)
    await _five_labels(store, verdict)
    cloud.peer.lose_ack_of_call = 2  # the second batch is stored, its ack never arrives
    with pytest.raises(CloudUnavailable, match="unreachable"):
        await _run(sessions, cloud, settings, now=LATER)
    status = await agent.sync_status(sessions)
    assert status["labels"]["label_id"] == 2  # only the first batch was acknowledged
    assert status["last_run"]["ok"] is False and "unreachable" in status["last_run"]["error"]
    keys = [r.idempotency_key for r in cloud.peer.requests]
    summary = await _run(sessions, cloud, settings, now=LATER)
    assert summary["labels"]["sent"] == 3 and summary["labels"]["watermark"] == 5
    assert cloud.peer.requests[len(keys)].idempotency_key == keys[1]  # the same batch, same key
    assert len(cloud.peer.labels) == 5


@pytest.mark.asyncio
async def test_an_unreachable_cloud_raises_and_moves_no_watermark(
    sessions: Sessions, fab_settings: FabSettings, store: Store, verdict: Verdict, cloud: Cloud
) -> None:
    await _five_labels(store, verdict)
    nowhere = fab_settings.sync.model_copy(
        update={"cloud_grpc_target": "127.0.0.1:1", "timeout_s": 2.0}
    )
    with pytest.raises(CloudUnavailable, match="unreachable"):
        await agent.run_once(sessions, fab_settings.model_copy(update={"sync": nowhere}))
    assert (await agent.sync_status(sessions))["labels"] is None
    summary = await _run(sessions, cloud, cloud.settings(fab_settings), now=LATER)
    assert summary["labels"]["sent"] == 5


@pytest.mark.asyncio
async def test_a_wrong_token_is_refused(
    sessions: Sessions, cloud: Cloud, fab_settings: FabSettings
) -> None:
    settings = cloud.settings(fab_settings, token=SecretStr("not-the-token-of-this-fab-0000"))
    with pytest.raises(CloudRefused, match="UNAUTHENTICATED"):
        await _run(sessions, cloud, settings, now=LATER)


async def _assignments(sessions: Sessions) -> dict[str, tuple[str, str, int]]:
    async with sessions() as session:
        found = await storage.own_assignments(session, node_ids=["edge-1", "edge-2", "edge-3"])
    return {n: (a.version, a.rollout_id, a.stage) for n, a in found.items()}


@pytest.mark.asyncio
async def test_a_plan_is_verified_registered_and_assigned(
    sessions: Sessions, cloud: Cloud, fab_settings: FabSettings
) -> None:
    settings = cloud.settings(fab_settings)
    shop = cloud.shop
    shop.add(BASELINE, b"baseline artifact bytes")
    shop.add(CANDIDATE, b"candidate artifact bytes")
    cloud.peer.plan = plan(
        "fab-1",
        NOW,
        [
            shop.entry("edge-1", CANDIDATE, CANARY, "ro-1"),
            shop.entry("edge-2", BASELINE, PRODUCTION, "ro-1"),
            shop.entry("edge-3", BASELINE, PRODUCTION, "ro-1"),
        ],
    )
    summary = await _run(sessions, cloud, settings, now=LATER)
    deployments = summary["deployments"]
    assert deployments["registered"] == [BASELINE, CANDIDATE]
    assert (deployments["assigned"], deployments["rejected"]) == (3, [])
    assert await _assignments(sessions) == {
        "edge-1": (CANDIDATE, "ro-1", CANARY),
        "edge-2": (BASELINE, "ro-1", PRODUCTION),
        "edge-3": (BASELINE, "ro-1", PRODUCTION),
    }
    artifact = await distribution.find_artifact(sessions, version=CANDIDATE, artifact_format="")
    assert Path(artifact.path).read_bytes() == b"candidate artifact bytes"
    assert artifact.signature == shop.signatures[CANDIDATE]
    assert all(
        r.headers["authorization"] == "Bearer fab-token-of-the-tests-000000001"
        for r in shop.requests
    )
    # The same plan again: nothing downloaded, nothing reassigned.
    fetched = len(shop.requests)
    again = await _run(sessions, cloud, settings, now=LATER)
    assert (again["deployments"]["registered"], again["deployments"]["unchanged"]) == ([], 3)
    assert len(shop.requests) == fetched
    # Rolled back: every node on the baseline, no rollout; the canary node switches back.
    cloud.peer.plan = plan(
        "fab-1",
        NOW + timedelta(hours=2),
        [shop.entry(n, BASELINE, PRODUCTION) for n in ("edge-1", "edge-2", "edge-3")],
    )
    await _run(sessions, cloud, settings, now=LATER)
    assert set((await _assignments(sessions)).values()) == {(BASELINE, "", PRODUCTION)}
    async with sessions() as session:
        back = (await storage.own_assignments(session, node_ids=["edge-1"]))["edge-1"]
    assert back.rollback


@pytest.mark.asyncio
async def test_a_stale_plan_is_ignored(
    sessions: Sessions, cloud: Cloud, fab_settings: FabSettings
) -> None:
    settings = cloud.settings(fab_settings)
    cloud.shop.add(BASELINE, b"baseline")
    cloud.shop.add(CANDIDATE, b"candidate")
    cloud.peer.plan = plan("fab-1", NOW, [cloud.shop.entry("edge-1", CANDIDATE, PRODUCTION)])
    await _run(sessions, cloud, settings, now=LATER)
    cloud.peer.plan = plan(
        "fab-1", NOW - timedelta(minutes=1), [cloud.shop.entry("edge-1", BASELINE, PRODUCTION)]
    )
    summary = await _run(sessions, cloud, settings, now=LATER)
    assert summary["deployments"]["stale"] is True
    assert await _assignments(sessions) == {"edge-1": (CANDIDATE, "", PRODUCTION)}


@pytest.mark.parametrize("tamper", ["foreign_key", "changed_bytes", "untrusted_key_id"])
@pytest.mark.asyncio
async def test_an_artifact_that_fails_verification_registers_nothing(
    sessions: Sessions, cloud: Cloud, fab_settings: FabSettings, tamper: str
) -> None:
    settings = cloud.settings(fab_settings)
    shop = cloud.shop
    if tamper == "foreign_key":
        shop.add(CANDIDATE, b"candidate", signer=Ed25519PrivateKey.generate())
        entry = shop.entry("edge-1", CANDIDATE, CANARY, "ro-9")
        reason = "bad_signature"
    elif tamper == "changed_bytes":
        shop.add(CANDIDATE, b"candidate")
        entry = shop.entry("edge-1", CANDIDATE, CANARY, "ro-9")
        shop.artifacts[CANDIDATE] = b"candidate, changed in transit"
        entry.size_bytes = 1000
        reason = "sha256_mismatch"
    else:
        shop.add(CANDIDATE, b"candidate")
        entry = shop.entry("edge-1", CANDIDATE, CANARY, "ro-9")
        entry.signing_key_id = "nobody-trusts-this"
        reason = "unknown_key"
    cloud.peer.plan = plan("fab-1", NOW, [entry])
    summary = await _run(sessions, cloud, settings, now=LATER)
    assert summary["ok"] is False
    (rejected,) = summary["deployments"]["rejected"]
    assert (rejected["version"], rejected["reason"]) == (CANDIDATE, reason)
    assert summary["deployments"]["assigned"] == 0
    assert await _assignments(sessions) == {}
    with pytest.raises(distribution.NotFound):
        await distribution.find_artifact(sessions, version=CANDIDATE, artifact_format="")


def test_cli_status_and_run_without_configuration(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fab.db'}"
    env = {"FAB_DATABASE_URL": url}
    runner = CliRunner()
    assert runner.invoke(cli.main, ["migrate"], env=env).exit_code == 0
    status = runner.invoke(cli.main, ["sync", "status"], env=env)
    assert status.exit_code == 0, status.output
    assert json.loads(status.output) == {
        "aggregates": None,
        "deployments": None,
        "labels": None,
        "last_run": None,
    }
    refused = runner.invoke(cli.main, ["sync", "run"], env=env)
    assert refused.exit_code == 1 and "sync.fab_id" in refused.output


def test_label_uploads_are_split_to_stay_under_the_byte_budget() -> None:
    big = domain.StoredMap(rows=100, cols=100, values=bytes(10_000))
    labels = [
        LabelRecord(
            label_id=i,
            wafer_id=f"W{i}",
            lot_id="L",
            node_id="edge-1",
            sequence=i,
            outcome=domain.ReviewOutcome.CONFIRMED,
            true_label=0,
            predicted_class=0,
            model_version=BASELINE,
            confidence=0.9,
            reason=domain.ReviewReason.MANUAL,
            resolved_by="eng",
            resolved_at=NOW,
            wafer_map=big if i != 3 else None,
        )
        for i in range(1, 6)
    ]
    parts = agent.size_bounded(labels, budget=25_000)
    assert [[lab.label_id for lab in part] for part in parts] == [[1, 2, 3], [4, 5]]
    assert agent.size_bounded(labels, budget=1) == [labels[i : i + 1] for i in range(5)]
    assert agent.size_bounded([], budget=1) == []


def test_unreadable_tls_files_are_named(fab_settings: FabSettings, tmp_path: Path) -> None:
    sync = fab_settings.sync.model_copy(update={"tls_ca": tmp_path / "missing-ca.pem"})
    with pytest.raises(SyncError, match=r"sync\.tls_ca"):
        CloudClient(sync)
