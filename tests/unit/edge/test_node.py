"""The edge node without a fab: real HTTP on port 0, start, stop, restart."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from edge.node import EdgeNode
from edge.settings import EdgeSettings
from wafercore.runtime import ModelRuntime

DEFAULT = Path(__file__).resolve().parents[3] / "models" / "trm-v1.0.0"
BODY = {
    "wafer_id": "WF-1",
    "lot_id": "LOT-1",
    "wafer_map": [[2, 0, 2], [0, 1, 0], [2, 0, 2]],
    "timestamp": "2025-08-31T10:42:15Z",
}


def _settings(work: Path) -> EdgeSettings:
    return EdgeSettings(
        node_id="edge-unit",
        http_port=0,
        work_dir=work,
        default_model_dir=DEFAULT,
        outbox_sync="normal",
        warmup_predictions=1,
    )


@pytest.mark.asyncio
async def test_a_node_serves_on_a_free_port_and_stops(tmp_path: Path) -> None:
    node = await EdgeNode(_settings(tmp_path)).start()
    base = f"http://127.0.0.1:{node.http_port}"
    try:
        assert node.http_port > 0 and node.uplink is None
        async with httpx.AsyncClient(base_url=base) as http:
            health = (await http.get("/healthz")).json()
            assert health["node_id"] == "edge-unit" and health["uplink_connected"] is None
            answer = await http.post("/classify", json=BODY)
            assert answer.status_code == 200, answer.text
    finally:
        await node.stop()
    await node.stop()  # a second stop is harmless
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base) as http:
            await http.get("/healthz")


@pytest.mark.asyncio
async def test_results_wait_in_the_outbox_across_a_restart(tmp_path: Path) -> None:
    node = await EdgeNode(_settings(tmp_path)).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            for i in range(3):
                await http.post("/classify", json={**BODY, "wafer_id": f"WF-{i}"})
    finally:
        await node.stop()
    again = await EdgeNode(_settings(tmp_path)).start()
    try:
        assert again.outbox is not None and again.outbox.depth() == 3
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{again.http_port}") as http:
            assert (await http.get("/healthz")).json()["outbox_depth"] == 3
    finally:
        await again.stop()


@pytest.mark.asyncio
async def test_a_chunked_body_over_the_limit_is_413_over_real_http(tmp_path: Path) -> None:
    node = await EdgeNode(_settings(tmp_path)).start()
    try:

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(20):  # 1.25 MiB, no Content-Length
                yield b" " * 65536

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            answer = await http.post(
                "/classify", content=chunks(), headers={"content-type": "application/json"}
            )
            assert answer.status_code == 413
            assert (await http.post("/classify", json=BODY)).status_code == 200
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_responses_are_not_held_back_by_nagle(tmp_path: Path) -> None:
    """Without TCP_NODELAY every response waited ~40 ms for the client's delayed ACK."""
    node = await EdgeNode(_settings(tmp_path)).start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            await http.get("/healthz")
            elapsed = []
            for _ in range(25):
                started = time.perf_counter()
                await http.get("/healthz")
                elapsed.append(time.perf_counter() - started)
        assert statistics.median(elapsed) < 0.030
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_a_port_in_use_fails_start_and_releases_what_was_opened(tmp_path: Path) -> None:
    first = await EdgeNode(_settings(tmp_path / "a")).start()
    try:
        taken = _settings(tmp_path / "b").model_copy(update={"http_port": first.http_port})
        second = EdgeNode(taken)
        with pytest.raises(OSError):
            await second.start()
        assert second.outbox is not None
        with pytest.raises(RuntimeError, match="closed"):
            second.outbox.append(b"x")
    finally:
        await first.stop()


@pytest.mark.asyncio
async def test_model_swaps_under_http_load_fail_no_request(
    tmp_path: Path, renamed_model: Callable[[Path, str], Path]
) -> None:
    """Requests keep being answered while new models are activated and rolled back under them."""
    node = await EdgeNode(_settings(tmp_path / "node")).start()
    store = node.store
    assert store is not None
    candidates = [renamed_model(store.staging_dir(), f"trm-v9.0.{i}") for i in range(3)]
    statuses: list[int] = []
    versions: set[str] = set()
    stop = asyncio.Event()

    async def station(http: httpx.AsyncClient, n: int) -> None:
        i = 0
        while not stop.is_set():
            answer = await http.post("/classify", json={**BODY, "wafer_id": f"WF-{n}-{i}"})
            statuses.append(answer.status_code)
            if answer.status_code == 200:
                versions.add(answer.json()["model_version"])
            i += 1

    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
            stations = [asyncio.create_task(station(http, n)) for n in range(8)]
            for candidate in candidates:
                runtime = await asyncio.to_thread(ModelRuntime.load, candidate)
                await asyncio.to_thread(store.activate, candidate, runtime)
                await asyncio.sleep(0.2)
            await asyncio.to_thread(store.rollback)
            await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*stations)
    finally:
        await node.stop()
    assert len(statuses) > 50
    assert set(statuses) == {200}
    assert {"trm-v9.0.0", "trm-v9.0.2"} <= versions  # traffic really crossed the swaps
    assert store.current.version == "trm-v9.0.1"  # rolled back from .2 to .1
