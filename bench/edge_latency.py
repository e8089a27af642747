"""Benchmark: the edge node end to end against its bare runtime, and draining a 24 h backlog.

Goals (issue 5): ``/classify`` p50 end to end (HTTP over loopback, validation, preprocessing,
inference, the outbox's durable append, the response) <= 1.3x the bare runtime's p50
(``ModelRuntime.predict`` on one wafer, same model, same threads, same run); throughput at batch
64 over ``/classify/batch`` and bare; and a 24 h outage of one station at 1 wafer/s (86,400
results in the outbox) drained to a real fab server on PostgreSQL in <= 30 s after it comes
back. The node and the fab server each run in their own process, as in production; the fab's
tables live in a scratch schema that is dropped at the end.

    .venv/bin/python bench/edge_latency.py                                   # about 2 minutes
    .venv/bin/python bench/edge_latency.py --n 50 --batches 3 --drain-results 3000   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from edge.fab_client import open_channel
from edge.node import EdgeNode
from edge.outbox import Outbox
from edge.settings import EdgeSettings
from edge.uplink import Uplink
from fab_server.app import FabServer
from fab_server.db import make_async_engine, migrate, session_factory
from fab_server.services import nodes
from fab_server.settings import FabSettings
from wafercore.dataset import WaferDataset
from wafercore.pipeline import classify_maps
from wafercore.readers.npz import read_npz
from wafercore.runtime import ModelRuntime
from wafercore.synthetic import generate_dataset
from waferplatform.v1 import common_pb2

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
WARMUP = 20
BATCH = 64
BENCH_BODY_BYTES = 32 << 20  # a batch of 64 large real maps is several MB of JSON
FILL_CHUNK = 5000


# --- the processes under test ---------------------------------------------------------------


def _serve_node(settings: EdgeSettings, port_out: Connection, stop: Event) -> None:
    async def serve() -> None:
        node = await EdgeNode(settings).start()
        port_out.send(node.http_port)
        await asyncio.to_thread(stop.wait)
        await node.stop()

    asyncio.run(serve())


def _serve_fab(settings: FabSettings, port_out: Connection, stop: Event) -> None:
    async def serve() -> None:
        server = await FabServer(settings).start()
        port_out.send(server.grpc_port)
        await asyncio.to_thread(stop.wait)
        await server.stop()

    asyncio.run(serve())


class ServerProcess:
    """A node or a fab server in a child process (spawned: gRPC does not survive fork)."""

    def __init__(self, target: Any, settings: Any, what: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=target, args=(settings, send, self._stop))
        self._process.start()
        if not receive.poll(120):
            self._process.kill()
            raise RuntimeError(f"the {what} did not start within 120 s")
        self.port: int = receive.recv()

    def close(self) -> None:
        self._stop.set()
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()


# --- inputs ----------------------------------------------------------------------------------


def _maps(path: Path, count: int) -> list[np.ndarray]:
    """Real canonical maps from an npz file, or synthetic ones when it is missing."""
    dataset: WaferDataset
    if path.is_file():
        dataset = read_npz(path)
    else:
        print(f"data            {path} missing: synthetic maps instead")
        dataset = generate_dataset(-(-count // 9), np.random.default_rng(7))
    maps = [
        dataset.values[dataset.offsets[i] : dataset.offsets[i + 1]].reshape(dataset.shapes[i])
        for i in range(len(dataset))
    ]
    return [maps[i % len(maps)] for i in range(count)]


def _wafer(index: int, wafer_map: np.ndarray) -> dict[str, Any]:
    return {
        "wafer_id": f"BENCH-{index:06d}",
        "lot_id": f"BENCH-LOT-{index // 25:04d}",
        "wafer_map": wafer_map.tolist(),
        "timestamp": datetime.now(UTC).isoformat(),
    }


def _outbox_record(index: int, wafer_map: np.ndarray) -> bytes:
    """What the classify service appends for one wafer (node_id and sequence set on send)."""
    prediction = index % 9
    probabilities = [0.02] * 9
    probabilities[prediction] = 0.84
    result = common_pb2.Classification(
        wafer_id=f"OUTAGE-{index:06d}",
        lot_id=f"OUTAGE-LOT-{index // 25:05d}",
        class_probabilities=probabilities,
        prediction=prediction,
        confidence=0.84,
        recursion_steps_used=1 + index % 3,
        inference_latency_ms=7.5,
        model_version="trm-v1.0.0",
        wafer_map=common_pb2.WaferMap(
            rows=wafer_map.shape[0], cols=wafer_map.shape[1], values=wafer_map.tobytes()
        ),
    )
    result.classified_at.GetCurrentTime()
    return bytes(result.SerializeToString())


# --- measurements ------------------------------------------------------------------------------


def _percentiles(times_ms: Sequence[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(times_ms), [50, 99])
    return float(p50), float(p99)


def _bare_runtime(runtime: ModelRuntime, maps: list[np.ndarray], batches: int) -> dict[str, Any]:
    # The pipeline every tier classifies with, without HTTP, validation and outbox.
    for wafer in maps[:WARMUP]:
        classify_maps(runtime, [wafer])
    times = []
    for wafer in maps:
        started = time.perf_counter()
        classify_maps(runtime, [wafer])
        times.append((time.perf_counter() - started) * 1000)
    # The same wafers as the HTTP batches: the list repeated to fill ``batches`` batches.
    cycled = [maps[i % len(maps)] for i in range(batches * BATCH)]
    started = time.perf_counter()
    for start in range(0, len(cycled), BATCH):
        classify_maps(runtime, cycled[start : start + BATCH])
    rate = len(cycled) / (time.perf_counter() - started)
    return {"times": times, "rate": rate}


def _end_to_end(port: int, maps: list[np.ndarray], batches: int) -> dict[str, Any]:
    bodies = [json.dumps(_wafer(i, m)).encode() for i, m in enumerate(maps)]
    batch_bodies = [
        json.dumps(
            {
                "wafers": [
                    _wafer(b * BATCH + k, maps[(b * BATCH + k) % len(maps)]) for k in range(BATCH)
                ]
            }
        ).encode()
        for b in range(batches)
    ]
    headers = {"content-type": "application/json"}
    times, served = [], []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for body in bodies[:WARMUP]:
            client.post("/classify", content=body, headers=headers).raise_for_status()
        for body in bodies:
            started = time.perf_counter()
            response = client.post("/classify", content=body, headers=headers)
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
            served.append(response.json()["inference_latency_ms"])
        started = time.perf_counter()
        for body in batch_bodies:
            client.post("/classify/batch", content=body, headers=headers).raise_for_status()
        rate = BATCH * len(batch_bodies) / (time.perf_counter() - started)
    return {"times": times, "served": served, "rate": rate}


async def _enrol(url: str, schema: str, node_id: str) -> str:
    """The node's token, issued in the fab's database as `wafer-fab nodes add` does."""
    engine = make_async_engine(url, schema)
    try:
        return await nodes.add_token(session_factory(engine), node_id=node_id)
    finally:
        await engine.dispose()


async def _drain(port: int, outbox: Outbox, work_dir: Path, token: str) -> tuple[int, float]:
    settings = EdgeSettings(
        node_id="bench-edge",
        fab_address=f"127.0.0.1:{port}",
        node_token=SecretStr(token),
        work_dir=work_dir,
    )
    channel = open_channel(settings)
    try:
        uplink = Uplink(settings, outbox, channel)
        started = time.perf_counter()
        acked = await uplink.drain_once()
        return acked, time.perf_counter() - started
    finally:
        await channel.close()


def _latency_part(args: argparse.Namespace, work: Path) -> None:
    defaults = EdgeSettings()
    model_dir = args.model or defaults.default_model_dir
    maps = _maps(args.data, max(args.n, BATCH))
    runtime = ModelRuntime.load(model_dir, threads=args.threads)
    print(f"model           {runtime.version} ({model_dir}), {args.threads} runtime thread(s)")
    print(f"outbox          synchronous={args.outbox_sync}")
    bare = _bare_runtime(runtime, maps[: args.n], args.batches)

    settings = EdgeSettings(
        node_id="bench-edge",
        fab_address=None,
        http_port=0,
        work_dir=work / "edge",
        default_model_dir=model_dir,
        runtime_threads=args.threads,
        outbox_sync=args.outbox_sync,
        max_body_bytes=BENCH_BODY_BYTES,
    )
    node = ServerProcess(_serve_node, settings, "edge node")
    try:
        http = _end_to_end(node.port, maps[: args.n], args.batches)
    finally:
        node.close()

    bare_p50, bare_p99 = _percentiles(bare["times"])
    http_p50, http_p99 = _percentiles(http["times"])
    served_p50, _ = _percentiles(http["served"])
    print()
    print(f"{'batch 1':<28}{'p50 ms':>9}{'p99 ms':>9}   ({args.n} wafers, one at a time)")
    print(f"{'bare runtime':<28}{bare_p50:>9.2f}{bare_p99:>9.2f}")
    print(f"{'/classify end to end':<28}{http_p50:>9.2f}{http_p99:>9.2f}")
    print(f"{'  of which node-reported':<28}{served_p50:>9.2f}")
    ratio = http_p50 / bare_p50
    met = "met" if ratio <= 1.3 else "NOT met"
    print(f"ratio           end-to-end p50 / runtime p50 = {ratio:.2f} (goal <= 1.3: {met})")
    print()
    print(f"{'batch 64':<28}{'wafers/s':>9}")
    print(f"{'bare runtime':<28}{bare['rate']:>9,.0f}")
    print(f"{'/classify/batch':<28}{http['rate']:>9,.0f}")


def _drain_part(args: argparse.Namespace, work: Path) -> None:
    url = args.database_url
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"bench_edge_{uuid.uuid4().hex[:8]}"
    outbox = Outbox(work / "outbox.db", max_bytes=4 << 30, sync=args.outbox_sync)
    try:
        maps = _maps(args.data, min(args.drain_results, 2000))
        started = time.perf_counter()
        for start in range(0, args.drain_results, FILL_CHUNK):
            stop = min(start + FILL_CHUNK, args.drain_results)
            outbox.append_many([_outbox_record(i, maps[i % len(maps)]) for i in range(start, stop)])
        fill_s = time.perf_counter() - started
        migrate(url, schema)
        token = asyncio.run(_enrol(url, schema, "bench-edge"))
        fab = ServerProcess(
            _serve_fab,
            FabSettings(
                database_url=url,
                db_schema=schema,
                grpc_port=0,
                http_port=0,
                artifact_dir=work / "artifacts",
            ),
            "fab server",
        )
        try:
            acked, drain_s = asyncio.run(_drain(fab.port, outbox, work / "uplink", token))
        finally:
            fab.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            stored = conn.execute(f'SELECT count(*) FROM "{schema}".results').fetchone()
        if acked != args.drain_results or stored is None or stored[0] != args.drain_results:
            raise RuntimeError(f"drained {acked}, fab stored {stored}: not {args.drain_results}")
    finally:
        outbox.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print()
    print(f"outage backlog  {args.drain_results:,} results with maps (filled in {fill_s:.1f} s)")
    rate = args.drain_results / drain_s
    print(f"drain           {drain_s:.2f} s, {rate:,.0f} results/s, each stored once at the fab")
    met = "met" if rate >= 86_400 / 30 else "NOT met"
    print(f"goal            86,400 in <= 30 s: {86_400 / rate:.1f} s at this rate ({met})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    configured = FabSettings().database_url
    default_url = configured if configured.startswith("postgresql") else LOCAL_POSTGRES
    data_dir = os.environ.get("WAFER_DATA_DIR", "../shared/data/wm811k")
    parser.add_argument("--database-url", default=default_url, help="SQLAlchemy URL (psycopg)")
    parser.add_argument(
        "--model", type=Path, default=None, help="model dir (default: the node's setting)"
    )
    parser.add_argument("--data", type=Path, default=Path(data_dir) / "sample_stratified.npz")
    parser.add_argument("--n", type=int, default=300, help="wafers timed one at a time")
    parser.add_argument("--batches", type=int, default=20, help="batches of 64 timed")
    parser.add_argument("--threads", type=int, default=EdgeSettings().runtime_threads)
    parser.add_argument(
        "--outbox-sync", choices=("full", "normal"), default=EdgeSettings().outbox_sync
    )
    parser.add_argument(
        "--drain-results", type=int, default=86_400, help="outboxed results drained to the fab"
    )
    args = parser.parse_args()

    load = os.getloadavg()[0]
    print(f"load average    {load:.1f} on {os.cpu_count()} CPUs (other work slows every figure)")
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        work = Path(tmp)
        _latency_part(args, work)
        _drain_part(args, work)


if __name__ == "__main__":
    main()
