"""A whole edge node against a real fab server (PostgreSQL, gRPC): classify to the fab's tables.

One test runs ``wafer-edge serve`` as a real process; one composes `EdgeNode` in-process to
look at its parts (uplink status, metrics windows) while it works.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from pydantic import SecretStr

from edge.node import EdgeNode
from edge.settings import EdgeSettings
from fab_server.app import FabServer
from fab_server.settings import FabSettings
from wafercore.readers.g85 import G85Map, write_g85
from wafercore.synthetic import generate_dataset

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
DEFAULT = REPO / "models" / "trm-v1.0.0"
WaitUntil = Callable[..., Awaitable[None]]
Enrol = Callable[[str], Awaitable[str]]


@pytest_asyncio.fixture
async def fab(fab_settings: FabSettings) -> AsyncIterator[FabServer]:
    server = await FabServer(fab_settings).start()
    try:
        yield server
    finally:
        await server.stop()


def _wafers(count: int, seed: int) -> list[dict[str, Any]]:
    dataset = generate_dataset(1, np.random.default_rng(seed))
    return [
        {
            "wafer_id": f"WF-{seed}-{i}",
            "lot_id": f"LOT-{seed}",
            "wafer_map": dataset.map(i % len(dataset)).tolist(),
            "timestamp": "2025-08-31T10:42:15Z",
        }
        for i in range(count)
    ]


async def _classify_everything(http: httpx.AsyncClient) -> int:
    """Single, batch and G85 requests, and station retries of some of them (which store
    nothing new); returns how many wafers were classified."""
    singles = _wafers(4, seed=1)
    answers = [await http.post("/classify", json=body) for body in singles]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    retry = await http.post("/classify", json=singles[0])  # the station lost the response
    assert retry.status_code == 200 and retry.json() == answers[0].json()
    batch = await http.post("/classify/batch", json={"wafers": _wafers(3, seed=2)})
    assert batch.status_code == 200, batch.text
    batch_retry = await http.post("/classify/batch", json={"wafers": _wafers(3, seed=2)})
    assert batch_retry.json() == batch.json()
    dataset = generate_dataset(1, np.random.default_rng(3))
    document = write_g85([G85Map(f"G85-{i}", "LOT-G85", "P", dataset.map(i)) for i in range(2)])
    g85 = await http.post("/classify/g85", content=document.encode())
    assert g85.status_code == 200, g85.text
    return 4 + 3 + 2


@pytest.mark.asyncio
async def test_a_node_process_delivers_what_it_classifies_to_the_fab(
    fab: FabServer, fab_tables: Any, tmp_path: Path, wait_until: WaitUntil, enrol: Enrol
) -> None:
    env = {
        **os.environ,
        "EDGE_NODE_TOKEN": await enrol("edge-proc-01"),
        "EDGE_WORK_DIR": str(tmp_path / "edge"),
        "EDGE_OUTBOX_SYNC": "normal",
        "EDGE_DEFAULT_MODEL_DIR": str(DEFAULT),
        "EDGE_METRICS_INTERVAL_S": "0.5",
    }
    command = [sys.executable, "-c", "from edge.cli import main; main()", "serve"]
    flags = ["--port", "0", "--fab", f"127.0.0.1:{fab.grpc_port}", "--node-id", "edge-proc-01"]
    log = tmp_path / "edge.log"  # a file, not a pipe nobody drains
    with log.open("w") as err:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [*command, *flags],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        assert line, log.read_text()
        url = line.rsplit(" ", 1)[1].strip()
        async with httpx.AsyncClient(base_url=url) as http:
            classified = await _classify_everything(http)
            await wait_until(
                lambda: fab_tables.count("edge-proc-01") == classified, "results at the fab"
            )

        def drained() -> bool:
            # The node is another process: a blocking call only pauses this test's loop.
            health = httpx.get(f"{url}/healthz", timeout=10).json()
            return bool(health["outbox_depth"] == 0 and health["uplink_connected"])

        await wait_until(drained, "the node's outbox to drain")
        sequences = fab_tables.sequences("edge-proc-01")
        assert sequences == sorted(set(sequences))  # each once
        stamps = dict(fab_tables.tested_at("edge-proc-01"))
        assert len(stamps) == classified  # retries stored nothing: one result per wafer
        assert stamps["WF-1-0"] == datetime(2025, 8, 31, 10, 42, 15, tzinfo=UTC)
        assert stamps["G85-0"] is None  # a G85 document without a time
        assert fab_tables.maps("edge-proc-01") == classified
        await wait_until(
            lambda: (
                sum(m["wafers_classified"] for m in fab_tables.metrics("edge-proc-01"))
                == classified
            ),
            "the metrics windows at the fab",
        )
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()


@pytest.mark.asyncio
async def test_the_composed_node_runs_uplink_metrics_push_and_ota(
    fab: FabServer, fab_tables: Any, tmp_path: Path, wait_until: WaitUntil, enrol: Enrol
) -> None:
    settings = EdgeSettings(
        node_id="edge-inproc-01",
        fab_address=f"127.0.0.1:{fab.grpc_port}",
        node_token=SecretStr(await enrol("edge-inproc-01")),
        http_port=0,
        work_dir=tmp_path / "edge",
        default_model_dir=DEFAULT,
        outbox_sync="normal",
        metrics_interval_s=0.3,
        warmup_predictions=1,
    )
    node = await EdgeNode(settings).start()
    try:
        assert node.uplink is not None and node.outbox is not None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            classified = await _classify_everything(http)
            outbox = node.outbox
            await wait_until(lambda: outbox.depth() == 0, "the outbox to drain")
            assert node.uplink.status.connected
            assert (await http.get("/healthz")).json()["uplink_connected"] is True
            metrics = (await http.get("/metrics")).text
            assert "edge_uplink_connected 1.0" in metrics
        assert fab_tables.count("edge-inproc-01") == classified
        await wait_until(lambda: bool(fab_tables.metrics("edge-inproc-01")), "a metrics window")
        window = fab_tables.metrics("edge-inproc-01")[0]
        assert window["model_version"] == "trm-v1.0.0"
    finally:
        await node.stop()
