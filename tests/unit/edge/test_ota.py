"""The OTA agent against a scripted fab (an in-memory channel): every path of one poll."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cloud.signing import generate_keypair, load_private_key, package_model, sign_file
from edge.model_store import ModelStore
from edge.ota import OtaAgent, OtaOutcome, OtaStatus
from edge.settings import EdgeSettings
from wafercore.artifact import (
    GOLDEN_FILE,
    MAX_ARTIFACT_BYTES,
    GoldenSet,
    unpack_artifact,
    write_artifact,
)
from wafercore.runtime import MANIFEST_FILE, MODEL_FILE
from waferplatform.v1 import fab_pb2

MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"
OLD, NEW = "trm-v1.0.0", "trm-v1.1.0"
KEY_ID = "registry-1"
CHUNK = 64 * 1024


@dataclass
class Signed:
    """An artifact's bytes as the fab would announce them."""

    data: bytes
    signature: bytes
    sha256: str


@dataclass(frozen=True)
class Artifacts:
    keys: Path
    good: Signed
    tampered: Signed
    bad_golden: Signed


def _signed(path: Path, key: Path) -> Signed:
    signature, sha256, _ = sign_file(path, load_private_key(key))
    return Signed(path.read_bytes(), signature, sha256)


@pytest.fixture(scope="module")
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, renamed_model: Callable[[Path, str], Path]
) -> Artifacts:
    work = tmp_path_factory.mktemp("artifacts")
    pair = generate_keypair(work / "registry", KEY_ID)
    trusted = work / "trusted"  # a node holds only the public key
    trusted.mkdir()
    shutil.copy(pair.public_key, trusted)
    good = work / "good.tar"
    package_model(renamed_model(work / NEW, NEW), good, private_key=pair.private_key, key_id=KEY_ID)
    # Same announced digest and signature, one byte changed on the way.
    signed = _signed(good, pair.private_key)
    data = bytearray(signed.data)
    data[len(data) // 2] ^= 0xFF
    tampered = Signed(bytes(data), signed.signature, signed.sha256)
    # Correctly signed, but its golden expectations are not what the model answers.
    members = unpack_artifact(good, work / "unpacked")
    golden = GoldenSet.load(members / GOLDEN_FILE)
    off = GoldenSet(golden.tokens, golden.probabilities + np.float32(0.01), golden.prediction)
    bad = work / "bad-golden.tar"
    write_artifact(
        bad,
        {
            MODEL_FILE: members / MODEL_FILE,
            MANIFEST_FILE: members / MANIFEST_FILE,
            GOLDEN_FILE: off.to_bytes(),
        },
    )
    return Artifacts(trusted, signed, tampered, _signed(bad, pair.private_key))


@dataclass
class ScriptedFab:
    """Answers GetModelAssignment and DownloadModel like a fab server, from a script."""

    action: int = fab_pb2.MODEL_ACTION_KEEP
    version: str = OLD
    artifact: Signed | None = None
    key_id: str = KEY_ID
    broken_streams: int = 0
    break_after_chunks: int = 2
    fail_assignment: bool = False
    announced_size: int | None = None
    polls: list[Any] = field(default_factory=list)
    downloads: list[Any] = field(default_factory=list)
    polled: asyncio.Event = field(default_factory=asyncio.Event)

    def install(self, version: str, artifact: Signed, **fields: Any) -> None:
        self.action, self.version, self.artifact = fab_pb2.MODEL_ACTION_INSTALL, version, artifact
        for name, value in fields.items():
            setattr(self, name, value)

    async def get_assignment(self, request: Any, timeout: float | None = None) -> Any:
        self.polls.append(request)
        self.polled.set()
        if self.fail_assignment:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="fab is down")
        answer = fab_pb2.ModelAssignment(
            node_id=request.node_id, action=self.action, desired_version=self.version
        )
        if self.artifact is not None:
            answer.sha256 = self.artifact.sha256
            answer.size_bytes = self.announced_size or len(self.artifact.data)
            answer.signature = self.artifact.signature
            answer.signing_key_id = self.key_id
        return answer

    async def download(self, request: Any, timeout: float | None = None) -> AsyncIterator[Any]:
        self.downloads.append(request)
        assert self.artifact is not None
        data, offset, sent = self.artifact.data, request.offset, 0
        while True:
            if self.broken_streams and sent == self.break_after_chunks:
                self.broken_streams -= 1
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="link dropped")
            chunk = fab_pb2.ModelChunk(
                offset=offset, data=data[offset : offset + CHUNK], total_size=len(data)
            )
            if sent == 0:
                chunk.sha256, chunk.signature = self.artifact.sha256, self.artifact.signature
            yield chunk
            sent += 1
            offset += len(chunk.data)
            if offset >= len(data):
                return


class ScriptedChannel:
    """What `fab_pb2_grpc.FabServiceStub` needs of a channel, answered by a `ScriptedFab`.

    Only the two OTA methods are answered; calling any other fails the test.
    """

    def __init__(self, fab: ScriptedFab) -> None:
        self._methods = {
            "/waferplatform.v1.FabService/GetModelAssignment": fab.get_assignment,
            "/waferplatform.v1.FabService/DownloadModel": fab.download,
        }

    def _method(self, method: str, **_: Any) -> Callable[..., Any]:
        def unscripted(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"the OTA agent called {method}")

        return self._methods.get(method, unscripted)

    unary_unary = unary_stream = stream_unary = stream_stream = _method


@dataclass
class Node:
    settings: EdgeSettings
    fab: ScriptedFab
    store: ModelStore
    agent: OtaAgent
    registry: CollectorRegistry

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value("edge_ota_rejected_total", {"reason": reason})
        return value or 0.0


@pytest.fixture
def node(tmp_path: Path, artifacts: Artifacts) -> Node:
    settings = EdgeSettings(
        node_id="edge-7",
        work_dir=tmp_path / "edge",
        default_model_dir=MODEL_DIR,
        trusted_keys_dir=artifacts.keys,
        warmup_predictions=0,
    )
    store = ModelStore(settings.models_root, default_model=MODEL_DIR, threads=1, warmup=0)
    fab = ScriptedFab()
    registry = CollectorRegistry()
    agent = OtaAgent(settings, store, ScriptedChannel(fab), registry=registry, retry_delay_s=0.0)
    return Node(settings, fab, store, agent, registry)


def _staging_is_empty(store: ModelStore) -> bool:
    staging = store.root / "staging"
    return not staging.exists() or not any(staging.iterdir())


@pytest.mark.asyncio
async def test_keep_reports_the_installed_version(node: Node) -> None:
    outcome = await node.agent.poll_once()
    assert outcome == OtaOutcome(OtaStatus.KEEP, OLD)
    request = node.fab.polls[0]
    assert (request.node_id, request.installed_version, request.previous_version) == (
        "edge-7",
        OLD,
        "",
    )
    assert request.artifact_format == "onnx"


@pytest.mark.asyncio
async def test_install_verifies_swaps_and_reports_both_versions(
    node: Node, artifacts: Artifacts
) -> None:
    node.fab.install(NEW, artifacts.good)
    outcome = await node.agent.poll_once()
    assert outcome == OtaOutcome(OtaStatus.INSTALLED, NEW)
    assert node.store.current.version == NEW and node.store.previous_version == OLD
    assert (node.store.current.path / GOLDEN_FILE).is_file()
    assert _staging_is_empty(node.store)
    node.fab.action = fab_pb2.MODEL_ACTION_KEEP
    assert (await node.agent.poll_once()).status is OtaStatus.KEEP
    last = node.fab.polls[-1]
    assert (last.installed_version, last.previous_version) == (NEW, OLD)


@pytest.mark.asyncio
async def test_a_broken_stream_resumes_from_the_bytes_already_held(
    node: Node, artifacts: Artifacts
) -> None:
    node.fab.install(NEW, artifacts.good, broken_streams=2, break_after_chunks=3)
    outcome = await node.agent.poll_once()
    assert outcome.status is OtaStatus.INSTALLED
    assert [r.offset for r in node.fab.downloads] == [0, 3 * CHUNK, 6 * CHUNK]


@pytest.mark.asyncio
async def test_a_download_that_keeps_breaking_is_deferred_then_resumed(
    node: Node, artifacts: Artifacts
) -> None:
    node.agent = OtaAgent(
        node.settings,
        node.store,
        ScriptedChannel(node.fab),
        registry=node.registry,
        download_attempts=2,
        retry_delay_s=0.0,
    )
    node.fab.install(NEW, artifacts.good, broken_streams=2, break_after_chunks=1)
    first = await node.agent.poll_once()
    assert first.status is OtaStatus.DEFERRED and "resumes" in first.reason
    assert node.store.current.version == OLD
    second = await node.agent.poll_once()
    assert second.status is OtaStatus.INSTALLED
    assert [r.offset for r in node.fab.downloads] == [0, CHUNK, 2 * CHUNK]
    assert node.rejected("bad_download") == 0


@pytest.mark.asyncio
async def test_a_tampered_artifact_is_refused_once_and_not_downloaded_again(
    node: Node, artifacts: Artifacts, caplog: pytest.LogCaptureFixture
) -> None:
    node.fab.install(NEW, artifacts.tampered)
    with caplog.at_level(logging.ERROR, logger="edge.ota"):
        outcome = await node.agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.version == OLD
    assert outcome.reason.startswith("sha256_mismatch")
    assert any(r.levelno == logging.ERROR and "sha256" in r.getMessage() for r in caplog.records)
    assert node.store.current.version == OLD and node.store.previous_version is None
    assert node.rejected("sha256_mismatch") == 1
    assert _staging_is_empty(node.store)
    # The same assignment again: remembered, no download, not counted twice.
    assert await node.agent.poll_once() == outcome
    assert len(node.fab.downloads) == 1 and node.rejected("sha256_mismatch") == 1
    # Once the assignment changes (here: back to KEEP, then the new version again, now
    # delivered intact), the node tries afresh.
    node.fab.action = fab_pb2.MODEL_ACTION_KEEP
    assert (await node.agent.poll_once()).status is OtaStatus.KEEP
    node.fab.install(NEW, artifacts.good)
    assert (await node.agent.poll_once()).status is OtaStatus.INSTALLED


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("signature", "key_id", "reason"),
    [(b"", KEY_ID, "missing_signature"), (None, "registry-9", "unknown_key")],
)
async def test_an_unsigned_or_unknown_key_artifact_is_refused_before_download(
    node: Node, artifacts: Artifacts, signature: bytes | None, key_id: str, reason: str
) -> None:
    good = artifacts.good
    sig = good.signature if signature is None else signature
    node.fab.install(NEW, Signed(good.data, sig, good.sha256), key_id=key_id)
    outcome = await node.agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.reason.startswith(reason)
    assert node.fab.downloads == [] and node.rejected(reason) == 1
    assert node.store.current.version == OLD


@pytest.mark.asyncio
async def test_an_artifact_announced_too_large_is_refused_before_download(
    node: Node, artifacts: Artifacts
) -> None:
    node.fab.install(NEW, artifacts.good, announced_size=MAX_ARTIFACT_BYTES + 1)
    outcome = await node.agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.reason.startswith("too_large")
    assert node.fab.downloads == []


@pytest.mark.asyncio
async def test_a_stream_of_other_bytes_than_announced_is_refused(
    node: Node, artifacts: Artifacts
) -> None:
    node.fab.install(NEW, artifacts.good, announced_size=len(artifacts.good.data) - 1)
    outcome = await node.agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.reason.startswith("bad_download")
    assert node.store.current.version == OLD and _staging_is_empty(node.store)


@pytest.mark.asyncio
async def test_a_signed_candidate_failing_its_golden_check_is_never_served(
    node: Node, artifacts: Artifacts
) -> None:
    node.fab.install(NEW, artifacts.bad_golden)
    outcome = await node.agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.reason.startswith("golden_mismatch")
    assert node.store.current.version == OLD and node.store.previous_version is None
    assert node.rejected("golden_mismatch") == 1 and _staging_is_empty(node.store)


@pytest.mark.asyncio
async def test_an_artifact_of_another_version_is_refused(node: Node, artifacts: Artifacts) -> None:
    node.fab.install("trm-v1.2.0", artifacts.good)
    outcome = await node.agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.reason.startswith("version_mismatch")
    assert node.store.current.version == OLD


@pytest.mark.asyncio
async def test_rollback_returns_to_the_previous_model(node: Node, artifacts: Artifacts) -> None:
    node.fab.install(NEW, artifacts.good)
    assert (await node.agent.poll_once()).status is OtaStatus.INSTALLED
    node.fab.action, node.fab.version = fab_pb2.MODEL_ACTION_ROLLBACK, OLD
    assert await node.agent.poll_once() == OtaOutcome(OtaStatus.ROLLED_BACK, OLD)
    assert node.store.current.version == OLD and node.store.previous_version is None
    # Nothing left to roll back to: refused, counted, the model keeps serving.
    again = await node.agent.poll_once()
    assert again.status is OtaStatus.REJECTED and node.rejected("no_previous_model") == 1
    assert node.store.current.version == OLD


@pytest.mark.asyncio
async def test_an_unreachable_fab_defers(node: Node) -> None:
    node.fab.fail_assignment = True
    outcome = await node.agent.poll_once()
    assert outcome.status is OtaStatus.DEFERRED and "UNAVAILABLE" in outcome.reason


@pytest.mark.asyncio
async def test_a_node_without_trusted_keys_installs_nothing(
    node: Node, artifacts: Artifacts
) -> None:
    settings = node.settings.model_copy(update={"trusted_keys_dir": None})
    agent = OtaAgent(settings, node.store, ScriptedChannel(node.fab), registry=node.registry)
    node.fab.install(NEW, artifacts.good)
    outcome = await agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.reason.startswith("no_trusted_keys")
    assert node.fab.downloads == []


@pytest.mark.asyncio
async def test_run_polls_at_once_and_stops_when_asked(node: Node) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(node.agent.run(stop))
    await asyncio.wait_for(node.fab.polled.wait(), timeout=10)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert len(node.fab.polls) == 1  # the interval (300 s) never elapsed
