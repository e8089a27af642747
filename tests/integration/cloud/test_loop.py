"""The platform's whole loop on one machine, every tier real: four edge nodes classifying real
WM-811K maps, the fab server on PostgreSQL with its sync agent, the cloud API with CloudSync,
the `mlflow server`, and `wafer-cloud worker` and `beat` processes on Redis.

Engineers' verdicts at the fab reach the cloud anonymised; a stream whose class mix differs
from the champion's drifts past PSI 0.25, which starts a (tiny) retraining job; its candidate
goes to 2 of the 4 nodes as a canary, the engineers' verdicts on both arms promote it, and every
node ends up serving it. A worse candidate then breaks a guardrail and is rolled back: every
node returns to the champion. On the way the cloud goes away and the fab restarts, mid-sync too:
the cloud ends up with every label once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import func, select

from cloud.api.server import ApiServer
from cloud.registry.importer import import_model_folder, import_shipped
from cloud.registry.registry import ModelRegistry
from cloud.services.tokens import add_token
from cloud.settings import CloudSettings, DriftSettings, GateSettings, RolloutSettings
from cloud.storage import labels as cloud_labels
from cloud.storage.db import Database
from edge.node import EdgeNode
from edge.replay import classify_bodies, replay
from edge.settings import EdgeSettings
from fab_server import domain
from fab_server.app import FabServer
from fab_server.models import LabelRow, ResultRow, ReviewItemRow
from fab_server.services import nodes as fab_nodes
from fab_server.services import review
from fab_server.settings import FabSettings, SyncSettings
from fab_server.sync import agent
from fab_server.sync.client import CloudUnavailable
from wafercore.classes import DefectClass
from wafercore.dataset import WaferDataset
from wafercore.readers.npz import read_npz
from wafercore.shipped import shipped_model_dir

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio]

FAB = "fab-loop"
NODES = ("edge-l1", "edge-l2", "edge-l3", "edge-l4")
PER_NODE = 10
"""Wafers each node classifies per phase (40 per phase: above the drift's 20, and 20 canary
samples per arm, above the rollouts' 12)."""
ENGINEER = "eng-ana"
LOOP_WAIT_S = 240.0
"""Longest wait for anything here (a tiny training job, an OTA install) on a loaded machine."""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Loop:
    """The running platform, and what the test does with it."""

    cloud: CloudSettings
    fab_settings: FabSettings
    data: WaferDataset
    tmp: Path
    fab: FabServer | None = None
    api: ApiServer | None = None
    nodes: dict[str, EdgeNode] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    replayed: int = 0

    @property
    def sessions(self) -> Any:
        assert self.fab is not None and self.fab.sessions is not None
        return self.fab.sessions

    def http(self, role: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.cloud.api_url,
            headers={"Authorization": f"Bearer {self.tokens[role]}"},
            timeout=60,
        )

    async def start_api(self) -> None:
        self.api = await ApiServer(self.cloud).start()

    async def stop_api(self) -> None:
        assert self.api is not None
        await self.api.stop()
        self.api = None

    async def restart_fab(self) -> None:
        if self.fab is not None:
            await self.fab.stop()
        self.fab = await FabServer(self.fab_settings).start()

    async def sync(self) -> dict[str, Any]:
        return await agent.run_once(self.sessions, self.fab_settings)

    def versions(self) -> dict[str, str]:
        return {n: node.store.current.version for n, node in self.nodes.items() if node.store}

    async def classify(self) -> None:
        """Each node classifies its next `PER_NODE` wafers; returns once the fab stored them."""
        expected = await self.results() + PER_NODE * len(NODES)
        runs = []
        for i, (node_id, node) in enumerate(self.nodes.items()):
            start = self.replayed + i * PER_NODE
            subset = self.data.subset(np.arange(start, start + PER_NODE))
            bodies = [
                body | {"wafer_id": f"{node_id}-{start + j}", "lot_id": f"LOT-{node_id}"}
                for j, body in enumerate(classify_bodies(subset))
            ]
            runs.append(
                replay(
                    bodies,
                    target=f"http://127.0.0.1:{node.http_port}",
                    rate=500.0,
                    total=len(bodies),
                    progress=False,
                )
            )
        await asyncio.gather(*runs)
        self.replayed += PER_NODE * len(NODES)
        await until(lambda: self._at_least(expected), "the fab to store every result")

    async def _at_least(self, count: int) -> bool:
        return await self.results() >= count

    async def results(self) -> int:
        async with self.sessions() as session:
            return int(await session.scalar(select(func.count()).select_from(ResultRow)) or 0)

    async def open_items(self) -> list[Any]:
        async with self.sessions() as session:
            rows = await session.scalars(
                select(ReviewItemRow).where(ReviewItemRow.state != "resolved")
            )
            return [row.to_domain() for row in rows]

    async def resolve_all(self, verdict: Callable[[Any], domain.Resolution]) -> int:
        """The engineer resolves every open item with ``verdict(item)``; how many."""
        items = await self.open_items()
        for item in items:
            await review.resolve(
                self.sessions,
                item_id=item.id,
                resolution=verdict(item),
                user=ENGINEER,
                override=True,
            )
        return len(items)

    async def fab_labels(self) -> int:
        async with self.sessions() as session:
            query = select(func.count()).select_from(LabelRow).where(LabelRow.outcome != "unusable")
            return int(await session.scalar(query) or 0)

    def cloud_labels(self) -> int:
        db = Database(self.cloud.db_url, self.cloud.db_schema)
        try:
            with db.session() as session:
                return len(cloud_labels.reviewed_labels(session, fab_id=FAB))
        finally:
            db.dispose()


async def until(condition: Callable[[], Any], what: str, timeout: float = LOOP_WAIT_S) -> Any:
    """Poll ``condition`` (sync or async) until truthy; fail naming ``what``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


def _shifted_stream(data_dir: Path) -> WaferDataset:
    """Real labelled maps without the None class, shuffled: a mix far from the champion's."""
    data = read_npz(data_dir / "sample_stratified.npz")
    patterned = np.flatnonzero(data.labels > int(DefectClass.NONE))
    rng = np.random.default_rng(13)
    return data.subset(rng.permutation(patterned)[: PER_NODE * len(NODES) * 3])


def _cloud_settings(pipeline_settings: CloudSettings) -> CloudSettings:
    api_port, sync_port = _free_port(), _free_port()
    return pipeline_settings.model_copy(
        update={
            "api_port": api_port,
            "api_url": f"http://127.0.0.1:{api_port}",
            "sync_port": sync_port,
            # The tiny model is no match for the champion: the gate lets it through.
            "gate": GateSettings(min_macro_f1_gain=-1.0, min_accuracy=0.0, min_class_f1=0.0),
            "drift": DriftSettings(min_wafers=20, retrain_config="tiny", every_s=86_400.0),
            # Small samples and short windows; latency and review-rate guardrails out of the way
            # of a loaded test machine (their decisions are unit-tested).
            "rollouts": RolloutSettings(
                min_reviewed_per_arm=12,
                bootstrap_resamples=200,
                min_class_support=3,
                max_p99_ms=60_000.0,
                max_review_rate_increase=1.0,
                watch_s=3.0,
                min_reviewed_watch=100_000,
                evaluate_every_s=1.0,
                trial_window_s=3_600.0,
            ),
        }
    )


def _fab_settings(fab_settings: FabSettings, cloud: CloudSettings, fab_token: str) -> FabSettings:
    return fab_settings.model_copy(
        update={
            "grpc_port": _free_port(),  # the nodes reconnect to it after the fab restarts
            "canary_sample_rate": 1.0,
            "review_confidence_threshold": 0.999,  # nearly every wafer is queued for review
            "sync": SyncSettings(
                fab_id=FAB,
                cloud_grpc_target=f"127.0.0.1:{cloud.sync_port}",
                cloud_api_url=cloud.api_url,
                token=SecretStr(fab_token),
                hash_key=SecretStr("k" * 32),
                trusted_keys_dir=cloud.work_dir / "keys",
                batch_size=5,
                timeout_s=10.0,
            ),
        }
    )


def _prepare_cloud(cloud: CloudSettings) -> dict[str, str]:
    """Shipped models registered (the default one champion) and a token per role."""
    db = Database(cloud.db_url, cloud.db_schema)
    try:
        import_shipped(ModelRegistry(cloud, db), cloud, golden=16)
        return {
            "admin": add_token(db, user="ops-admin", role="admin"),
            "ml-engineer": add_token(db, user="ml-eng", role="ml-engineer"),
            "fab": add_token(db, user=FAB, role="fab"),
        }
    finally:
        db.dispose()


async def _start_node(loop: Loop, node_id: str) -> EdgeNode:
    assert loop.fab is not None
    settings = EdgeSettings(
        node_id=node_id,
        fab_address=f"127.0.0.1:{loop.fab_settings.grpc_port}",
        node_token=SecretStr(await fab_nodes.add_token(loop.sessions, node_id=node_id)),
        http_port=0,
        work_dir=loop.tmp / node_id,
        default_model_dir=shipped_model_dir(),
        outbox_sync="normal",
        ota_poll_interval_s=0.3,
        uplink_backoff_max_s=1.0,
        trusted_keys_dir=loop.cloud.work_dir / "keys",
    )
    return await EdgeNode(settings).start()


@pytest_asyncio.fixture
async def platform(
    pipeline_settings: CloudSettings,
    fab_settings: FabSettings,
    wafer_data_dir: Path,
    start_cloud: Callable[[CloudSettings, str], Any],
    tmp_path: Path,
) -> AsyncIterator[Loop]:
    """Every tier running (see the module notes); stopped afterwards."""
    cloud = _cloud_settings(pipeline_settings)
    tokens = await asyncio.to_thread(_prepare_cloud, cloud)
    await asyncio.to_thread(start_cloud, cloud, "worker")
    await asyncio.to_thread(start_cloud, cloud, "beat")
    loop = Loop(
        cloud=cloud,
        fab_settings=_fab_settings(fab_settings, cloud, tokens["fab"]),
        data=_shifted_stream(wafer_data_dir),
        tmp=tmp_path,
        tokens=tokens,
    )
    try:
        await loop.start_api()
        await loop.restart_fab()
        for node_id in NODES:
            loop.nodes[node_id] = await _start_node(loop, node_id)
        yield loop
    finally:
        for node in loop.nodes.values():
            await node.stop()
        if loop.fab is not None:
            await loop.fab.stop()
        if loop.api is not None:
            await loop.stop_api()


def _truth(loop: Loop) -> Callable[[Any], domain.Resolution]:
    """The engineer's verdict: the map's real class (its index is in the wafer id)."""

    def verdict(item: Any) -> domain.Resolution:
        true = int(loop.data.labels[int(item.wafer_id.rsplit("-", 1)[1])])
        if true == item.predicted_class:
            return domain.Resolution(domain.ReviewOutcome.CONFIRMED)
        return domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=true)

    return verdict


def _arms(candidate: str, *, canary_right: bool) -> Callable[[Any], domain.Resolution]:
    """Verdicts that make one arm right and the other wrong (a class it did not predict)."""

    def verdict(item: Any) -> domain.Resolution:
        right = (item.model_version == candidate) == canary_right
        if right:
            return domain.Resolution(domain.ReviewOutcome.CONFIRMED)
        wrong = 0 if item.predicted_class != 0 else int(DefectClass.EDGE_RING)
        return domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=wrong)

    return verdict


async def _labels_reach_the_cloud_once(loop: Loop) -> None:
    """Verdicts at the fab; the cloud down, the fab restarted, a pass cut short: every label
    arrives, once."""
    await loop.classify()
    assert await loop.resolve_all(_truth(loop)) >= PER_NODE
    await loop.stop_api()
    with pytest.raises(CloudUnavailable):
        await loop.sync()
    assert loop.cloud_labels() == 0
    await loop.restart_fab()
    await loop.start_api()
    # A pass cut short once some of its batches (5 labels each) are in the cloud.
    cut = asyncio.create_task(loop.sync())
    await until(lambda: loop.cloud_labels() > 0 or cut.done(), "the first batch in the cloud")
    cut.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await cut
    await loop.restart_fab()
    await loop.sync()
    expected = await loop.fab_labels()
    assert loop.cloud_labels() == expected
    await loop.sync()  # everything again, within the overlap window: stored once
    assert loop.cloud_labels() == expected


async def _drift_starts_retraining(loop: Loop) -> str:
    """The drift report crosses PSI 0.25 and starts a job; its candidate's version."""
    async with loop.http("ml-engineer") as http:
        response = await http.post("/analytics/drift/compute")
        assert response.status_code == 201, response.text
        stored = response.json()
        (fab,) = [f for f in stored["report"]["fabs"] if f["fab_id"] == FAB]
        assert fab["psi"] > 0.25 and fab["band"] == "retrain", fab
        (job_id,) = stored["job_ids"]
        plot = await http.get("/analytics/drift.png")
        assert plot.headers["content-type"] == "image/png"

        async def finished() -> dict[str, Any] | None:
            job = (await http.get(f"/training/jobs/{job_id}")).json()["job"]
            return job if job["state"] in ("succeeded", "rejected", "failed") else None

        job = await until(finished, "the drift's retraining job")
    assert job["state"] == "succeeded", job
    assert job["reason"].startswith("drift:") and FAB in job["reason"]
    return str(job["model_version"])


async def _canary(loop: Loop, version: str, verdict: Callable[[Any], domain.Resolution]) -> str:
    """Deploy ``version`` to 2 of the 4 nodes, let them classify, give the verdicts; the
    rollout's id."""
    before = loop.versions()
    async with loop.http("admin") as http:
        response = await http.post(
            "/models/deploy", json={"version": version, "fab_id": FAB, "reason": "loop test"}
        )
    assert response.status_code == 201, response.text
    rollout = response.json()
    canary = set(rollout["canary_nodes"])
    assert len(canary) == 2 and set(rollout["control_nodes"]) == set(NODES) - canary
    await loop.sync()
    expected = {n: version if n in canary else before[n] for n in NODES}
    await until(lambda: loop.versions() == expected, f"the canary nodes on {version}")
    await loop.classify()
    assert await loop.resolve_all(verdict) == PER_NODE * len(NODES)
    await loop.sync()
    return str(rollout["id"])


async def _stage(loop: Loop, rollout_id: str, stages: tuple[str, ...]) -> dict[str, Any]:
    async with loop.http("admin") as http:

        async def reached() -> dict[str, Any] | None:
            rollout = (await http.get(f"/rollouts/{rollout_id}")).json()
            return rollout if rollout["stage"] in stages else None

        found: dict[str, Any] = await until(reached, f"rollout {rollout_id} to reach {stages}")
    return found


async def test_drift_retrains_and_canaries_promote_a_better_model_and_roll_back_a_worse_one(
    platform: Loop, renamed_model: Callable[[Path, str], Path]
) -> None:
    loop = platform
    champion = next(iter(loop.versions().values()))
    assert set(loop.versions().values()) == {champion}

    await _labels_reach_the_cloud_once(loop)
    candidate = await _drift_starts_retraining(loop)

    promoted = await _canary(loop, candidate, _arms(candidate, canary_right=True))
    decided = await _stage(loop, promoted, ("watching", "completed"))
    assert decided["decision"]["action"] == "promote", decided["decision"]
    await loop.sync()
    await until(lambda: set(loop.versions().values()) == {candidate}, "every node on it")
    await _stage(loop, promoted, ("completed",))

    worse = "trm-v9.0.0"
    folder = renamed_model(loop.tmp / worse, worse)
    db = Database(loop.cloud.db_url, loop.cloud.db_schema)
    try:
        registry = ModelRegistry(loop.cloud, db)
        await asyncio.to_thread(
            import_model_folder, registry, loop.cloud, folder, actor="t", reason="r", golden=16
        )
        assert registry.by_alias("champion").version == candidate  # type: ignore[union-attr]
    finally:
        db.dispose()
    rolled = await _canary(loop, worse, _arms(worse, canary_right=False))
    decided = await _stage(loop, rolled, ("rolled_back",))
    assert decided["decision"]["action"] == "rollback"
    assert "F1" in decided["decision"]["reason"], decided["decision"]
    await loop.sync()
    await until(lambda: set(loop.versions().values()) == {candidate}, "every node back")

    async with loop.http("admin") as http:
        history = (await http.get(f"/models/{candidate}")).json()["history"]
        worse_history = (await http.get(f"/models/{worse}")).json()["history"]

    def rollout_events(events: list[dict[str, Any]], version: str) -> list[str]:
        return [
            e["action"]
            for e in events
            if e["action"].startswith("rollout_") and e["model_version"] == version
        ]

    assert rollout_events(history, candidate) == [
        "rollout_started",
        "rollout_promoted",
        "rollout_completed",
    ]
    assert rollout_events(worse_history, worse) == ["rollout_started", "rollout_rolled_back"]
