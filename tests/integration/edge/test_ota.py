"""OTA against a real fab server (gRPC, PostgreSQL): publish, install, refuse, roll back, swap."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from cloud.signing import generate_keypair, load_private_key, package_model, sign_file
from edge.fab_client import bearer_interceptors, open_channel
from edge.model_store import ModelStore
from edge.ota import OtaAgent, OtaStatus
from edge.settings import EdgeSettings
from fab_server.app import FabServer
from fab_server.models import EdgeNodeRow
from fab_server.services import distribution
from fab_server.settings import FabSettings
from wafercore.artifact import GOLDEN_FILE, GoldenSet, unpack_artifact, write_artifact
from wafercore.runtime import MANIFEST_FILE, MODEL_FILE, ModelRuntime

pytestmark = pytest.mark.integration

MODEL_DIR = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"
OLD, NEW = "trm-v1.0.0", "trm-v1.1.0"
KEY_ID = "registry-1"
NODE = "edge-ota-1"
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Published:
    """An artifact file with its detached signature beside it, ready to register."""

    path: Path
    key_id: str = KEY_ID

    @property
    def signature(self) -> bytes:
        return Path(f"{self.path}.sig").read_bytes()


@dataclass(frozen=True)
class Artifacts:
    trusted: Path
    new: Published
    old: Published
    tampered: Published
    untrusted: Published
    bad_golden: Published


def _sign(path: Path, key: Path) -> Published:
    signature, _, _ = sign_file(path, load_private_key(key))
    Path(f"{path}.sig").write_bytes(signature)
    return Published(path)


@pytest.fixture(scope="module")
def artifacts(
    tmp_path_factory: pytest.TempPathFactory, renamed_model: Callable[[Path, str], Path]
) -> Artifacts:
    work = tmp_path_factory.mktemp("registry")
    key = generate_keypair(work / "keys", KEY_ID).private_key
    trusted = work / "trusted"
    trusted.mkdir()
    shutil.copy(work / "keys" / f"{KEY_ID}.pub", trusted)
    new_dir = renamed_model(work / NEW, NEW)
    new = package_model(new_dir, work / "new.tar", private_key=key, key_id=KEY_ID)
    old = package_model(MODEL_DIR, work / "old.tar", private_key=key, key_id=KEY_ID)
    # Registered at the fab with the real signature, but one byte differs from what was signed.
    tampered = work / "tampered.tar"
    data = bytearray(new.path.read_bytes())
    data[len(data) // 3] ^= 0x01
    tampered.write_bytes(bytes(data))
    shutil.copy(new.signature_path, f"{tampered}.sig")
    # Signed by a key no node trusts.
    other = generate_keypair(work / "other", "someone-else").private_key
    untrusted = _sign(Path(shutil.copy(new.path, work / "untrusted.tar")), other)
    # Correctly signed, but its golden expectations are not what the model answers.
    members = unpack_artifact(new.path, work / "unpacked")
    golden = GoldenSet.load(members / GOLDEN_FILE)
    off = GoldenSet(golden.tokens, golden.probabilities * np.float32(0.9), golden.prediction)
    bad_golden = work / "bad-golden.tar"
    write_artifact(
        bad_golden,
        {
            MODEL_FILE: members / MODEL_FILE,
            MANIFEST_FILE: members / MANIFEST_FILE,
            GOLDEN_FILE: off.to_bytes(),
        },
    )
    return Artifacts(
        trusted=trusted,
        new=Published(new.path),
        old=Published(old.path),
        tampered=Published(tampered),
        untrusted=Published(untrusted.path, key_id="someone-else"),
        bad_golden=_sign(bad_golden, key),
    )


@dataclass
class Setup:
    fab: FabServer
    store: ModelStore
    agent: OtaAgent
    registry: CollectorRegistry
    settings: EdgeSettings

    async def publish(self, version: str, artifact: Published, **assignment: Any) -> None:
        """What ``wafer-fab models register`` and ``assign`` do."""
        assert self.fab.sessions is not None
        await distribution.register_artifact(
            self.fab.sessions,
            version=version,
            artifact_format="onnx",
            path=artifact.path,
            signature=artifact.signature,
            signing_key_id=artifact.key_id,
            settings=self.fab.settings,
        )
        await distribution.assign(self.fab.sessions, node_id=NODE, version=version, **assignment)

    def rejected(self, reason: str) -> float:
        value = self.registry.get_sample_value("edge_ota_rejected_total", {"reason": reason})
        return value or 0.0

    def serves(self, version: str) -> bool:
        """The store's current model is ``version`` and classifies a wafer."""
        result = self.store.current.runtime.predict(np.zeros((1, 676), dtype=np.uint8))
        return self.store.current.version == version and result.probabilities.shape == (1, 9)


class BreakFirstDownload(grpc.aio.UnaryStreamClientInterceptor):
    """Drops the first DownloadModel stream after two chunks, like a link that goes down."""

    def __init__(self) -> None:
        self.offsets: list[int] = []

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        method = details.method
        if isinstance(method, bytes):  # grpc.aio passes the method name as bytes
            method = method.decode()
        if not method.endswith("/DownloadModel"):
            return call
        self.offsets.append(request.offset)
        first = len(self.offsets) == 1

        async def chunks() -> AsyncIterator[Any]:
            received = 0
            async for chunk in call:
                if first and received == 2:
                    call.cancel()
                    raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, details="link down")
                received += 1
                yield chunk

        return chunks()


@pytest_asyncio.fixture
async def setup(
    fab_settings: FabSettings,
    artifacts: Artifacts,
    tmp_path: Path,
    enrol: Callable[[str], Awaitable[str]],
) -> AsyncIterator[Setup]:
    """A real fab server (conftest's ``fab_settings``: a fresh PostgreSQL schema) and a node
    with the token the fab issued it."""
    settings_64k = fab_settings.model_copy(update={"download_chunk_bytes": CHUNK})
    fab = await FabServer(settings_64k).start()
    settings = EdgeSettings(
        node_id=NODE,
        fab_address=f"127.0.0.1:{fab.grpc_port}",
        node_token=SecretStr(await enrol(NODE)),
        work_dir=tmp_path / "edge",
        default_model_dir=MODEL_DIR,
        trusted_keys_dir=artifacts.trusted,
        warmup_predictions=0,
    )
    store = ModelStore(settings.models_root, default_model=MODEL_DIR, threads=1, warmup=0)
    channel = open_channel(settings)
    registry = CollectorRegistry()
    agent = OtaAgent(settings, store, channel, registry=registry, retry_delay_s=0.0)
    try:
        yield Setup(fab, store, agent, registry, settings)
    finally:
        await channel.close()
        await fab.stop()


@pytest.mark.asyncio
async def test_a_published_model_is_installed_and_the_fab_learns_it(
    setup: Setup, artifacts: Artifacts
) -> None:
    assert (await setup.agent.poll_once()).status is OtaStatus.KEEP
    await setup.publish(NEW, artifacts.new)
    outcome = await setup.agent.poll_once()
    assert outcome.status is OtaStatus.INSTALLED, outcome.reason
    assert setup.serves(NEW) and setup.store.previous_version == OLD
    assert (await setup.agent.poll_once()).status is OtaStatus.KEEP  # reports NEW, OLD
    assert setup.fab.sessions is not None
    async with setup.fab.sessions() as session:
        row = await session.get(EdgeNodeRow, NODE)
    assert row is not None and (row.installed_version, row.previous_version) == (NEW, OLD)


@pytest.mark.asyncio
async def test_a_download_broken_midway_resumes_from_its_offset(
    setup: Setup, artifacts: Artifacts
) -> None:
    interceptor = BreakFirstDownload()
    assert setup.settings.node_token is not None
    token = bearer_interceptors(setup.settings.node_token.get_secret_value())
    async with grpc.aio.insecure_channel(
        setup.settings.fab_address, interceptors=[*token, interceptor]
    ) as channel:
        agent = OtaAgent(
            setup.settings, setup.store, channel, registry=setup.registry, retry_delay_s=0.0
        )
        await setup.publish(NEW, artifacts.new)
        outcome = await agent.poll_once()
    assert outcome.status is OtaStatus.INSTALLED, outcome.reason
    assert interceptor.offsets == [0, 2 * CHUNK]
    assert setup.serves(NEW)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("which", "reason"), [("tampered", "bad_signature"), ("untrusted", "unknown_key")]
)
async def test_a_tampered_or_untrusted_artifact_is_refused_and_the_old_model_serves(
    setup: Setup, artifacts: Artifacts, which: str, reason: str
) -> None:
    await setup.publish(NEW, getattr(artifacts, which))
    outcome = await setup.agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.reason.startswith(reason)
    assert setup.serves(OLD) and setup.rejected(reason) == 1
    # Not retried while the fab keeps the same assignment.
    assert (await setup.agent.poll_once()) == outcome and setup.rejected(reason) == 1


@pytest.mark.asyncio
async def test_a_candidate_failing_the_golden_check_is_never_served(
    setup: Setup, artifacts: Artifacts
) -> None:
    await setup.publish(NEW, artifacts.bad_golden)
    outcome = await setup.agent.poll_once()
    assert outcome.status is OtaStatus.REJECTED and outcome.reason.startswith("golden_mismatch")
    assert setup.serves(OLD) and setup.store.previous_version is None
    installed = [p.name for p in setup.store.root.iterdir() if p.name.startswith(NEW)]
    assert installed == []


@pytest.mark.asyncio
async def test_a_rollback_assignment_returns_to_the_previous_model(
    setup: Setup, artifacts: Artifacts
) -> None:
    await setup.publish(OLD, artifacts.old)  # so the fab can assign it back
    await setup.publish(NEW, artifacts.new)
    assert (await setup.agent.poll_once()).status is OtaStatus.INSTALLED
    assert setup.fab.sessions is not None
    await distribution.assign(setup.fab.sessions, node_id=NODE, version=OLD, rollback=True)
    outcome = await setup.agent.poll_once()
    assert outcome.status is OtaStatus.ROLLED_BACK and outcome.version == OLD
    assert setup.serves(OLD)
    assert (await setup.agent.poll_once()).status is OtaStatus.KEEP


@pytest.mark.asyncio
async def test_swaps_under_concurrent_load_fail_no_request(
    setup: Setup, artifacts: Artifacts, tmp_path: Path
) -> None:
    await setup.publish(OLD, artifacts.old)
    done = threading.Event()
    served: list[str] = []
    failures: list[BaseException] = []
    tokens = np.random.default_rng(0).integers(0, 3, size=(1, 676), dtype=np.uint8)

    def classify() -> None:
        while not done.is_set():
            model = setup.store.current  # read once per request, as the HTTP handler does
            try:
                result = model.runtime.predict(tokens)
                assert result.probabilities.shape == (1, 9)
                served.append(model.version)
            except BaseException as exc:
                failures.append(exc)

    workers = [threading.Thread(target=classify) for _ in range(3)]
    for worker in workers:
        worker.start()
    try:
        await setup.publish(NEW, artifacts.new)
        assert (await setup.agent.poll_once()).status is OtaStatus.INSTALLED
        assert setup.fab.sessions is not None
        await distribution.assign(setup.fab.sessions, node_id=NODE, version=OLD, rollback=True)
        assert (await setup.agent.poll_once()).status is OtaStatus.ROLLED_BACK
        # More swaps straight through the store, each deleting the model replaced before.
        for i in range(4):
            version = NEW if i % 2 == 0 else OLD
            candidate = unpack_artifact(
                artifacts.new.path if version == NEW else artifacts.old.path, tmp_path / f"c{i}"
            )
            runtime = await asyncio.to_thread(ModelRuntime.load, candidate)
            await asyncio.to_thread(setup.store.activate, candidate, runtime)
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=30)
    assert failures == []
    assert len(served) > 50 and {OLD, NEW} <= set(served)
    assert setup.store.current.version == OLD
